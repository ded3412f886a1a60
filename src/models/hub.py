"""Load any model or processor from a hub id or a local directory, with an actionable error.

Offline, transformers fails on a hub id with a generic "couldn't connect" OSError after
retrying for ~25 s; every stage loads through `load_pretrained` so the user learns which
param to change instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def load_pretrained(loader: Callable[..., T], id_or_dir: str | Path, *,
                    revision: str | None = None, **kwargs: object) -> T:
    """`loader(id_or_dir, revision=revision, **kwargs)`, e.g.
    `load_pretrained(AutoProcessor.from_pretrained, p, revision=params.model_revision)`.

    `revision` (a commit, branch or tag of a hub id; None = main) is passed to every load of
    one model, so its processor, config and weights come from the same commit. Errors from a
    local directory are about its files and pass unchanged; a hub id that cannot be fetched
    raises an OSError that says how to get the model.
    """
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return loader(str(id_or_dir), **kwargs)
    except OSError as error:
        if Path(id_or_dir).is_dir():
            raise
        cause = next(iter(str(error).splitlines()), type(error).__name__)
        at, flag = ((f" at revision {revision!r}", f" --revision {revision}") if revision
                    else ("", ""))
        raise OSError(
            f"could not load {str(id_or_dir)!r}{at}: it is not a local directory and the model "
            f"hub cannot be reached or has no such model ({cause}). Download it "
            f"(hf download {id_or_dir}{flag} --local-dir DIR) and set the param to that "
            "directory, or run `make demo` to use the tiny local models."
        ) from error
