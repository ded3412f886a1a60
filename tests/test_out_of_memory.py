"""An out-of-memory error in a stage's model call names the param to lower: detect,
clip_score, evaluate and train, each with the OOM raised where the model runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stage_runs import run_clip, run_detect, run_phrases, write_params
from train_fixtures import demo_paths, tiny_config, write_demo_jsonl
from transformers import CLIPModel, GroundingDinoForObjectDetection, LlavaForConditionalGeneration

from src.data.images import ImageDataset
from src.eval.generate import CaptionSettings, caption_shards
from src.models.device_policy import OutOfMemory
from src.models.llava import load_llava, load_processor
from src.train.recipe import finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TORCH_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB"


def _out_of_memory(*args: object, **kwargs: object) -> None:
    raise torch.OutOfMemoryError(TORCH_MESSAGE)


@pytest.fixture(scope="module")
def work(demo_coco: Path, tiny_models: dict[str, Path],
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("oom")
    params = write_params(work / "params.yaml", tiny_models, **{"detect.batch_size": 3,
                                                                "clip_score.batch_size": 5})
    run_phrases(demo_coco, work, params)
    return work, params


def test_detect_names_its_batch_size(work: tuple[Path, Path], demo_coco: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroundingDinoForObjectDetection, "forward", _out_of_memory)
    with pytest.raises(OutOfMemory, match=rf"^detect ran out of device memory: lower "
                                          rf"detect\.batch_size \(now 3; .*{TORCH_MESSAGE}"):
        run_detect(demo_coco, *work)


def test_clip_score_names_its_batch_size(work: tuple[Path, Path], demo_coco: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    detections = run_detect(demo_coco, *work, name="for_clip")
    monkeypatch.setattr(CLIPModel, "get_image_features", _out_of_memory)
    with pytest.raises(OutOfMemory, match=r"^clip_score ran out of device memory: lower "
                                          r"clip_score\.batch_size \(now 5\)"):
        run_clip(demo_coco, detections, work[1], work[0] / "regions.parquet")


def test_evaluate_names_its_batch_size(tiny_models: dict[str, Path], demo_coco: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = str(tiny_models["llava"])
    model = load_llava(model_dir, 32, dtype=torch.float32).eval()
    monkeypatch.setattr(model, "generate", _out_of_memory)
    images = ImageDataset([(i, p.name) for i, p in enumerate(sorted(
        (demo_coco / "val2017").glob("*.jpg")))], demo_coco / "val2017")
    with pytest.raises(OutOfMemory, match=r"^evaluate ran out of device memory: lower "
                                          r"evaluate\.batch_size \(now 2; "):
        list(caption_shards(model, load_processor(model_dir, 32), images, [[0, 1, 2]],
                            CaptionSettings("A caption:", max_new_tokens=2), batch_size=2,
                            num_workers=0, progress=False))


def test_train_names_bsz(tiny_models: dict[str, Path], demo_coco: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    train_file = tmp_path / "train.jsonl"
    write_demo_jsonl(demo_coco, train_file, regions=False, captions_per_image=1)
    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", _out_of_memory)
    with pytest.raises(OutOfMemory, match=r"^train ran out of device memory: lower train\.bsz "
                                          r"\(now 4; the accumulation rises to keep "
                                          r"train\.batch_size 8 "):
        finetune(tiny_config(tiny_models["llava"]), demo_paths(demo_coco, train_file, tmp_path),
                 show_progress=False)
