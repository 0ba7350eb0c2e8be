"""make sweep: grid expansion, the config and commands of each point, dry runs, the W&B sweep twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prost_lightning.cli import lightning_main
from prost_lightning.sweep import (
    ROLLOUT_CLASS,
    SweepError,
    collect_commands,
    expand_grid,
    load_spec,
    point_config,
    set_dotted,
    show,
    sweep,
)

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.yaml"
WANDB_SWEEP = ROOT / "experiments" / "wandb_sweep.yaml"


@pytest.fixture()
def spec(monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep file names experiment YAMLs relative to the repository
    return load_spec(SWEEP)


def test_core_grid_is_systems_times_schedules(spec):
    points = expand_grid(spec, "cpu")
    assert [p.name for p in points] == ["single_progressive", "single_full",
                                        "planner_executor_progressive", "planner_executor_full"]
    assert {p.base_model for p in points} == {"smollm2"}
    assert all(p.overrides == {"data.schedule.name": p.schedule} for p in points)


def test_ablations_are_behind_the_flag(spec):
    points = {p.name: p for p in expand_grid(spec, "cpu", ablations=True)}
    ablations = {n: p for n, p in points.items() if p.variant}
    assert set(ablations) == {f"planner_executor_{v}" for v in ("reverse", "random", "length", "mask", "shared_adapter")}
    assert ablations["planner_executor_mask"].overrides == {"data.schedule.name": "progressive", "data.mode": "mask"}
    assert ablations["planner_executor_random"].schedule == "random"
    assert ablations["planner_executor_shared_adapter"].overrides["model.shared_adapter"] is True


def test_several_base_models_name_their_points(spec):
    points = expand_grid(spec, "gpu")
    assert len(points) == 8 and "planner_executor_full_qwen25-15b-instruct" in {p.name for p in points}
    with pytest.raises(SweepError, match="choose one of cpu"):
        expand_grid(spec, "huge")


def test_point_config_applies_size_point_and_run_folder(spec, tmp_path):
    point = next(p for p in expand_grid(spec, "tiny") if p.name == "planner_executor_full")
    config = point_config(spec, point, "tiny", tmp_path / "run", wandb=True, group="prost-tiny")
    assert config["model"]["base_model"] == "tiny" and config["data"]["schedule"]["name"] == "full"
    assert config["data"]["train_file"] == "runs/trajectories/planner_executor_train.jsonl"
    assert config["data"]["val_file"] == "runs/trajectories/planner_executor_dev.jsonl"
    assert config["trainer"]["default_root_dir"] == str(tmp_path / "run")
    assert config["trainer"]["max_epochs"] == 2 and config["trainer"]["limit_train_batches"] == 3
    rollout = next(c for c in config["trainer"]["callbacks"] if c["class_path"] == ROLLOUT_CLASS)["init_args"]
    assert rollout["max_tasks"] == 2 and rollout["root"] == "worlds/mini" and rollout["limits"]["max_new_tokens"] == 24
    csv, wandb = config["trainer"]["logger"]
    assert csv["init_args"]["save_dir"] == str(tmp_path / "run")  # the first logger decides the run folder
    assert wandb["init_args"]["group"] == "prost-tiny" and "full" in wandb["init_args"]["tags"]
    # the base YAML on disk is untouched
    assert yaml.safe_load((ROOT / "experiments/planner_executor_progressive.yaml").read_text())["data"]["schedule"]["name"] == "progressive"


def test_point_config_instantiates_with_the_real_cli(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    point = next(p for p in expand_grid(spec, "tiny", ablations=True) if p.name == "planner_executor_shared_adapter")
    config = point_config(spec, point, "tiny", tmp_path / "run")
    path = tmp_path / "point.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = lightning_main(["--config", str(path), "--trainer.logger", "false"], run=False)
    assert cli.model.shared_adapter and cli.model.roles == ["planner", "executor"]
    assert cli.datamodule.schedule.name == "progressive" and cli.trainer.max_epochs == 2
    assert any(type(c).__name__ == "RolloutCallback" and c.max_tasks == 2 for c in cli.trainer.callbacks)


def test_set_dotted_errors_without_a_rollout_callback():
    config = {"trainer": {}}
    set_dotted(config, "model.lora.r", 4)
    assert config["model"] == {"lora": {"r": 4}}
    with pytest.raises(SweepError, match="RolloutCallback"):
        set_dotted(config, "rollout.max_tasks", 2)


def test_collect_commands_once_per_system_and_split(spec):
    commands = [show(c) for c in collect_commands(spec, ["single", "planner_executor"])]
    assert commands[0] == ("prost collect --teacher oracle --system single --split train --root worlds/mini "
                           "--out runs/trajectories/single_train.jsonl --pool_size 2 --progress false")
    assert len(commands) == 4 and commands[-1].count("planner_executor_dev.jsonl") == 1


def test_dry_run_plans_everything_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    result = sweep(grid=str(SWEEP), size="tiny", ablations=True, out=str(tmp_path), dry_run=True)
    assert [p["status"] for p in result["points"]] == ["planned"] * 9 and result["report"] is None
    assert result["points"][0]["command"] == f"prost fit --config {tmp_path}/tiny/single_progressive/point.yaml"
    assert not any(tmp_path.iterdir())
    printed = capsys.readouterr().out
    assert printed.count("[dry run] prost collect") == 4 and printed.count("[dry run] prost fit") == 9
    with pytest.raises(SweepError, match="not in the grid"):
        sweep(grid=str(SWEEP), size="tiny", only=["nope"], dry_run=True)


def test_bad_sweep_files_name_the_key(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("name: x\nsystems: {single: a.yaml}\nschedules: [full]\nsizes: {cpu: {base_models: [tiny]}}\ngrid: 1\n")
    with pytest.raises(SweepError, match=r"unknown key\(s\) \['grid'\]"):
        load_spec(bad)
    bad.write_text("name: x\nsystems: {single: a.yaml}\nschedules: [full]\nsizes: {cpu: {}}\n")
    with pytest.raises(SweepError, match="sizes.cpu.base_models"):
        load_spec(bad)
    with pytest.raises(SweepError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


def test_wandb_sweep_is_the_same_core_grid(spec):
    wandb_sweep = yaml.safe_load(WANDB_SWEEP.read_text())
    assert WANDB_SWEEP.read_text().startswith("#")
    assert wandb_sweep["method"] == "grid" and wandb_sweep["program"] == "prost"
    assert wandb_sweep["command"][-1] == "${args}" and "experiments/loggers/wandb.yaml" in wandb_sweep["command"]
    params = wandb_sweep["parameters"]
    assert sorted(params["config"]["values"]) == sorted(spec["systems"].values())
    assert params["data.schedule.name"]["values"] == spec["schedules"]
    assert params["model.base_model"]["value"] == spec["sizes"]["cpu"]["base_models"][0]
    cpu = spec["sizes"]["cpu"]["overrides"]
    for key in ("trainer.max_epochs", "trainer.limit_train_batches", "trainer.limit_val_batches", "data.schedule.step"):
        assert params[key]["value"] == cpu[key]


def test_wandb_sweep_command_composes_with_the_cli(monkeypatch, tmp_path):
    """What an agent runs: the logger fragment, then --key=value args in sorted order."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "offline")
    params = yaml.safe_load(WANDB_SWEEP.read_text())["parameters"]
    chosen = {k: (v["values"][-1] if "values" in v else v["value"]) for k, v in params.items()}
    chosen["model.base_model"] = "tiny"  # no model download in tests
    args = [f"--{k}={v}" for k, v in sorted(chosen.items())]
    cli = lightning_main(["--config", "experiments/loggers/wandb.yaml", *args], run=False)
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["CSVLogger", "ProstWandbLogger"]
    assert cli.datamodule.schedule.name == "full" and cli.model.roles == ["planner", "executor"]
    assert cli.trainer.max_epochs == 3 and cli.datamodule.schedule.step == 2


def test_command_line_dry_run_reads_the_given_grid(tmp_path):
    import subprocess
    import sys

    grid = tmp_path / "grid.yaml"
    spec = yaml.safe_load(SWEEP.read_text())
    spec.update(root="elsewhere/world", trajectories=str(tmp_path / "{system}-{split}.jsonl"), schedules=["full"])
    grid.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "prost_lightning.sweep", "--grid", str(grid), "--size", "tiny",
                          "--out", str(tmp_path / "runs"), "--dry_run", "true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--root elsewhere/world" in out.stdout and f"{tmp_path}/single-train.jsonl" in out.stdout
    assert out.stdout.count("[dry run] prost fit") == 2  # 2 systems x 1 schedule
    bad = subprocess.run([sys.executable, "-m", "prost_lightning.sweep", "--size", "huge", "--dry_run", "true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "choose one of cpu" in bad.stderr and "Traceback" not in bad.stderr


def test_seeds_repeat_the_core_grid_and_bad_seeds_name_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load(SWEEP.read_text())
    path = tmp_path / "seeded.yaml"
    path.write_text(yaml.safe_dump({**spec, "seeds": [3, 4]}, sort_keys=False))
    points = expand_grid(load_spec(path), "cpu", ablations=True)
    core = [p.name for p in points if not p.variant]
    assert core[:2] == ["single_progressive_s3", "single_progressive_s4"] and len(core) == 8
    assert {p.seed for p in points if p.variant} == {3}  # ablations once, at the first seed
    assert points[1].overrides["seed_everything"] == 4 and points[1].overrides["data.seed"] == 4
    assert all(p.seed is None for p in expand_grid(load_spec(SWEEP), "cpu"))  # no seeds: the YAML's own
    for bad in ([1, 1], [], ["0"], 2):
        path.write_text(yaml.safe_dump({**spec, "seeds": bad}))
        with pytest.raises(SweepError, match="seeds: expected a list of distinct integers"):
            load_spec(path)
