"""Which code made a dataset: the package version, a hash of the pipeline's own source and the git commit.

The source hash covers the pipeline's module and every project module it imports, directly or not (found
by reading the imports, not by what happens to be loaded), so fixing a stage makes a new fingerprint and so
a new version, while editing an unrelated pipeline does not.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROJECT_PACKAGES = ("hoi_factory", "tasks", "models")  # what decides a dataset's content (flows only drive)


def _imported_modules(path: Path, module: str) -> set[str]:
    """Project modules named by the import statements of one source file (at any depth, lazy ones too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in PROJECT_PACKAGES}


def _spec(module: str):
    try:
        return importlib.util.find_spec(module)  # imports the parent package (a project __init__), not `module`
    except (ImportError, ValueError):
        return None


def _source_file(module: str) -> Path | None:
    """The file of a project module; None for a name that is not a module (`from pkg.module import function`
    names `pkg.module.function`: looking it up would import `pkg.module`, and with it torch or diffusers)."""
    parent = module.rpartition(".")[0]
    if parent and getattr(_spec(parent), "submodule_search_locations", None) is None:
        return None
    spec = _spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


@lru_cache(maxsize=None)
def source_closure(module: str) -> tuple[Path, ...]:
    """The source files of `module` and of every project module it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _source_file(name)
        if path is None:
            continue
        seen[name] = path
        parent = name.rpartition(".")[0]
        if parent:  # a package's __init__ runs before its modules
            pending.append(parent)
        pending.extend(_imported_modules(path, name) - seen.keys())
    return tuple(sorted(set(seen.values())))


@lru_cache(maxsize=None)
def source_hash(module: str) -> str:
    digest = hashlib.sha256()
    for path in source_closure(module):
        root = next((p for p in path.parents if p.name in PROJECT_PACKAGES), path.parent).parent
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def git_commit() -> str:
    """`<short commit>` or `<short commit>+dirty`, empty outside a git checkout."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *PROJECT_PACKAGES],
                               cwd=here.parent, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}+dirty" if dirty else commit


def package_version() -> str:
    try:
        return version("hoi-factory")
    except PackageNotFoundError:
        return "unknown"


def code_identity(module: str) -> dict[str, str]:
    """What the manifest records; `source` is what the fingerprint includes."""
    return {"package": package_version(), "source": source_hash(module), "git": git_commit()}
