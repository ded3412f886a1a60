"""The trained adapter directory: PEFT adapter, processor, training config and a model card.

Written into a temp directory beside `output_dir` and renamed over it, so a crash never
leaves a half-written adapter that looks finished.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import PeftModel
from transformers import ProcessorMixin

CONFIG_FILE = "train_config.json"


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
    """Write everything (main process only) and replace `output_dir` whole."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(tmp_dir)
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp_dir / "README.md").write_text(model_card(config, metrics))  # replaces PEFT's stub
        shutil.rmtree(output_dir, ignore_errors=True)
        tmp_dir.rename(output_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
