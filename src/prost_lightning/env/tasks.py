"""Read an AppWorld data root without importing appworld.

    ids = load_task_ids(root, "train")          # data/datasets/train.txt, ":tag" suffixes dropped
    task = load_task(root, ids[0])              # TaskInfo: instruction, supervisor, difficulty, plan
    apis = load_api_names(root)                 # {app: [api names]} from data/api_docs/standard

The plan (sub-tasks with solution code) comes from our ``ground_truth/plan.json`` (mini-world).
For real AppWorld train/dev tasks, which ship ``ground_truth/compiled_solution.py`` (or
``solution.py``) instead, it is derived by ``derive_plan``; test splits have no solution, so
their plan is empty.

Plan derivation rule (``derive_plan``), applied to the source of ``def solution(apis, requester)``:

1. Module-level code other than ``solution`` (imports, helper functions) is prepended to the
   code of sub-task 1, so later steps can use it.
2. The body's top-level statements are split into groups at every blank line or comment line
   between two statements; each group (its source, dedented, inner comments kept) is one sub-task.
3. A group's description is its leading comment block (``#`` stripped, lines joined, first
   letter capitalised, full stop added). Without a comment it is generated from what the group
   calls, e.g. "Call spotify.login and spotify.show_playlist_library.", or, with no API call,
   "Compute x, y." (assigned names) / "Run the next step.".
4. A bare ``return``/``return None`` as the last statement is dropped. If any other ``return``
   (or ``yield``) occurs outside nested functions, the body cannot be run step by step at top
   level, and the whole solution becomes one sub-task (module code + ``solution(apis, requester)``),
   described "Solve the task.".
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ProstError
from ..metrics import scenario_of

SPLITS = ("train", "dev", "test_normal", "test_challenge")


class TaskDataError(ProstError, ValueError):
    """A missing or malformed file in a data root; the message names the file and the fix."""


class NoWorldData(ConfigError):
    """A folder given as a world root holds no AppWorld task data; the message says how to get it."""


@dataclass(frozen=True)
class PlanStep:
    description: str
    code: str


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    scenario_id: str
    instruction: str
    supervisor: dict
    difficulty: int | None
    plan: list[PlanStep] = field(default_factory=list)
    apps: list[str] = field(default_factory=list)
    family: str | None = None
    datetime: str | None = None
    plan_source: str = "none"  # plan.json | compiled_solution.py | solution.py | none

    @property
    def plan_kinds(self) -> list[str] | None:
        """The sub-task kind of each ground-truth plan step (login, collect, filter, ...) of a mini-world
        task, from its family; None for a task of no known family (AppWorld's own, or a family file
        this process has not loaded)."""
        from .miniworld.families import FAMILIES

        family = FAMILIES.get(self.family) if self.family else None
        return list(family.kinds) if family and len(family.kinds) == len(self.plan) else None


def data_dir(root: str | Path) -> Path:
    return Path(root) / "data"


def is_world_root(root: str | Path) -> bool:
    """True when ``root`` holds AppWorld task data (``data/tasks/``), built or downloaded."""
    return (data_dir(root) / "tasks").is_dir()


def require_world_root(root: str | Path) -> Path:
    """``root`` as a Path, or :class:`NoWorldData` saying how to build or download one."""
    root = Path(root)
    if not is_world_root(root):
        raise NoWorldData(f"no AppWorld data under {root} (missing {data_dir(root) / 'tasks'}): build the "
                          f"mini-world with `prost world build --root {root}` or download AppWorld's "
                          f"with `prost world download --root {root}`")
    return root


def load_task_ids(root: str | Path, split: str) -> list[str]:
    """Task ids of a split, in file order (AppWorld's ``id:tag`` lines keep only the id)."""
    path = data_dir(root) / "datasets" / f"{split}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in (data_dir(root) / "datasets").glob("*.txt"))
        raise TaskDataError(f"{path}: no such split file (splits here: {known or 'none'}); "
                            f"build or download the world root first")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            ids.append(line.split(":")[0].strip())
    return ids


def load_splits(root: str | Path) -> dict[str, list[str]]:
    """All split files under data/datasets/ (standard ones first), name -> task ids."""
    folder = data_dir(root) / "datasets"
    names = [s for s in SPLITS if (folder / f"{s}.txt").is_file()]
    names += sorted(p.stem for p in folder.glob("*.txt") if p.stem not in names)
    return {name: load_task_ids(root, name) for name in names}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TaskDataError(f"{path}: missing ({what})") from None
    except json.JSONDecodeError as error:
        raise TaskDataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None


def load_api_names(root: str | Path) -> dict[str, list[str]]:
    """The APIs each app of the world documents (``data/api_docs/standard/<app>.json``), sorted by name."""
    folder = data_dir(root) / "api_docs" / "standard"
    if not folder.is_dir():
        raise NoWorldData(f"no API documentation under {folder}: build the world again "
                          "(`prost world build`) or point --world at an AppWorld data root")
    names = {}
    for path in sorted(folder.glob("*.json")):
        docs = _read_json(path, "API documentation")  # {api_name: doc}, or a list of docs with "api_name"
        names[path.stem] = sorted(docs if isinstance(docs, dict) else (d["api_name"] for d in docs))
    return names


def load_task(root: str | Path, task_id: str) -> TaskInfo:
    """Everything our code needs about one task, read from its folder."""
    folder = data_dir(root) / "tasks" / task_id
    if not folder.is_dir():
        raise TaskDataError(f"{folder}: no such task folder (is {task_id!r} a task of this root?)")
    specs = _read_json(folder / "specs.json", "task specs")
    truth = folder / "ground_truth"
    metadata = _read_json(truth / "metadata.json", "ground-truth metadata") if (truth / "metadata.json").is_file() else {}
    plan: list[PlanStep] = []
    apps: list[str] = []
    family = None
    plan_source = "none"
    if (truth / "plan.json").is_file():
        raw = _read_json(truth / "plan.json", "sub-task plan")
        try:
            plan = [PlanStep(str(s["description"]), str(s["code"])) for s in raw["subtasks"]]
        except (KeyError, TypeError):
            raise TaskDataError(f"{truth / 'plan.json'}: field 'subtasks' must be a list of "
                                "{\"description\": str, \"code\": str}") from None
        apps, family, plan_source = list(raw.get("apps", [])), raw.get("family"), "plan.json"
    else:
        for name in ("compiled_solution.py", "solution.py"):
            if (truth / name).is_file():
                plan, plan_source = derive_plan((truth / name).read_text()), name
                break
        if (truth / "required_apps.json").is_file():
            apps = list(_read_json(truth / "required_apps.json", "required apps"))
    try:
        return TaskInfo(
            task_id=task_id,
            scenario_id=scenario_of(task_id),
            instruction=specs["instruction"],
            supervisor=dict(specs["supervisor"]),
            difficulty=metadata.get("difficulty"),
            plan=plan,
            apps=apps,
            family=family,
            datetime=specs.get("datetime"),
            plan_source=plan_source,
        )
    except KeyError as error:
        raise TaskDataError(f"{folder / 'specs.json'}: missing field {error}") from None


# -- plan derivation from a ground-truth solution ---------------------------------------------

_API_CALL = re.compile(r"\bapis\.(\w+)\.(\w+)")


def derive_plan(source: str, function: str = "solution") -> list[PlanStep]:
    """Split a ground-truth ``def solution(apis, requester)`` into sub-tasks (module docstring rule)."""
    lines = source.splitlines()
    module = ast.parse(source)
    target = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if target is None:
        raise TaskDataError(f"no `def {function}(...)` in the ground-truth solution")
    header = "\n\n".join(
        ast.get_source_segment(source, node, padded=False) or "" for node in module.body if node is not target
    ).strip()
    whole = [PlanStep("Solve the task.", (header + "\n\n" if header else "") +
                      "\n".join(lines[target.lineno - 1 - len(target.decorator_list): target.end_lineno]) +
                      f"\n{function}(apis, requester)")]

    body = list(target.body)
    previous_end = _signature_end(lines, target)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        previous_end = body[0].end_lineno
        body = body[1:]  # docstring
    if body and isinstance(body[-1], ast.Return) and (body[-1].value is None or (
            isinstance(body[-1].value, ast.Constant) and body[-1].value.value is None)):
        body = body[:-1]
    if not body or any(_returns_outside_functions(stmt) for stmt in body):
        return whole

    groups: list[tuple[list[str], list[ast.stmt]]] = []
    for stmt in body:
        first = _first_line(stmt)
        between = lines[previous_end: first - 1]  # source lines strictly between two statements
        comments = [ln.strip()[1:].strip() for ln in between if ln.strip().startswith("#")]
        separated = any(not ln.strip() or ln.strip().startswith("#") for ln in between)
        if not groups or separated:
            groups.append((comments, [stmt]))
        else:
            groups[-1][1].append(stmt)
        previous_end = stmt.end_lineno

    plan = []
    for index, (comments, stmts) in enumerate(groups):
        start, end = _first_line(stmts[0]), stmts[-1].end_lineno
        code = textwrap.dedent("\n".join(lines[start - 1: end])).strip("\n")
        if index == 0 and header:
            code = header + "\n\n" + code
        try:
            compile(code, "<plan step>", "exec")
        except SyntaxError:
            return whole
        plan.append(PlanStep(_describe(comments, stmts, code), code))
    return plan


def _signature_end(lines: list[str], function: ast.FunctionDef) -> int:
    """1-based line of the ``def``'s closing colon (signatures may span lines)."""
    first_body_line = _first_line(function.body[0])
    for number in range(function.lineno, first_body_line):
        if lines[number - 1].split("#")[0].rstrip().endswith(":"):
            return number
    return function.lineno


def _first_line(stmt: ast.stmt) -> int:
    decorators = getattr(stmt, "decorator_list", [])
    return min([stmt.lineno] + [d.lineno for d in decorators])


def _returns_outside_functions(node: ast.AST) -> bool:
    if isinstance(node, (ast.Return, ast.Yield, ast.YieldFrom)):
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
        return False
    return any(_returns_outside_functions(child) for child in ast.iter_child_nodes(node))


def _describe(comments: list[str], stmts: list[ast.stmt], code: str) -> str:
    text = " ".join(c for c in comments if c)
    if not text:
        calls = list(dict.fromkeys(f"{app}.{api}" for app, api in _API_CALL.findall(code)))
        if calls:
            text = "Call " + (", ".join(calls[:-1]) + " and " + calls[-1] if len(calls) > 1 else calls[0])
        else:
            names = list(dict.fromkeys(
                t.id for s in stmts for n in ast.walk(s) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)
            ))
            text = "Compute " + ", ".join(names) if names else "Run the next step"
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."
