"""Samples from JSONL and COCO captions: region crops, image skips, padding, batch order."""

from __future__ import annotations

import random
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from library_helpers import encode_example
from train_fixtures import FULL_PROMPT, write_demo_jsonl

from src.data.images import crop_box, load_rgb
from src.data.jsonl import Example, read_examples
from src.models.llava import IGNORE_INDEX, load_processor
from src.train.data import CaptionDataset, Collate, encode_examples, validation_examples
from src.train.sampler import LengthGroupedBatches

# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def processor(tiny_models: dict[str, Path]):
    return load_processor(str(tiny_models["llava"]), 32)


@pytest.fixture(scope="module")
def samples(demo_coco: Path, processor, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    write_demo_jsonl(demo_coco, path)
    examples, _ = read_examples(path)
    samples, skipped = encode_examples(examples, processor, max_length=128, drop_bad_masks=False,
                                       table_path=path.with_suffix(".arrow"))
    assert not skipped.counts()
    return samples


def test_region_example_is_the_crop_of_its_box(samples, processor, demo_coco: Path) -> None:
    region = next(s for s in samples if s.bbox_xyxy is not None)
    item = CaptionDataset([region], processor, demo_coco)[0]
    crop = crop_box(load_rgb(demo_coco / region.image), region.bbox_xyxy)
    expected = processor.image_processor(images=crop, return_tensors="pt")["pixel_values"][0]
    assert item["pixel_values"].shape == (3, 32, 32)
    assert torch.equal(item["pixel_values"], expected)
    full = next(s for s in samples if s.bbox_xyxy is None and s.image == region.image)
    assert not torch.equal(CaptionDataset([full], processor, demo_coco)[0]["pixel_values"],
                           expected)


def test_unreadable_images_become_counted_skips(samples, processor, demo_coco: Path,
                                                tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "train2017").mkdir(parents=True)
    for sample in samples[:2]:
        (root / sample.image).write_bytes((demo_coco / sample.image).read_bytes())
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "outside.jpg").write_bytes((demo_coco / samples[0].image).read_bytes())
    first = samples[0]
    bad = [replace(first, example_id=f"x{i}", image=image, bbox_xyxy=bbox)
           for i, (image, bbox) in enumerate([("broken.jpg", None), ("nope.jpg", None),
                                              ("../outside.jpg", None),
                                              (first.image, (900.0, 900.0, 990.0, 990.0))])]
    dataset = CaptionDataset([first, *bad, samples[1]], processor, root)
    batch = Collate(processor.tokenizer.pad_token_id)([dataset[i] for i in range(6)])
    assert [(s.item, s.reason) for s in batch["skipped"]] == [
        ("x0", "not_an_image"), ("x1", "missing"), ("x2", "path_escape"), ("x3", "bad_box")]
    assert batch["kept"].tolist() == [True, False, False, False, False, True]
    assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == 2
    empty = Collate(processor.tokenizer.pad_token_id)([dataset[1]])
    assert "input_ids" not in empty and [s.reason for s in empty["skipped"]] == ["not_an_image"]


def test_collate_pads_right_with_ignored_labels(samples, processor, demo_coco: Path) -> None:
    short, long = sorted(samples[:10], key=lambda s: len(s.input_ids))[::9]
    dataset = CaptionDataset([short, long], processor, demo_coco)
    batch = Collate(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    n = len(short.input_ids)
    assert batch["input_ids"][0, :n].tolist() == short.input_ids
    assert (batch["input_ids"][0, n:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(long.input_ids) - n)
    assert batch["attention_mask"][1].all()


def test_validation_examples_are_a_seeded_slice(demo_coco: Path) -> None:
    ann = demo_coco / "annotations" / "captions_val2017.json"
    examples, skipped = validation_examples(ann, 5, FULL_PROMPT, seed=0)
    assert len(examples) == 5 and len({e.image for e in examples}) == 5 and not skipped.ids
    assert all(e.prompt == FULL_PROMPT and e.kind == "full" for e in examples)
    assert all((demo_coco / "val2017" / e.image).is_file() for e in examples)
    assert validation_examples(ann, 5, FULL_PROMPT, seed=0)[0] == examples
    assert validation_examples(ann, 5, FULL_PROMPT, seed=1)[0] != examples


def test_length_grouped_batches_cover_everything_with_less_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 200) for _ in range(1000)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert len(batches) == len(sampler) == 125
    assert list(sampler) == batches  # same epoch, same order
    sampler.use_epoch(1)
    assert list(sampler) != batches

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in batches)

    order = list(range(1000))
    rng.shuffle(order)
    random_batches = [order[i:i + 8] for i in range(0, 1000, 8)]
    assert padding(batches) < 0.2 * padding(random_batches)


def test_a_short_batch_comes_last() -> None:
    batches = list(LengthGroupedBatches(list(range(21)), batch_size=4, seed=0))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 1]


def test_encoded_samples_hold_no_per_example_token_lists(tiny_models, demo_coco: Path,
                                                         tmp_path: Path) -> None:
    """3,000 examples at 576 image tokens: held as Python lists they would keep ~30 MB of
    Python objects; the memory-mapped samples keep none, and read back what the one-pair
    encoder gives. Lengths come without expanding the ids."""
    processor = load_processor(str(tiny_models["llava"]), 192)  # (192 / 8)^2 image tokens
    captions = [f"a {'red ' * (i % 7)}circle number {i}." for i in range(3000)]
    examples = (Example(f"c{i}", "train2017/x.jpg", "full", None, FULL_PROMPT, caption)
                for i, caption in enumerate(captions))
    tracemalloc.start()
    samples, skipped = encode_examples(examples, processor, max_length=1024,
                                       drop_bad_masks=False, table_path=tmp_path / "s.arrow")
    kept_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(samples) == 3000 and not skipped.counts()
    assert kept_bytes < 1_000_000
    for index in (0, 1234, 2999):
        expected = encode_example(processor.tokenizer, FULL_PROMPT, captions[index],
                                  image_token=processor.image_token, num_image_tokens=576,
                                  max_length=1024)
        sample = samples[index]
        assert sample.input_ids.count(processor.image_token_id) == 576
        assert (sample.input_ids, sample.labels) == (expected.input_ids, expected.labels)
    dataset = CaptionDataset(samples, processor, demo_coco)
    assert dataset.lengths() == [len(sample.input_ids) for sample in samples]
