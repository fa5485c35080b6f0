"""The layering a newcomer relies on, read from the import statements: flows -> tasks -> models -> hoi_factory,
each paper's code in its own folders, and shared code (the core, renderers, body/hand models, procedural scenes)
never importing a paper folder it feeds."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_TASKS = {"tasks.chorus", "tasks.ho3pairs", "tasks.hogsa", "tasks.c_hoi", "tasks.affordance"}
PAPER_MODELS = {"models.chorus", "models.affordance", "models.hogsa", "models.c_hoi"}
#  what each kind of folder may import besides itself
ALLOWED = {
    "hoi_factory": set(),
    "models.shared": {"hoi_factory", "models.shared"},
    "models.paper": {"hoi_factory", "models.shared"},
    "tasks.shared": {"hoi_factory", "models.shared", "tasks.shared"},
    "tasks.paper": {"hoi_factory", "models.shared", "models.paper", "tasks.shared"},
    "tasks.training": {"hoi_factory", "models.shared", "models.paper", "tasks.shared"},
}


def folder(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in ("tasks", "models") and len(parts) > 1 else parts[0]


def kind(group: str) -> str:
    if group in PAPER_TASKS:
        return "tasks.paper"
    if group in PAPER_MODELS:
        return "models.paper"
    if group == "tasks.training":
        return group
    if group.startswith("tasks."):
        return "tasks.shared"
    if group.startswith("models"):
        return "models.shared"
    return group


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name.split(".")[0] in ("hoi_factory", "models", "tasks", "flows")]


def test_every_import_goes_down_the_layers_and_no_paper_folder_imports_another():
    wrong = []
    for top in ("hoi_factory", "models", "tasks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            source = folder(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for name in imports(path):
                target = folder(name)
                if target == source:
                    continue
                if kind(target) not in ALLOWED[kind(source)]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


def test_the_rule_catches_a_sibling_paper_import_and_an_upward_one():
    assert kind(folder("tasks.hogsa.posing")) not in ALLOWED[kind("tasks.ho3pairs")]
    assert kind(folder("tasks.chorus.views")) not in ALLOWED[kind("tasks.procedural")]
    assert kind(folder("models.hogsa.fit")) not in ALLOWED[kind("models.render")]
    assert kind(folder("models.render.camera")) in ALLOWED[kind("tasks.hogsa")]
