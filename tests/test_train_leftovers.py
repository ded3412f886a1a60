"""Nothing stale, nothing lost after a training run is killed (SIGKILL: no finaliser, no
`finally` runs): its encoded samples are found and removed by the rerun, never another run's;
an adapter swap cut short is finished by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from train_fixtures import REPO, demo_paths, tiny_config, write_demo_jsonl

from src.data.jsonl import Example
from src.models.llava import load_processor
from src.train import recipe
from src.train.checkpoint import samples_path
from src.train.data import encode_examples
from src.train.outputs import MARKER_FILE, MARKER_TEXT
from src.train.recipe import finetune

# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# finetune on the tiny LLaVA, SIGKILLed at its first micro-batch: the data is encoded, the
# model prepared. argv: llava dir, COCO root, train file, output folder.
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, "tests")
from train_fixtures import demo_paths, tiny_config
from src.train import loop, recipe
llava, coco, train_file, out = map(Path, sys.argv[1:5])
loop.Trainer._micro_step = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
recipe.finetune(tiny_config(llava), demo_paths(coco, train_file, out), show_progress=False)
"""


class ModelLoaded(Exception):
    pass


@pytest.fixture(scope="module")
def train_file(demo_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("leftovers") / "train.jsonl"
    write_demo_jsonl(demo_coco, path, regions=False)
    return path


def test_a_killed_runs_samples_are_removed_by_its_rerun_never_another_runs(
        tiny_models, demo_coco: Path, train_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The killed run's samples lie in its checkpoint folder, not the system temp folder;
    the rerun writes over them and, finished, removes them with those a killed 2-process run
    left there. A live run beside it (its own checkpoint folder) keeps its samples."""
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(system_tmp), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tiny_models["llava"]), str(demo_coco),
         str(train_file), str(tmp_path / "run")], cwd=REPO, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert list(system_tmp.iterdir()) == []
    paths = demo_paths(demo_coco, train_file, tmp_path / "run")
    assert sorted(p.name for p in (paths.checkpoint_dir / "samples").iterdir()) == [
        "train-0.arrow", "val-0.arrow"]
    samples_path(paths.checkpoint_dir, "train", 1).write_bytes(b"a killed 2-process run's")

    processor = load_processor(str(tiny_models["llava"]), 32)
    beside = samples_path(tmp_path / "beside" / "checkpoints", "train", 0)
    live, _ = encode_examples([Example("b1", "train2017/x.jpg", "full", None, "Describe.",
                                       "a red circle.")], processor, max_length=128,
                              drop_bad_masks=False, table_path=beside)
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    metrics = finetune(tiny_config(tiny_models["llava"], max_steps=2), paths, show_progress=False)

    assert metrics["steps"] == 2 and metrics["resumed_from_step"] == 0
    assert list(paths.checkpoint_dir.iterdir()) == [] and list(system_tmp.iterdir()) == []
    assert [sample.example_id for sample in live] == ["b1"] and beside.is_file()


@pytest.mark.parametrize("lora", ["absent", "there"])
def test_a_run_starts_by_finishing_a_killed_adapter_swap(
        tiny_models, demo_coco: Path, train_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, lora: str) -> None:
    """An adapter swap killed between its renames left the last good adapter aside: the next
    run puts it back before any model loads (so a run that then fails still leaves it in
    place). Killed after them, the aside copy is an old adapter: it goes."""
    paths = demo_paths(demo_coco, train_file, tmp_path)
    aside = tmp_path / f".lora.{'a' * 32}.old"
    aside.mkdir()
    (aside / MARKER_FILE).write_text(MARKER_TEXT)
    (aside / "adapter_model.safetensors").write_text("last good")
    if lora == "there":
        paths.output_dir.mkdir()
        (paths.output_dir / MARKER_FILE).write_text(MARKER_TEXT)
        (paths.output_dir / "adapter_model.safetensors").write_text("newest")

    def no_model(*args: object, **kwargs: object) -> None:
        raise ModelLoaded

    monkeypatch.setattr(recipe, "load_processor", no_model)
    with pytest.raises(ModelLoaded):
        finetune(tiny_config(tiny_models["llava"]), paths, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]
    weights = (paths.output_dir / "adapter_model.safetensors").read_text()
    assert weights == ("last good" if lora == "absent" else "newest")
