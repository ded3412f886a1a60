"""What code a step runs: its project modules (the import closure) and the packages that
shape its outputs.

The closure is walked from the step's module through the imports (top-level and inside
functions) of the project's own files, statically, with `ast`: a module imported only on
some path counts too. tests/test_dvc_deps.py checks with this same walk that each DVC
stage lists these files as deps, so the code a resumed run's fingerprint covers
(`src.data.shard_map.fingerprint`) and the code whose edit makes DVC re-run the stage
are one set. Empty `__init__.py` files hold no code and are left out, and so are the
modules in OUTPUT_NEUTRAL: they change what is printed, never what a step writes.
"""

from __future__ import annotations

import ast
import hashlib
import platform
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project: src/, stages/, bench/
# src/__init__.py only installs the warning filters of src/known_warnings.py.
OUTPUT_NEUTRAL = ("src/__init__.py", "src/known_warnings.py")
# The installed packages whose version can change a step's numbers: models, tokenizers,
# image decoding and resizing, numerics, adapters, the Parquet writer.
OUTPUT_PACKAGES = ("accelerate", "bitsandbytes", "numpy", "pandas", "peft", "pillow",
                   "pyarrow", "safetensors", "tokenizers", "torch", "torchvision",
                   "transformers")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None for a module outside the project."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, package: str) -> set[str]:
    """Dotted names `path` imports: `from a.b import c` yields a.b and a.b.c (c may be a
    module or a name defined in a.b; only existing modules survive `module_file`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    # `import a.b.c` runs a/__init__.py and a/b/__init__.py too.
    return {".".join(name.split(".")[:i]) for name in names
            for i in range(1, name.count(".") + 2)}


def project_files(module: str) -> set[Path]:
    """The files of `module` and of every project module it imports, directly or not, that
    can change what it writes (not empty, not OUTPUT_NEUTRAL)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(_imported_names(path, package))
    neutral = {ROOT / name for name in OUTPUT_NEUTRAL}
    return {path for path in seen - neutral if path.read_text(encoding="utf-8").strip()}


def code_digest(module: str) -> str:
    """sha256 of the closure of `module`: each file's path (under the project) and bytes."""
    hasher = hashlib.sha256()
    for path in sorted(project_files(module)):
        hasher.update(path.relative_to(ROOT).as_posix().encode("utf-8") + b"\0")
        hasher.update(path.read_bytes() + b"\0")
    return hasher.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Python's version and each of OUTPUT_PACKAGES' (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in OUTPUT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
