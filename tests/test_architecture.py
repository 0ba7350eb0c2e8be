"""The import rules of docs/architecture.md, checked rather than only described.

Loading a module is checked in a fresh interpreter (the test process itself has torch loaded
long before); which package a module imports from is read from its source, so imports inside
functions count too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prost_lightning"
ENV = PACKAGE / "env"

# Scripts run by the AppWorld interpreter (their own venv): never imported by the main venv.
APPWORLD_SIDE = {
    "prost_lightning.env._appworld_server",
    "prost_lightning.env.preamble",
    "prost_lightning.env.miniworld.build",
    "prost_lightning.env.miniworld.evaluation_template",
}
TRAINING_STACK = ("torch", "lightning", "pytorch_lightning", "transformers", "peft")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(folder: Path) -> list[str]:
    return sorted(module_name(p) for p in folder.rglob("*.py"))


ENV_MODULES = [m for m in modules_under(ENV) if m not in APPWORLD_SIDE]


def loaded_after(code: str) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def imported_names(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            # `from prost_lightning import env` imports a module too
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_module_lists_are_not_empty():
    assert "prost_lightning.env.pool" in ENV_MODULES and "prost_lightning.env.world" in ENV_MODULES
    assert "prost_lightning.env.miniworld.families" in ENV_MODULES


@pytest.mark.parametrize("module", ENV_MODULES)
def test_env_modules_load_no_training_stack(module):
    loaded = loaded_after(f"import {module}")
    assert module.split(".")[0] in loaded
    assert not loaded & set(TRAINING_STACK), f"importing {module} loads {sorted(loaded & set(TRAINING_STACK))}"


@pytest.mark.parametrize("module", sorted(APPWORLD_SIDE))
def test_appworld_side_scripts_import_nothing_of_the_main_venv(module):
    path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
    bad = {n for n in imported_names(path) if n.split(".")[0] in ("prost_lightning", *TRAINING_STACK)}
    assert not bad, f"{module} runs in the AppWorld venv but imports {sorted(bad)}"


TRAINING_DATA = [PACKAGE / "curriculum.py", *sorted((PACKAGE / "data").rglob("*.py"))]


@pytest.mark.parametrize("path", TRAINING_DATA, ids=lambda p: module_name(p))
def test_training_data_imports_nothing_from_env_or_agents(path):
    forbidden = ("prost_lightning.env", "prost_lightning.agents")
    bad = {n for n in imported_names(path) if any(n == f or n.startswith(f + ".") for f in forbidden)}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


def test_imported_names_resolves_relative_imports():
    """The checker itself: a relative import in env/ is seen under its absolute name."""
    assert "prost_lightning.env.client" in imported_names(ENV / "pool.py")
    assert "prost_lightning.errors" in imported_names(ENV / "pool.py")


@pytest.mark.parametrize("argv", [["--help"], ["world", "--help"]])
def test_prost_help_does_not_import_torch(argv):
    code = ("import sys\nfrom prost_lightning import cli\n"
            f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass")
    loaded = loaded_after(code)
    assert "prost_lightning" in loaded
    assert not loaded & {"torch", "lightning"}, f"prost {' '.join(argv)} loads {sorted(loaded & {'torch', 'lightning'})}"


FOUNDATIONS = ["errors.py", "files.py", "metrics.py", "peak_memory.py", "trajectory.py"]


@pytest.mark.parametrize("name", FOUNDATIONS)
def test_foundation_modules_import_no_other_layer(name):
    """What every layer may use depends on nothing but the error types and atomic files (itself a foundation)."""
    path = PACKAGE / name
    ours = {n for n in imported_names(path) if n.split(".")[0] == "prost_lightning"}
    allowed = ("prost_lightning.errors", "prost_lightning.files")
    others = {n for n in ours if not any(n == a or n.startswith(a + ".") for a in allowed)}
    assert not others, f"{name} imports {sorted(others)}"


LIGHTNING = ("lightning", "pytorch_lightning")


def hand_built_trainers(path: Path) -> list[int]:
    """Lines of `path` that build a Lightning Trainer themselves (``L.Trainer(...)`` or an imported
    ``Trainer``); transformers' Trainer (the throughput baseline) is another class and not counted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.split(".")[0] in LIGHTNING}
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIGHTNING
                and any(alias.name == "Trainer" for alias in node.names)):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Trainer"
              and isinstance(node.func.value, (ast.Name, ast.Attribute))
              and ast.unparse(node.func.value).split(".")[0] in aliases):
            lines.append(node.lineno)
    return lines


def test_every_trainer_comes_from_the_prost_fit_cli(tmp_path):
    """One way to build a Trainer (docs/architecture.md): `cli.lightning_main`, nothing by hand."""
    found = {module_name(p): hand_built_trainers(p) for p in sorted(PACKAGE.rglob("*.py"))}
    assert not {m: lines for m, lines in found.items() if lines}
    checker = tmp_path / "by_hand.py"  # the checker itself sees both forms
    checker.write_text("import lightning as L\nfrom lightning.pytorch import Trainer\nt = L.Trainer(max_epochs=1)\n"
                       "u = L.pytorch.Trainer()\n")
    assert hand_built_trainers(checker) == [2, 3, 4]


def top_level_modules_and_packages() -> list[str]:
    names = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    return sorted(names + [p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()])


def test_the_readme_layout_names_every_top_level_module_and_package():
    """A newcomer finds every module of the package in the README's layout section."""
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    missing = [n for n in top_level_modules_and_packages() if n not in layout]
    assert not missing, f"README.md's layout does not list {missing}"


def test_the_architecture_page_says_who_owns_every_top_level_module_and_package():
    """docs/architecture.md's ownership table keeps up with the package (it had fallen behind once)."""
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    owners = page.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in top_level_modules_and_packages() if f"`{n}" not in owners]
    assert not missing, f"docs/architecture.md's 'Who owns what' does not name {missing}"
