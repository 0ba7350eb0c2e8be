"""Build the mini-world: a complete AppWorld data root from our own task definitions.

Runs INSIDE the AppWorld venv (it imports appworld, the stdlib and its sibling modules only):

    .venv-appworld/bin/python src/prost_lightning/env/miniworld/build.py --root DIR --seed 0

Writes DIR/data/{api_docs/standard/*.json, base_dbs/*.db, datasets/*.txt, version.txt,
tasks/<id>/...} with AppWorld's own model classes (docs/miniworld.md). The build goes
into a temp folder next to DIR, which replaces DIR only when complete. Time is frozen at the
task datetime while rows are written, so the same seed gives byte-identical task files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

# Sibling modules live in the `miniworld` package; import it by its parent folder so the
# relative imports inside it work without the main project's package being installed here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from miniworld import catalog, evaluation_template, families  # noqa: E402

EVALUATION_SOURCE = Path(__file__).resolve().parent / "evaluation_template.py"


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


class Resolver:
    """Turns "@sup:<app>", "@user:<app>:<email>" and "@ref:<ref>" values into database ids."""

    def __init__(self, user_ids: dict[tuple[str, str], int]):
        self.user_ids = user_ids
        self.refs: dict[str, int] = {}

    def __call__(self, value):
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if not (isinstance(value, str) and value.startswith("@")):
            return value
        kind, _, rest = value[1:].partition(":")
        if kind == "sup":
            return self.user_ids[(rest, catalog.SUPERVISOR["email"])]
        if kind == "user":
            app, _, email = rest.partition(":")
            return self.user_ids[(app, email)]
        if kind == "ref":
            return self.refs[rest]
        raise ValueError(f"unknown reference {value!r}")


def _apis_used(subtasks: list[dict]) -> set[str]:
    """AppWorld APIs a plan calls, counting those inside the preamble's login(app) helper."""
    used = set()
    for sub in subtasks:
        used |= {f"{app}.{api}" for app, api in re.findall(r"apis\.(\w+)\.(\w+)", sub["code"])}
        for app in re.findall(r'login\("(\w+)"\)', sub["code"]):
            used |= {"supervisor.show_account_passwords", "supervisor.show_profile", f"{app}.login"}
    return used


def build_api_docs(data: Path, apps_no_admin) -> None:
    from appworld.collections.api_docs import ApiDocCollection
    from appworld.common.constants import CANARY_STRING

    for app, docs in ApiDocCollection.build(load_apps=tuple(apps_no_admin)).items():
        _write_json(data / "api_docs" / "standard" / f"{app}.json",
                    {name: dict(doc, canary_string=CANARY_STRING) for name, doc in docs.items()})


def build_base_dbs(data: Path, all_apps, apps_no_admin) -> dict[tuple[str, str], int]:
    """Users, passwords and the cast's contacts; returns {(app, email): user id}."""
    from appworld.api_docs import prepare_api_docs
    from appworld.apps.model_lib import CachedDBHandler, get_db_home_path
    from appworld.collections.models import ModelCollection

    memory = get_db_home_path(storage_type="memory", type="base")
    mc = ModelCollection.load(to_db_home_path=memory, from_db_home_path=memory,
                              load_apps=all_apps, create_db=True)
    mc.api_docs.ApiDoc.save_all([
        mc.api_docs.ApiDoc(app_name_=d["app_name"], api_name=d["api_name"], path=d["path"],
                           method=d["method"], description=d["description"],
                           parameters=d["parameters"], response_schemas=d["response_schemas"])
        for app in apps_no_admin for d in prepare_api_docs(app)])
    sup = catalog.SUPERVISOR
    mc.admin.MainUser(**sup, **catalog.SUPERVISOR_EXTRA).save()
    supervisor = mc.supervisor.Supervisor(**sup, **catalog.SUPERVISOR_EXTRA)
    supervisor.save()
    user_ids: dict[tuple[str, str], int] = {}

    def add_user(app: str, first: str, last: str, email: str, phone: str, password: str) -> None:
        fields = dict(first_name=first, last_name=last, password=password)
        if app == "phone":
            fields["phone_number"] = phone
        else:
            fields["email"] = email
        if app in ("simple_note", "spotify", "todoist", "venmo"):
            fields["verified"] = True
        if app == "venmo":
            fields["venmo_balance"] = 5000.0
        user = mc[app].User(**fields)
        user.save()
        user_ids[(app, email)] = user.id

    for app in catalog.ACCOUNT_APPS:
        password = catalog.password_for(app)
        mc.supervisor.AccountPassword(supervisor_id=supervisor.id, account_name=app,
                                      password=password).save()
        add_user(app, sup["first_name"], sup["last_name"], sup["email"], sup["phone_number"],
                 password)
    for index, person in enumerate(catalog.CAST):
        for app in catalog.CAST_APPS:
            add_user(app, person.first_name, person.last_name, person.email,
                     catalog.cast_phone(index), f"pw-cast-{index}-{app}")
    sup_phone = user_ids[("phone", sup["email"])]
    for index, person in enumerate(catalog.CAST):
        mc.phone.Contact(user_id=sup_phone, first_name=person.first_name,
                         last_name=person.last_name, email=person.email,
                         phone_number=catalog.cast_phone(index),
                         relationships=[person.relationship]).save()
    mc.save(db_home_path=str(data / "base_dbs"), format="full", app_names=list(all_apps),
            delete_if_exists=True)
    mc.close()
    CachedDBHandler.reset()
    return user_ids


def build_task(data: Path, task: dict, user_ids, all_apps) -> None:
    from appworld.apps.model_lib import CachedDBHandler, get_db_home_path
    from appworld.collections.models import ModelCollection
    from appworld.common.constants import CANARY_STRING, DB_VERSION

    task_id = task["task_id"]
    task_dir = data / "tasks" / task_id
    memory = get_db_home_path(storage_type="memory", type="task_input", task_id=task_id)
    tm = ModelCollection.load(to_db_home_path=memory, from_db_home_path=str(data / "base_dbs"),
                              load_apps=list(all_apps))
    supervisor = tm.supervisor.Supervisor.find_one(email=catalog.SUPERVISOR["email"])
    tm.supervisor.Task(supervisor_id=supervisor.id, instruction=task["instruction"],
                       answer="null").save()
    resolve = Resolver(user_ids)
    for ref, table, fields in task["seed"]:
        app, model = table.split(".")
        row = tm[app][model](**resolve(fields))
        row.save()
        resolve.refs[ref] = row.id
    tm.save(db_home_path=str(task_dir / "dbs"), format="changes", app_names=list(all_apps),
            delete_if_exists=True)
    tm.close()
    CachedDBHandler.reset(key_substring=task_id)

    expected = task["expected"]
    private = {
        "question": task["question"],
        "watched": [list(t) for t in catalog.WATCHED_TABLES],
        "added": resolve(expected.get("added", {})),
        "deleted": resolve(expected.get("deleted", {})),
        "updated": {table: {str(resolve(ref)): fields for ref, fields in by_ref.items()}
                    for table, by_ref in expected.get("updated", {}).items()},
    }
    gt = task_dir / "ground_truth"
    subtasks = task["subtasks"]
    code_lines = sum(len(s["code"].splitlines()) for s in subtasks)
    requirements = (evaluation_template.QUESTION_REQUIREMENTS if task["question"]
                    else evaluation_template.STATE_REQUIREMENTS)
    _write_json(task_dir / "specs.json", {
        "instruction": task["instruction"], "supervisor": catalog.SUPERVISOR,
        "datetime": catalog.TASK_DATETIME, "db_version": DB_VERSION,
        "canary_string": CANARY_STRING})
    _write_json(gt / "metadata.json", {
        "mode": "minimal", "difficulty": task["difficulty"], "num_apps": len(task["apps"]),
        "num_apis": len(_apis_used(subtasks)),
        "num_api_calls": sum(len(_apis_used([s])) for s in subtasks),
        "num_solution_code_lines": code_lines, "family": task["family"],
        "scenario": task["scenario"], "split": task["split"], "num_subtasks": len(subtasks)})
    _write_json(gt / "answer.json", task["answer"])
    _write_json(gt / "public_data.json", {})
    _write_json(gt / "private_data.json", private)
    _write_json(gt / "test_data.json", [
        {"requirement": requirements[0], "label": "no_op_fail"},
        {"requirement": requirements[1], "label": "no_op_pass"}])
    shutil.copyfile(EVALUATION_SOURCE, gt / "evaluation.py")
    _write_json(gt / "plan.json", {"subtasks": subtasks, "family": task["family"],
                                   "scenario": task["scenario"], "apps": task["apps"]})


MARKER = "miniworld.json"  # written last into every mini-world root


class RefusedRoot(Exception):
    """The target exists and is not a mini-world: replacing it could destroy real AppWorld data."""


def build(root: Path, seed: int, extension: dict | None = None) -> dict:
    """``extension``: {"families": [family file, ...], "cells": [[family, key, split], ...],
    "splits": [name, ...]} added to the registry and the grid."""
    extension = extension or {}
    for family_file in extension.get("families", ()):
        families.load_family_file(family_file)
    cells, new_splits = tuple(extension.get("cells", ())), tuple(extension.get("splits", ()))
    families.check_grid((*families.SCENARIOS, *(tuple(c) for c in cells)), (*families.SPLITS, *new_splits))
    started = time.perf_counter()
    root = root.resolve()
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise RefusedRoot(f"{root} exists and is not a mini-world (no {MARKER}); refusing to "
                          "replace it. Pick an empty or new folder, e.g. --root worlds/mini")
    tmp = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    os.environ["APPWORLD_ROOT"] = str(tmp)  # AppWorld re-reads it on every path lookup

    from datetime import datetime

    from appworld.apps import get_all_apps
    from appworld.apps.api_lib import set_local_date_and_time

    timings = {"import_s": time.perf_counter() - started}
    data = tmp / "data"
    all_apps = list(get_all_apps())
    apps_no_admin = list(get_all_apps(skip_admin=True))
    try:
        build_api_docs(data, apps_no_admin)
        timings["api_docs_s"] = time.perf_counter() - started - timings["import_s"]
        # Freeze the clock so created_at/updated_at defaults (and so the files) are deterministic.
        freezer = set_local_date_and_time(datetime.fromisoformat(catalog.TASK_DATETIME))
        try:
            user_ids = build_base_dbs(data, all_apps, apps_no_admin)
            tasks = families.all_tasks(seed, cells, new_splits)
            for task in tasks:
                build_task(data, task, user_ids, all_apps)
        finally:
            freezer.stop()
        # The frozen clock stands still, so only the unfrozen phases can be timed inside.
        timings["dbs_and_tasks_s"] = (time.perf_counter() - started - timings["api_docs_s"]
                                      - timings["import_s"])
        for split in (*families.SPLITS, *new_splits):
            ids = [t["task_id"] for t in tasks if t["split"] == split]
            (data / "datasets").mkdir(parents=True, exist_ok=True)
            (data / "datasets" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        (data / "version.txt").write_text("0.1.0\n")
        _write_json(tmp / MARKER, {"seed": seed, "tasks": len(tasks)})
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        if root.exists():
            os.replace(root, old)
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total_s"] = time.perf_counter() - started
    return {"root": str(root), "tasks": len(tasks),
            "scenarios": len({t["scenario"] for t in tasks}),
            **{k: round(v, 2) for k, v in timings.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the data root to (re)create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extension", type=Path, help="JSON file of extra families, cells and splits")
    args = parser.parse_args(argv)
    extension = json.loads(args.extension.read_text()) if args.extension else None
    try:
        summary = build(args.root, args.seed, extension)
    except (RefusedRoot, families.CellError, families.FamilyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Skip interpreter teardown of ~130 task databases' engines: the root is complete and the
    # summary flushed, and teardown was measured to cost many seconds.
    os._exit(code)
