"""Training and validation samples: JSONL/COCO examples -> token ids, labels and pixels.

Text is tokenised once, up front (token lengths drive the length-grouped batches and a
bad mask fails before any training), a chunk at a time, into an Arrow file that is
memory-mapped: memory does not grow with the number of examples (a million examples
held as Python lists of 600 ids each would take tens of GiB in every DDP process). Each
image token is stored once and expanded when a sample is read. Images are read in
DataLoader workers by the one image reader, where an unreadable file or a path outside
the image root becomes a Skip record carried in the batch.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, overload

import pyarrow as pa
import torch
from torch.utils.data import Dataset
from transformers import ProcessorMixin

from src.data.coco import load_captions, select_images
from src.data.images import crop_box, read_image
from src.data.jsonl import Example, special_token_problem
from src.data.skips import Skip, SkipCounter
from src.models.llava import IGNORE_INDEX, image_token_count
from src.train.masking import CompactText, MaskError, check_supervised, encode_compact


@dataclass(frozen=True)
class Sample:
    example_id: str
    image: str  # relative to the image root
    bbox_xyxy: tuple[float, float, float, float] | None  # crop this region of the image
    input_ids: list[int]
    labels: list[int]


ENCODE_CHUNK = 4096  # examples tokenised and written at a time: bounds the peak memory
SCHEMA = pa.schema([
    ("example_id", pa.string()), ("image", pa.string()),
    ("bbox_xyxy", pa.list_(pa.float64(), 4)),  # null for a full-image example
    ("ids", pa.list_(pa.int32())),  # each image token once (CompactText.ids)
    ("prompt_length", pa.int32()), ("length", pa.int32()),  # image tokens expanded
])


def _remove_if_owner(table_path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a forked DataLoader worker
        table_path.unlink(missing_ok=True)


class EncodedSamples(Sequence[Sample]):
    """Encoded samples in a memory-mapped Arrow file, removed with the object `encode_examples`
    returns. Memory held: the pages the OS maps in, which it can drop."""

    def __init__(self, table_path: Path, image_token_id: int, num_image_tokens: int) -> None:
        self.table_path = table_path
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self._open()

    def _open(self) -> None:
        self._table = pa.ipc.open_file(pa.memory_map(str(self.table_path))).read_all()
        self._columns = {name: self._table.column(name) for name in SCHEMA.names}

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker maps the file itself
        return {k: v for k, v in self.__dict__.items() if k not in ("_table", "_columns")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self._table.num_rows

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        row = {name: column[index].as_py() for name, column in self._columns.items()}
        text = CompactText(row["ids"], self.image_token_id, self.num_image_tokens,
                           row["prompt_length"], row["length"]).expand()
        bbox = row["bbox_xyxy"]
        return Sample(row["example_id"], row["image"], None if bbox is None else tuple(bbox),
                      text.input_ids, text.labels)

    def lengths(self) -> list[int]:
        """Token lengths, image tokens expanded, without reading the ids."""
        return self._table.column("length").to_pylist()


def _chunks(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while chunk := list(islice(iterator, size)):
        yield chunk


def encode_examples(
    examples: Iterable[Example],
    processor: ProcessorMixin,
    *,
    max_length: int,
    drop_bad_masks: bool,
    table_path: Path,
) -> tuple[EncodedSamples, SkipCounter]:
    """Tokenise and mask every example; return the samples and the dropped example ids.

    A prompt longer than `max_length` is always dropped and counted. A mask that fails
    its check (see `encode_compact`) raises unless `drop_bad_masks`. Image paths are
    checked when read (a path outside the root is a "path_escape" skip then). The samples
    are written to `table_path` a chunk of examples at a time, so `examples` may be a stream.
    Each process of a run writes its own path (`src.train.checkpoint.samples_path`): a fixed
    one, so the rerun of a killed run writes over what that run left. The file is removed
    when the returned samples are.
    """
    num_image_tokens = image_token_count(processor)
    skipped, image_token_id = SkipCounter(), processor.image_token_id
    table_path = Path(table_path)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pa.OSFile(str(table_path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            for chunk in _chunks(examples, ENCODE_CHUNK):
                encoded = encode_compact(
                    processor.tokenizer, [(e.prompt, e.caption) for e in chunk],
                    image_token=processor.image_token, num_image_tokens=num_image_tokens,
                    max_length=max_length)
                rows = []
                for example, result in zip(chunk, encoded, strict=True):
                    if isinstance(result, MaskError):
                        if result.reason != "prompt_too_long" and not drop_bad_masks:
                            raise MaskError(result.reason, f"example {example.id}: {result}")
                        skipped.add(Skip(example.id, result.reason, example.image, str(result)))
                        continue
                    rows.append({"example_id": example.id, "image": example.image,
                                 "bbox_xyxy": list(example.bbox) if example.kind == "region"
                                 else None, "ids": result.ids,
                                 "prompt_length": result.prompt_length, "length": result.length})
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=SCHEMA))
        samples = EncodedSamples(table_path, image_token_id, num_image_tokens)
    except BaseException:
        table_path.unlink(missing_ok=True)
        raise
    weakref.finalize(samples, _remove_if_owner, table_path, os.getpid())
    return samples, skipped


def validation_examples(captions_path: Path, num_examples: int, prompt: str, seed: int, *,
                        reserved: Collection[str] = (),
                        skip_malformed: bool = False) -> tuple[list[Example], SkipCounter]:
    """One full-image example per image for a seeded slice of a COCO captions file (each
    image's lowest-id caption); image paths are file names, relative to the images dir.

    A caption holding one of the `reserved` texts is malformed, as in the training JSONL
    (`src.data.jsonl.ExampleReader`): a ValueError naming the file and the caption id, or
    with `skip_malformed` its image is left out, counted as "special_token" in the skips.
    """
    caption_set = load_captions(captions_path)
    by_image = caption_set.by_image()
    examples, skipped = [], SkipCounter()
    for image in select_images(caption_set, num_examples, seed):
        caption = min(by_image[image.image_id], key=lambda c: c.caption_id)
        example_id = f"val-{image.image_id}"
        if (problem := special_token_problem(caption.caption, reserved)) is not None:
            if not skip_malformed:
                raise ValueError(f"{captions_path}: caption {caption.caption_id} (image "
                                 f"{image.image_id}) {problem}")
            skipped.add(Skip(example_id, "special_token", image.file_name,
                             f"caption {caption.caption_id} {problem}"))
            continue
        examples.append(Example(id=example_id, image=image.file_name, kind="full",
                                bbox=None, prompt=prompt, caption=caption.caption))
    return examples, skipped


class CaptionDataset(Dataset):
    """Per item: `input_ids`, `labels`, `pixel_values`, or the Skip of its image (the
    Skip's item is the example id; a box outside the image is a "bad_box" skip)."""

    def __init__(self, samples: Sequence[Sample], processor: ProcessorMixin,
                 image_root: Path) -> None:
        self.samples = samples
        self.image_processor = processor.image_processor
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> list[int]:
        if isinstance(self.samples, EncodedSamples):
            return self.samples.lengths()
        return [len(sample.input_ids) for sample in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any] | Skip:
        sample = self.samples[index]
        image = read_image(self.image_root, sample.example_id, sample.image)
        if isinstance(image, Skip):
            return image
        if sample.bbox_xyxy is not None:
            try:
                image = crop_box(image, sample.bbox_xyxy)
            except ValueError as error:  # a box outside the image
                return Skip(sample.example_id, "bad_box", sample.image, str(error))
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"input_ids": sample.input_ids, "labels": sample.labels,
                "pixel_values": pixel_values, "example_id": sample.example_id}


class Collate:
    """Right-pads a batch; skipped items are left out, their Skips kept in `skipped`.

    `kept` marks, per item given, whether it is a row of the model inputs. A batch whose
    every image was skipped has no model inputs, only `skipped` and `kept`.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any] | Skip]) -> dict[str, Any]:
        kept = [item for item in items if not isinstance(item, Skip)]
        batch: dict[str, Any] = {
            "skipped": [item for item in items if isinstance(item, Skip)],
            "kept": torch.tensor([not isinstance(item, Skip) for item in items],
                                 dtype=torch.bool),
        }
        if not kept:
            return batch
        for item in kept:
            check_supervised(item["labels"], f"example {item['example_id']}")
        width = max(len(item["input_ids"]) for item in kept)
        input_ids = torch.full((len(kept), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), width), dtype=torch.long)
        for row, item in enumerate(kept):
            length = len(item["input_ids"])
            input_ids[row, :length] = torch.tensor(item["input_ids"])
            labels[row, :length] = torch.tensor(item["labels"])
            attention_mask[row, :length] = 1
        batch.update(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                     pixel_values=torch.stack([item["pixel_values"] for item in kept]))
        return batch
