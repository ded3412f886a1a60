"""Every project module a stage runs is one of its dvc.yaml deps, so editing it re-runs the stage.

The modules are found by `src.provenance.project_files`, the walk whose files the resume
fingerprints digest: the imports (top-level and inside functions) from the stage's
`python -m` module through the project's own files; a directory dep covers every file
under it. Empty package `__init__.py` files hold no code and need no dep, and neither do
the modules in OUTPUT_NEUTRAL: they change what is printed, never what a stage writes, so
editing them must not re-run GroundingDINO or training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.provenance import OUTPUT_NEUTRAL, project_files

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def missing_deps(stage: dict) -> list[str]:
    """The project files the stage's command imports that none of its deps covers."""
    deps = [REPO / dep for dep in stage.get("deps", [])]
    return sorted(str(path.relative_to(REPO)) for path in stage_files(stage)
                  if not any(path == dep or dep in path.parents for dep in deps))


def stage_files(stage: dict) -> set[Path]:
    """The project files a stage's command runs: its `-m` module's, and with the launcher
    (`python -m src.launch MODULE ...`) the launched module's too."""
    words = stage["cmd"].split()
    modules = words[words.index("-m") + 1:words.index("-m") + 3]
    if modules[0] != "src.launch":
        modules = modules[:1]
    return set().union(*(project_files(module) for module in modules))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_every_imported_project_module(name: str) -> None:
    missing = missing_deps(STAGES[name])
    assert not missing, f"stage {name} imports {missing}: add them to its deps in dvc.yaml"


def test_a_removed_dep_is_found() -> None:
    stage = STAGES["detect"]
    assert "src/params.py" in missing_deps({**stage, "deps": [
        dep for dep in stage["deps"] if dep != "src/params.py"]})
    covered_by_dir = {**stage, "deps": [*stage["deps"], "src"]}
    assert missing_deps(covered_by_dir) == []


def test_the_launched_module_is_followed() -> None:
    assert "src/augment/grounding.py" in missing_deps({"cmd": "python -m src.launch "
                                                       "src.augment.detect --out x",
                                                       "deps": ["src/launch.py"]})


def test_function_level_imports_are_followed() -> None:
    files = project_files("src.eval.evaluate_coco")
    assert REPO / "src/eval/run.py" in files  # imported inside main()
    assert REPO / "src/models/clip.py" in files  # indirectly
    assert not any(path.name == "__init__.py" for path in files)  # empty
    assert not {REPO / name for name in OUTPUT_NEUTRAL} & files


def test_dvc_yaml_has_no_repeated_key() -> None:
    """DVC refuses a dvc.yaml with a key twice (PyYAML silently keeps the last one)."""
    def unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        keys = [loader.construct_object(key) for key, _ in node.value]
        assert len(keys) == len(set(keys)), f"repeated keys in dvc.yaml: {keys}"
        return loader.construct_mapping(node)

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, unique_keys)
    assert "stages" in yaml.load((REPO / "dvc.yaml").read_text(encoding="utf-8"), Loader)


def test_committed_lock_matches_the_tracked_deps() -> None:
    """dvc.lock records the code and assets of this commit. With a stale lock a user's first
    queued experiment after `make demo` re-runs clip_score and the base evaluation: DVC takes
    an unchanged stage's outs from the lock, does not find them in the cache, and runs it
    again instead of asking the run-cache. Refresh it: `make demo`, then
    `dvc exp apply <that experiment>`, `git checkout params.yaml`, commit dvc.lock."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    status = json.loads(subprocess.run([sys.executable, "-m", "dvc", "status", "--json"],
                                       cwd=REPO, capture_output=True, text=True,
                                       check=True).stdout or "{}")
    # The lock comes from the demo, whose weights.* name its tiny models: the committed
    # params' hub stand-ins are deps of another profile, as data/${profile} is.
    weights = set(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["weights"]
                  .values())
    stale = {f"{stage}: {path}" for stage, changes in status.items() for change in changes
             if isinstance(change, dict)
             for path in change.get("changed deps", {})
             if path != "params.yaml" and path not in weights
             and any(name == path or name.startswith(f"{path}/") for name in tracked)}
    assert not stale, f"dvc.lock is stale for {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"demo"}))
def test_pipeline_stages_never_import_the_demo_package(name: str) -> None:
    """The synthetic world sits above the pipeline: src/demo may import it, never the reverse."""
    demo = REPO / "src" / "demo"
    assert not [path for path in stage_files(STAGES[name]) if demo in path.parents]
