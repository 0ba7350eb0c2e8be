"""RolloutCallback: the trained roles play AppWorld episodes during validation.

Every ``every_n_epochs`` validation runs of a fit (sanity check excluded), and in every
``prost validate`` (e.g. ``--ckpt_path``: evaluation of a trained system), on global rank 0 only, the
system plays the configured tasks through a pool of AppWorld servers with the module's own
model: each role generates with its LoRA adapter active (greedy, batched across concurrent
episodes). It logs (``rank_zero_only``):

* ``rollout/tgc``, ``rollout/sgc``, ``rollout/{tgc,sgc}_difficulty_<d>``, ``rollout/episodes``;
* per-episode means: ``rollout/llm_calls`` (and ``/<role>``), ``rollout/prompt_tokens/<role>``,
  ``rollout/completion_tokens/<role>``, ``rollout/flops``, ``rollout/cost``, ``rollout/env_steps``,
  ``rollout/wall_time_s``; ``rollout/total_time_s`` for the whole rollout;
* ``rollout/failures/<reason>``: episodes per failure reason (agents.FailureReason; all present, 0 or more);
* ``rollout/error``: 1 when the rollout itself could not run (it is then skipped, training goes on).

Every episode is written to ``<run dir>/rollouts/epoch_<n>.jsonl`` (trajectory schema, atomic
write); with a WandbLogger, a table ``rollout/episodes`` too. The server pool (and, with
``engine: vllm``, the inference server) is started at the first rollout and stopped at teardown.
"""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

from prost_lightning.agents import CostModel, Limits, PromptSet, load_tasks, run_episodes, system_roles
from prost_lightning.agents.episode_summary import episode_progress, flat_metrics, format_summary, summarize
from prost_lightning.agents.factory import LOCAL_ENGINES, model_policies
from prost_lightning.errors import ConfigError
from prost_lightning.rundir import run_dir
from prost_lightning.trajectory import Trajectory, write_trajectories

log = logging.getLogger(__name__)


class RolloutCallback(Callback):
    def __init__(
        self,
        root: str = "worlds/mini",
        system: str = "planner_executor",
        split: str | None = "dev",
        task_ids: list[str] | None = None,
        max_tasks: int | None = 8,
        every_n_epochs: int = 1,
        pool_size: int = 1,
        limits: Limits | None = None,
        prices: dict[str, list[float]] | None = None,
        max_batch_size: int = 8,
        engine: str = "hf",
        serve_args: list[str] | None = None,
        serve_env: dict[str, str] | None = None,
        prompt_dir: str | None = None,
        tools: str = "miniworld",
        step_timeout_s: int = 20,
        progress: bool = True,
    ):
        """Play episodes during validation and log goal completion and cost.

        Args:
            root: AppWorld data root (``prost world build --root DIR`` makes the mini-world).
            system: agent system: single | planner_executor (its roles must be model.roles).
            split: split to play (dev by default; never tune on test splits).
            task_ids: explicit task ids instead of a split.
            max_tasks: play only the first N tasks (None: all).
            every_n_epochs: run every N validation runs.
            pool_size: AppWorld servers = episodes played concurrently (generation is batched across them).
            limits: episode budgets (sub-tasks, steps per sub-task, tokens per call, env steps).
            prices: {role: [USD per 1k prompt tokens, USD per 1k completion tokens]} for rollout/cost.
            max_batch_size: rows generated together (all roles share one batch with ``engine: hf``).
            engine: hf (in-process, prefix caches, one mixed-adapter batch for all roles) |
                hf_generate (plain ``generate`` per role, the reference path) | vllm (a managed
                vLLM server, `make serve-venv`: each rollout exports the current adapters and
                loads them at runtime under a versioned name, unloading the previous ones).
            serve_args: engine vllm: more vLLM arguments, e.g. [--gpu-memory-utilization, "0.3"]
                to share the training GPU.
            serve_env: engine vllm: environment of the server alone, e.g. {CUDA_VISIBLE_DEVICES: "1"}
                to give it its own GPU.
            prompt_dir: folder whose .txt files replace the built-in prompts of the same name.
            tools: tool sheet in the prompts: miniworld | appworld.
            step_timeout_s: AppWorld's limit per code execution.
            progress: show a rich progress bar over episodes (skipped while another live display runs).
        """
        super().__init__()
        if every_n_epochs < 1:
            raise ConfigError(f"RolloutCallback.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.root = root
        self.system = system
        self.split = split
        self.task_ids = task_ids
        self.max_tasks = max_tasks
        self.every_n_epochs = every_n_epochs
        self.pool_size = pool_size
        self.limits = limits or Limits()
        self.cost = CostModel(prices={k: tuple(v) for k, v in (prices or {}).items()})
        self.max_batch_size = max_batch_size
        if engine not in (*LOCAL_ENGINES, "vllm"):
            raise ConfigError(f"RolloutCallback.engine: '{engine}' is unknown; use one of {(*LOCAL_ENGINES, 'vllm')}")
        self.engine = engine
        self.serve_args = list(serve_args or [])
        self.serve_env = dict(serve_env or {})
        self.prompts = PromptSet(prompt_dir, tools=tools)
        self.step_timeout_s = step_timeout_s
        self.progress = progress
        self.validation_runs = 0
        self.last_summary: dict | None = None
        self._pool = None
        self._tasks = None
        self._server = None  # engine vllm: started at the first rollout, stopped at teardown

    # -- set-up: fail early on configuration mistakes ---------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        roles = system_roles(self.system)
        module_roles = getattr(pl_module, "roles", None)
        if module_roles is not None:
            missing = [r for r in roles if r not in module_roles]
            if missing:
                raise ConfigError(f"RolloutCallback.system '{self.system}' needs role(s) {missing}, "
                                  f"but model.roles is {list(module_roles)}")
        if trainer.is_global_zero:
            from prost_lightning.env.runtime import appworld_python
            from prost_lightning.env.tasks import require_world_root

            require_world_root(self.root)
            appworld_python()
            if self.engine == "vllm":
                from prost_lightning.serving import serve_python

                serve_python()  # a missing serving venv fails the fit now, not at the first rollout
            self._tasks = load_tasks(self.root, self.split, self.task_ids, self.max_tasks)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop_servers()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop_servers()

    def state_dict(self) -> dict:
        return {"validation_runs": self.validation_runs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validation_runs = int(state_dict.get("validation_runs", 0))

    # -- the rollout ------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validation_runs += 1
        # `prost validate` always plays; during fit, every N validation runs
        if trainer.state.fn != "validate" and self.validation_runs % self.every_n_epochs != 0:
            return
        if trainer.is_global_zero:
            metrics = self._rollout_metrics(trainer, pl_module)
            for name, value in metrics.items():
                pl_module.log(name, value, rank_zero_only=True, on_epoch=True, on_step=False)
        trainer.strategy.barrier("rollout")

    def _rollout_metrics(self, trainer, pl_module) -> dict[str, float]:
        started = time.monotonic()
        try:
            trajectories = self.run(trainer, pl_module)
        except Exception as error:  # a broken rollout must never stop training
            log.exception("rollout skipped: %s", error)
            return {"rollout/error": 1.0}
        summary = summarize(trajectories)
        self.last_summary = summary
        metrics = flat_metrics(summary)
        metrics["rollout/total_time_s"] = time.monotonic() - started
        metrics["rollout/error"] = 0.0
        log.info(format_summary(summary, title=f"rollout epoch {trainer.current_epoch}"))
        return metrics

    def run(self, trainer, pl_module) -> list[Trajectory]:
        """Play the tasks with the module's model; writes rollouts/epoch_<n>.jsonl and a W&B table."""
        if self._tasks is None:
            self._tasks = load_tasks(self.root, self.split, self.task_ids, self.max_tasks)
        roles = system_roles(self.system)
        epoch = trainer.current_epoch
        if self.engine == "vllm":
            policies = self._served_policies(trainer, pl_module, roles, epoch)
        else:
            policies = model_policies(pl_module.model, pl_module.tokenizer, roles, pl_module.adapter_name,
                                      num_parameters=getattr(pl_module, "num_base_parameters", None),
                                      max_batch_size=self.max_batch_size, engine=self.engine)
        pool = self._ensure_pool(trainer)
        trajectories: list[Trajectory] = []
        with episode_progress(len(self._tasks), f"rollout {self.system} epoch {epoch}", self.progress) as bar:
            def seen(trajectory: Trajectory) -> None:
                bar.advance(trajectory)
                trajectories.append(trajectory)

            run_episodes(self.system, self._tasks, pool, policies, limits=self.limits, prompts=self.prompts,
                         cost=self.cost, teacher=f"rollout:epoch_{epoch}", on_episode=seen)
        order = {t.task_id: i for i, t in enumerate(self._tasks)}
        trajectories.sort(key=lambda t: order.get(t.task_id, 0))
        write_trajectories(run_dir(trainer) / "rollouts" / f"epoch_{epoch}.jsonl", trajectories)
        self._log_table(trainer, epoch, trajectories)
        return trajectories

    def _ensure_pool(self, trainer):
        if self._pool is None:
            from prost_lightning.env.pool import ServerPool

            self._pool = ServerPool(self.root, size=self.pool_size, step_timeout_s=self.step_timeout_s,
                                    experiment_name="prost-rollout",
                                    log_dir=run_dir(trainer) / "rollouts" / "servers").start()
        return self._pool

    def _served_policies(self, trainer, pl_module, roles, epoch: int) -> dict:
        """Export the adapters as they are now, swap them into the server under ``<adapter>-v<n>``
        (n = this validation run: names never repeat, so a stale adapter is never served)."""
        from prost_lightning.backbone import resolve
        from prost_lightning.serving import InferenceServer

        folder = run_dir(trainer) / "rollouts" / "adapters" / f"epoch_{epoch}"
        exported = pl_module.export_adapters(folder)
        if self._server is None:
            self._server = InferenceServer(resolve(pl_module.hparams.base_model), extra_args=self.serve_args,
                                           env=self.serve_env,
                                           log_path=run_dir(trainer) / "rollouts" / "vllm.log").start()
        previous = list(self._server.adapters)
        for adapter, path in exported.items():
            self._server.load_adapter(f"{adapter}-v{self.validation_runs}", path)
        for name in previous:
            self._server.unload_adapter(name)
        return self._server.policies({r: f"{pl_module.adapter_name(r)}-v{self.validation_runs}" for r in roles},
                                     num_parameters=getattr(pl_module, "num_base_parameters", None))

    def _stop_servers(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    @staticmethod
    def _log_table(trainer, epoch: int, trajectories: list[Trajectory]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        columns = ["epoch", "task_id", "difficulty", "success", "failure_reason", "failed_subtask",
                   "llm_calls", "tokens", "env_steps", "wall_time_s", "last_reply"]
        rows = []
        for t in trajectories:
            outcome, usage = t.outcome, t.usage
            replies = [m.content for c in t.conversations for m in c.messages if m.role == "assistant"]
            rows.append([epoch, t.task_id, t.difficulty, bool(outcome and outcome.success),
                         outcome.failure_reason if outcome else None, outcome.failed_subtask if outcome else None,
                         sum(usage.llm_calls.values()),
                         sum(usage.prompt_tokens.values()) + sum(usage.completion_tokens.values()),
                         usage.env_steps, usage.wall_time_s, (replies[-1] if replies else "")[:500]])
        for lg in loggers:
            try:
                lg.log_table(key="rollout/episodes", columns=columns, data=rows)
            except Exception as error:  # W&B trouble must not stop training
                log.warning("W&B rollout table not logged: %s", error)
