"""`make demo-table` (`prost demo-table`): the demo's recipes x seeds, cell by cell, as one table.

    prost demo-table                                    # every recipe x seeds 0, 1, 2 (hours on 2 CPU cores)
    prost demo-table --recipes '[recovery]' --seeds '[0]'   # one cell; the others stay as they are
    prost demo-table --dry_run true                     # what is finished, what is left, the commands
    prost demo-table --report_only true                 # the table again from the finished cells

A **recipe** is what the team is trained with (RECIPES): ``oracle`` (the oracle's trajectories),
``recovery`` (30 % of the executor's sub-tasks start with a realistic mistake played in AppWorld and
then repaired, docs/recovery.md), ``improve`` (recovery, then one self-improvement round,
`prost improve`). A **cell** is one recipe at one seed: one `prost demo` run in
``<out>/<recipe>_s<seed>/``, at one size for every cell (default: every batch of every epoch), so
cells differ by recipe and seed alone. The untrained team is the same for every cell (the base
model behind zero-initialised adapters, greedy), so the first cell evaluates it into
``<out>/untrained`` and the others copy it (`prost demo --untrained_eval`).

Resumable across sittings: a finished cell's summary is kept in ``results/demo_table.json``,
committed with the table, and written only after its demo finished; a cell that was killed or
failed has none and is redone from scratch. The table (mean, standard deviation and each seed's
value per recipe and held-out split) goes to ``results/demo_table.md`` and between the README's
``<!-- demo-table -->`` markers.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from prost_lightning.agents.episode_summary import worst_kinds
from prost_lightning.demo import diagnose, diagnostics_outdated, episodes_file, finished_fit
from prost_lightning.env.tasks import is_world_root
from prost_lightning.errors import ConfigError
from prost_lightning.files import check_writable, write_atomic
from prost_lightning.results import _run, git_commit
from prost_lightning.results_report import machine
from prost_lightning.sweep import PROST, show

RECIPES: dict[str, dict] = {
    "oracle": {"perturb": 0.0, "improve_rounds": 0, "label": "oracle only"},
    "recovery": {"perturb": 0.3, "improve_rounds": 0, "label": "+ recovery data"},
    "improve": {"perturb": 0.3, "improve_rounds": 1, "label": "+ recovery + 1 self-improvement round"},
}
MARKERS = ("<!-- demo-table -->", "<!-- /demo-table -->")


def cell_name(recipe: str, seed: int) -> str:
    return f"{recipe}_s{seed}"


def demo_command(recipe: str, seed: int, folder: Path, shared_untrained: Path, settings: dict, root: str,
                 pool_size: int, fit_from: Path | None = None) -> list[str]:
    """The `prost demo` run of one cell."""
    options = {"out": folder, "root": root, "config": settings["config"], "base_model": settings["base_model"],
               "seed": seed, "perturb": RECIPES[recipe]["perturb"], "improve_rounds": RECIPES[recipe]["improve_rounds"],
               "size": "steps" if settings["steps_per_epoch"] else "full", "steps_per_epoch": settings["steps_per_epoch"],
               "eval_scenarios": settings["eval_scenarios"], "train_variants": settings["train_variants"],
               "fit_args": json.dumps(settings["fit_args"]) if settings["fit_args"] else None,
               "untrained_eval": shared_untrained, "fit_from": fit_from, "pool_size": pool_size}
    return [*PROST, "demo", *[token for key, value in options.items() if value is not None
                              for token in (f"--{key}", str(value))]]


def shared_fit(cells: dict[str, dict], out_dir: Path, recipe: str, seed: int) -> Path | None:
    """The fit an improve cell starts from: its seed's recovery cell's, when finished and still on disk.

    An improve cell is a recovery cell plus one self-improvement round; its data, config, size and
    seed are the recovery cell's, so taking that fit saves the fit's time and makes the two differ
    by the round alone.
    """
    if not RECIPES[recipe]["improve_rounds"]:
        return None
    base = next((name for name, spec in RECIPES.items()
                 if spec["perturb"] == RECIPES[recipe]["perturb"] and not spec["improve_rounds"]), None)
    report = out_dir / cell_name(base, seed) / "report.json" if base else None
    if not report or cell_name(base, seed) not in cells or not report.is_file():
        return None
    run = Path(json.loads(report.read_text()).get("run_dir") or "")
    return run if finished_fit(run) else None


def cell_record(recipe: str, seed: int, settings: dict, report: dict, commit: str) -> dict:
    """What the table keeps of one finished cell (the demo's report.json holds the rest)."""
    def per_split(team: str) -> dict:
        return {split: {"tgc": s["goal"]["tgc"], "sgc": s["goal"]["sgc"], "failures": s["failures"],
                        "subtask_error_rates": s["subtask_error_rates"], "diagnostics": s.get("diagnostics")}
                for split, s in report[team].items()}

    training = report.get("training") or {}
    return {
        "cell": cell_name(recipe, seed), "recipe": recipe, "seed": seed, "settings": settings,
        "run_dir": report["run_dir"],
        "tasks": {split: len(ids) for split, ids in report["eval_tasks"].items()},
        "untrained": per_split("untrained"), "trained": per_split("trained"),
        "training": {k: training.get(k) for k in ("steps", "train_seconds", "trained_tokens")},
        "improve": [{k: r.get(k) for k in ("sample_success", "kept", "train_trajectories")}
                    for r in (report.get("improve") or {}).get("rounds", [])],
        "fit": report["recipe"].get("fit"), "precision": report["precision"], "wall_time_s": report["wall_time_s"],
        "commit": commit,
        "machine": machine(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_cells(path: Path, settings: dict) -> dict[str, dict]:
    """{cell: record} of the finished cells in ``path``; cells of other settings are an error, not mixed in."""
    if not path.is_file():
        return {}
    try:
        cells = json.loads(path.read_text())["cells"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--summary {path}: not a demo-table summary ({error}); move it away or give another "
                          "--summary") from None
    for record in cells.values():
        if record.get("settings") != settings:
            changed = sorted(k for k in settings if (record.get("settings") or {}).get(k) != settings[k])
            raise ConfigError(f"--summary {path}: cell {record.get('cell')} was run with other settings ({', '.join(changed)}"
                              f": {[record.get('settings', {}).get(k) for k in changed]} here {[settings[k] for k in changed]});"
                              " give another --summary and --table for these settings, or remove the file to start over")
    return cells


def add_diagnostics(cells: dict[str, dict], out_dir: Path, root: str) -> list[str]:
    """The cells whose failure diagnostics were missing or outdated (recorded before they, or their
    per-kind counts, existed) and are now computed from their episodes on disk; a cell whose folder
    is gone (another machine) keeps what it has."""
    filled = []
    if not is_world_root(root):  # the ground-truth plans live in the world
        return filled
    for name, record in cells.items():
        for team in ("untrained", "trained"):
            for split, summary in record[team].items():
                episodes = episodes_file(out_dir / name, team, split)
                if diagnostics_outdated(summary) and episodes.is_file():
                    summary["diagnostics"] = diagnose(episodes, Path(root))
                    filled += [name] if name not in filled else []
    return filled


def render_diagnostics(cells: dict[str, dict], recipes: list[str], seeds: list[int]) -> str:
    """Where the teams' episodes fail (``failure_diagnostics``), summed over seeds and held-out splits."""
    def row(label: str, runs: list[dict], team: str) -> str:
        parts = [r[team][s]["diagnostics"] for r in runs for s in r[team] if r[team][s].get("diagnostics")]
        if not parts:
            return f"| {label} | - | - | - | - | - | - | - |"
        total = {key: sum(p[key] for p in parts) for key in ("episodes", "failed")}
        plan = {key: sum(p["plan"][key] for p in parts) for key in parts[0]["plan"]}
        after = {key: sum(p["after_error"][key] for p in parts) for key in parts[0]["after_error"]}
        kinds: dict[str, dict[str, int]] = {}
        for part in parts:
            for kind, counts in (part.get("kinds") or {}).items():
                for key, n in counts.items():
                    kinds.setdefault(kind, {"reached": 0, "failed": 0})[key] += n

        def share(n: int, of: int) -> str:
            return f"{n} ({100 * n / of:.0f} %)" if of else f"{n}"

        judged = plan["diverged"] + plan["followed"]
        return (f"| {label} | {total['failed']} of {total['episodes']} | {share(plan['diverged'], judged)} | "
                f"{after['errors']} | {share(after['report'], after['errors'])} | "
                f"{share(after['same_code'], after['errors'])} | "
                f"{share(after['new_code'], after['errors'])}, {after['repaired']} ran | "
                f"{worst_kinds(kinds) or '-'} |")

    finished = [cells[cell_name(r, s)] for r in recipes for s in seeds if cell_name(r, s) in cells]
    if not any(r["trained"][s].get("diagnostics") for r in finished for s in r["trained"]):
        return ""
    lines = ["| team | failed episodes | of them, the plan diverged from the ground truth by the failed sub-task | "
             "failed executions | then a report without code | the same code again | new code | "
             "failed most at the true plan's steps of kind (failed there of reached) |",
             "|---|---|---|---|---|---|---|---|", row("untrained team", finished[:1], "untrained")]
    for recipe in recipes:
        runs = [cells[cell_name(recipe, s)] for s in seeds if cell_name(recipe, s) in cells]
        lines.append(row(RECIPES[recipe]["label"], runs, "trained"))
    return "\n".join(lines) + "\n"


def _spread(values: list[float]) -> str:
    """Mean ± standard deviation (each value); one value alone, since one seed has no spread."""
    if len(values) < 2:
        return f"{values[0]:.1f}" if values else "-"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def render_table(cells: dict[str, dict], recipes: list[str], seeds: list[int], command: str) -> str:
    """The markdown table: untrained team, then per recipe mean ± sd (each seed) of TGC and SGC per split."""
    finished = [cells[cell_name(r, s)] for r in recipes for s in seeds if cell_name(r, s) in cells]
    if not finished:
        return f"No cell finished yet: run `{command}`.\n"
    splits = list(finished[0]["tasks"])
    untrained = finished[0]["untrained"]
    header = "| recipe | seeds | " + " | ".join(f"`{s}` ({finished[0]['tasks'][s]}) TGC | SGC" for s in splits) + \
             " | seeds with trained > untrained TGC (per split) | fails most in |"
    lines = [header, "|---|---|" + "---|---|" * len(splits) + "---|---|",
             "| untrained team | - | " + " | ".join(f"{untrained[s]['tgc']:.1f} | {untrained[s]['sgc']:.1f}"
                                                  for s in splits) + " | - | - |"]
    for recipe in recipes:
        runs = [cells[cell_name(recipe, s)] for s in seeds if cell_name(recipe, s) in cells]
        if not runs:
            lines.append(f"| {RECIPES[recipe]['label']} | 0 of {len(seeds)} | " + " | ".join("- | -" for _ in splits)
                         + " | - | - |")
            continue
        better = ", ".join(f"{sum(r['trained'][s]['tgc'] > r['untrained'][s]['tgc'] for r in runs)} of {len(runs)}"
                           for s in splits)
        lines.append(f"| {RECIPES[recipe]['label']} | {len(runs)} of {len(seeds)} "
                     f"({', '.join(str(r['seed']) for r in runs)}) | "
                     + " | ".join(f"{_spread([r['trained'][s]['tgc'] for r in runs])} | "
                                  f"{_spread([r['trained'][s]['sgc'] for r in runs])}" for s in splits)
                     + f" | {better} | {_worst_subtask(runs, splits)} |")
    settings = finished[0]["settings"]
    # an improve cell's fit summary is its round's (more steps on top of a fit like the others')
    steps = [r["training"]["steps"] for r in finished if not r.get("improve")] or [r["training"]["steps"] for r in finished]
    size = f"{settings['steps_per_epoch']} steps per epoch" if settings["steps_per_epoch"] else "every batch of every epoch"
    step_range = f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"
    lines += ["", f"TGC/SGC in percent of every held-out task (scenario); mean ± standard deviation over the "
                  f"finished seeds (each seed's value; one seed: its value). \"fails most in\": the sub-task k where "
                  f"most trained episodes failed (share of episodes, all seeds and splits). Size: {size} "
                  f"({step_range} optimizer steps per cell, `{settings['config']}`), base model {settings['base_model']}.",
              *_diagnostics_block(cells, recipes, seeds),
              "", f"Written by `{command}` ({len(finished)} of {len(recipes) * len(seeds)} cells finished); "
                  "each cell: " + "; ".join(f"{r['cell']} {r['commit']} {r['precision']} "
                                            f"{r['wall_time_s']['total'] / 60:.0f} min" + _round_note(r)
                                            for r in finished) + ".",
              "", "Machines: " + "; ".join(sorted({r["machine"] for r in finished})) + "."]
    untrained_tgc = {r["cell"]: tuple(r["untrained"][s]["tgc"] for s in splits) for r in finished}
    if len(set(untrained_tgc.values())) > 1:  # another machine's dtype (bf16 / fp32) can decode otherwise
        lines += ["", "The untrained team's TGC differs between cells (per split): "
                  + "; ".join(f"{cell} {values}" for cell, values in untrained_tgc.items()) + "; the row shows the first."]
    return "\n".join(lines) + "\n"


def _diagnostics_block(cells: dict[str, dict], recipes: list[str], seeds: list[int]) -> list[str]:
    table = render_diagnostics(cells, recipes, seeds)
    if not table:
        return []
    return ["", "Where the episodes fail, summed over the finished seeds and both splits:", "", table.rstrip("\n"), "",
            "\"The plan diverged\": the planner's sub-tasks up to the one the episode failed in differ (as text) from "
            "the task's ground-truth plan, so the planner chose wrong; otherwise the plan was right and the code "
            "failed. \"Failed executions\": code turns AppWorld answered with \"Execution failed\", by what the same "
            "conversation's next reply did (\"ran\": new code that then ran without error; the errors not in these "
            "three columns had no reply left: the budget ended the sub-task). \"Of kind\": each ground-truth "
            "plan step has a sub-task kind (the task family's: login, collect, filter, ...); an episode that failed "
            "in sub-task k counts against the kind of the true plan's step k (beyond_plan: past its last step), "
            "and as having reached every step up to k; the three kinds with the most failures are shown."]


def _round_note(record: dict) -> str:
    """An improve cell's rounds: success of the sampled train episodes and how many were kept."""
    return "".join(f" (round {i}: {r['sample_success']:.1f} % of sampled train episodes passed, {r['kept']} kept"
                   + (f", {record['training']['steps']} more optimizer steps" if i == len(record["improve"]) else "")
                   + (f"; fit of {record['fit'].removeprefix('reused from ')}" if i == 1 and
                      (record.get("fit") or "").startswith("reused") else "") + ")"
                   for i, r in enumerate(record.get("improve") or [], start=1))


def _worst_subtask(runs: list[dict], splits: list[str]) -> str:
    """The sub-task k with the largest share of failed trained episodes, pooled over seeds and splits."""
    totals: dict[str, float] = {}
    weight = sum(r["tasks"][s] for r in runs for s in splits)
    for r in runs:
        for s in splits:
            for k, rate in r["trained"][s]["subtask_error_rates"].items():
                totals[k] = totals.get(k, 0.0) + rate * r["tasks"][s]
    if not totals or not weight:
        return "-"
    k, total = max(totals.items(), key=lambda item: item[1])
    return f"k={k} ({100 * total / weight:.0f} %)"


def replace_block(readme: Path, table: str) -> bool:
    """Put ``table`` between the README's markers; False when it has none (the table file stands alone)."""
    text = readme.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_atomic(readme, f"{head}{start}\n{table}{end}{tail}")
    return True


def demo_table(
    out: str = "runs/demo_table",
    root: str = "worlds/mini",
    recipes: list[str] | None = None,
    seeds: list[int] | None = None,
    steps_per_epoch: int | None = None,
    summary: str = "results/demo_table.json",
    table: str = "results/demo_table.md",
    readme: str | None = "README.md",
    config: str = "experiments/demo.yaml",
    base_model: str = "smollm2",
    eval_scenarios: int | None = None,
    train_variants: int | None = None,
    fit_args: list[str] | None = None,
    pool_size: int = 10,
    dry_run: bool = False,
    report_only: bool = False,
) -> str:
    """Run every unfinished cell (recipe x seed) of the demo, then write the table.

    Args:
        out: parent of the cell folders (<out>/<recipe>_s<seed>/, each a `prost demo` output) and of
            the shared untrained evaluation (<out>/untrained/).
        root: mini-world root; built when missing.
        recipes: which of oracle | recovery | improve (default all, in this order; improve costs a
            sampling round of every train task on top of a recovery cell).
        seeds: the fit's seeds (LoRA initialisation and batch order; the teacher data is the same).
        steps_per_epoch: optimizer steps per epoch of every cell; null = every batch of every epoch.
        summary: the finished cells' summaries (JSON; commit it with the table so a later sitting
            resumes where this one stopped).
        table: where the markdown table goes.
        readme: a file whose `<!-- demo-table -->` ... `<!-- /demo-table -->` block gets the table too;
            null = none.
        config: the LightningCLI config of every cell's fit.
        base_model: smollm2 (the embedded SmolLM2-135M-Instruct) | tiny (a smoke run).
        eval_scenarios: evaluate the first N scenarios of each held-out split; null = every task.
        train_variants: train on N of the 3 variants of each train scenario; null = all.
        fit_args: extra `prost fit` arguments of every cell's fit.
        pool_size: AppWorld servers, i.e. episodes decoded together.
        dry_run: print what is finished and the commands of what is not; run nothing.
        report_only: run nothing; write the table from the finished cells.

    Returns:
        The table (markdown).
    """
    recipes = list(recipes or RECIPES)
    seeds = [0, 1, 2] if seeds is None else list(seeds)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not seeds:
        raise ConfigError(f"--recipes {unknown}: not one of {list(RECIPES)}" if unknown else "--seeds: give at least one seed")
    settings = {"steps_per_epoch": steps_per_epoch, "config": config, "base_model": base_model,
                "eval_scenarios": eval_scenarios, "train_variants": train_variants, "fit_args": list(fit_args or [])}
    summary_path, table_path, out_dir = Path(summary), Path(table), Path(out)
    for path, option in ((summary_path, "--summary"), (table_path, "--table")):
        check_writable(path, option)
    check_writable(out_dir, "--out", folder=True)
    if readme and not Path(readme).is_file():  # found now, not after hours of cells
        raise ConfigError(f"--readme {readme}: no such file; give the file whose <!-- demo-table --> block gets the "
                          "table (run from the repository root), or --readme null")
    cells = load_cells(summary_path, settings)
    filled = [] if dry_run else add_diagnostics(cells, out_dir, root)
    if filled:
        write_atomic(summary_path, json.dumps({"cells": cells}, indent=1) + "\n")
        print(f"[demo-table] failure diagnostics added from the episodes on disk: {', '.join(filled)}")
    command = " ".join(["prost demo-table", *sys.argv[2:]]) if sys.argv[1:2] == ["demo-table"] else "prost demo-table"
    todo = [(r, s) for r in recipes for s in seeds if cell_name(r, s) not in cells]
    print(f"[demo-table] {len(cells)} cells finished in {summary_path}; to run: "
          f"{', '.join(cell_name(r, s) for r, s in todo) or 'none'}")
    for recipe, seed in todo:
        folder = out_dir / cell_name(recipe, seed)
        run = demo_command(recipe, seed, folder, out_dir / "untrained", settings, root, pool_size,
                           fit_from=shared_fit(cells, out_dir, recipe, seed))
        if dry_run:
            print(f"[dry run] {show(run)}")
            continue
        if report_only:
            continue
        shutil.rmtree(folder, ignore_errors=True)  # whatever a killed attempt left is redone, not trusted
        commit = git_commit(outputs=[summary_path, table_path, *([readme] if readme else [])])  # the code the cell starts from
        _run(run, f"{cell_name(recipe, seed)}: prost demo", again="prost demo-table")
        report = json.loads((folder / "report.json").read_text())
        cells[cell_name(recipe, seed)] = cell_record(recipe, seed, settings, report, commit)
        write_atomic(summary_path, json.dumps({"cells": cells}, indent=1) + "\n")  # after each cell: resumable
    if dry_run:
        return ""
    rendered = render_table(cells, recipes, seeds, command)
    write_atomic(table_path, rendered)
    if readme and replace_block(Path(readme), rendered):
        print(f"[demo-table] table written to {table_path} and {readme}")
    print(rendered)
    return rendered
