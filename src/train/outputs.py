"""The trained adapter directory: PEFT adapter, processor, training config and a model card.

Written into a directory beside `output_dir` and swapped into its place, so a crash never
leaves a half-written adapter that looks finished. `output_dir` is replaced only when it is
absent, empty or a previous adapter of this project (it holds MARKER_FILE): a mistyped
`--output-dir ~/models` is refused, never wiped. A swap a killed run left half done is
finished when the next run starts: the last good adapter is in place again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import PeftModel
from transformers import ProcessorMixin

from src.data.atomic import recover_replaced_dir, replaced_dir

CONFIG_FILE = "train_config.json"
MARKER_FILE = ".caption-adapter"  # this project wrote the folder: training may replace it
MARKER_TEXT = ("An adapter written by this project's training (src.train): the next run with "
               "this --output-dir replaces the whole folder.\n")


class OutputDirError(FileExistsError):
    """`--output-dir` holds something training must not replace."""


def check_output_dir(output_dir: Path) -> None:
    """Raise OutputDirError unless `output_dir` is absent, empty or a previous adapter (put
    back first if a killed run's swap left it aside: `recover_replaced_dir`)."""
    output_dir = Path(output_dir)
    recover_replaced_dir(output_dir)
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise OutputDirError(f"--output-dir {output_dir} is a file, not a folder: refusing to "
                             "replace it; choose a new or empty folder")
    entries = sorted(p.name for p in output_dir.iterdir())
    if entries and MARKER_FILE not in entries:
        raise OutputDirError(
            f"--output-dir {output_dir} holds {len(entries)} entries (e.g. {entries[0]}) and is "
            f"not an adapter of this project (no {MARKER_FILE}): refusing to replace it; "
            "choose a new or empty folder, or remove it yourself")


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def model_card(config: Mapping[str, object], metrics: Mapping[str, object]) -> str:
    trained = "LoRA on the language model" + (
        " + the multimodal projector" if config["train_projector"] else "")
    rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(config.items()))
    return f"""# LLaVA-1.5 caption adapter

- Base model: `{config["model_id"]}` (image size {config["image_size"]} px{
    ", 4-bit nf4 base (QLoRA)" if config["load_in_4bit"] else ""})
- Trained: {trained}; the vision tower is frozen.
- Data: `{config["train_file"]}` ({metrics["samples_trained"]} samples trained,
  {metrics["examples"]} examples), assistant-only loss on the caption and EOS.
- Steps: {metrics["steps"]}; final train loss {_loss(metrics["loss"])}, val loss
  {_loss(metrics["val_loss"])} on {metrics["val_examples"]} captions of `{config["val_ann"]}`.

Load: `PeftModel.from_pretrained(load_llava(base, image_size), this_dir)`; the processor saved
here carries the image size (`src.models.llava.processor_image_size`).
Prompt: `USER: <image>\\n{{prompt}} ASSISTANT:`.

| param | value |
|---|---|
{rows}
"""


def save_adapter_dir(output_dir: Path, model: PeftModel, state_dict: dict[str, torch.Tensor],
                     processor: ProcessorMixin, config: Mapping[str, object],
                     metrics: Mapping[str, object]) -> None:
    """Write everything (main process only) and replace `output_dir` whole, if it may be."""
    check_output_dir(output_dir)  # again: the folder may have been filled while training
    with replaced_dir(output_dir) as tmp_dir:
        model.save_pretrained(tmp_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(tmp_dir)
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp_dir / "README.md").write_text(model_card(config, metrics))  # replaces PEFT's stub
        (tmp_dir / MARKER_FILE).write_text(MARKER_TEXT)
