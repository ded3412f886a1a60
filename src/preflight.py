"""Checks run before a stage's long work, so a missing input or model fails in seconds, not
after an hour of captioning or detection."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig

from src.models.hub import load_pretrained


def require_paths(*paths: Path) -> None:
    """FileNotFoundError naming every path that does not exist."""
    missing = [str(path) for path in paths if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"missing input(s): {', '.join(missing)}")


def model_problem(id_or_dir: str, revision: str | None = None) -> str | None:
    """Why the model cannot be loaded at `revision` (not a local directory, not in the hub
    cache, and the hub unreachable or without it), or None. Resolves only its config;
    weights load later."""
    try:
        load_pretrained(AutoConfig.from_pretrained, id_or_dir, revision=revision)
    except (OSError, ValueError) as error:
        return str(error)
    return None


def require_models(*models: str | tuple[str, str | None]) -> None:
    """OSError with the reason for every model that cannot be loaded; each is an id or
    directory, or an (id, revision) pair."""
    pairs = [(model, None) if isinstance(model, str) else model for model in models]
    problems = [problem for problem in (model_problem(*pair) for pair in pairs) if problem]
    if problems:
        raise OSError("\n".join(problems))
