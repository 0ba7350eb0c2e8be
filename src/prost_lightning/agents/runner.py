"""Run many episodes concurrently on a server pool, batching generation per role.

    with ServerPool(root, size=4) as pool:
        trajectories = run_episodes("planner_executor", load_tasks(root, "dev"), pool,
                                    {"planner": p, "executor": e}, limits=Limits())

Up to ``concurrency`` (default: the pool size) episodes are alive at once, each on its own leased
server; env calls run in worker threads (each server is used by one thread at a time). Generation
runs in one of two ways:

* **continuously**, when every policy is a :class:`~prost_lightning.agents.policy.StreamingPolicy`
  (the local engine): each request is submitted as soon as its episode asks, and the policy
  decodes step by step; a reply that is done goes back to its episode at once, which makes its env
  call while the other rows keep decoding, and its next request joins the running batch. No
  episode waits for the longest reply of a round.
* **in rounds** otherwise: all pending env calls are started, meanwhile the pending requests are
  grouped by policy and each policy is called once with its whole group, then the env results are
  collected.

A finished episode frees its server for the next task. Nothing an episode does can raise out of
here: server faults, policy errors and bugs in the loop end that episode with a recorded
``failure_reason``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from prost_lightning.env.client import SERVER_FAULT, EnvError
from prost_lightning.env.runtime import load_preamble
from prost_lightning.env.tasks import TaskInfo, load_api_names, load_task, load_task_ids
from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import Trajectory

from .episode import CostModel, EnvCall, Episode, FailureReason, Limits
from .known_apis import KnownApis
from .policy import GenerationRequest, Policy, PolicyError, StreamingPolicy
from .prompts import PromptSet
from .systems import AgentSystem, build_system

log = logging.getLogger(__name__)

def load_tasks(root: str | Path, split: str | None = None, task_ids: Sequence[str] | None = None,
               max_tasks: int | None = None) -> list[TaskInfo]:
    """Tasks of a split (file order) or explicit ids, the first ``max_tasks`` of them."""
    if task_ids is None:
        if split is None:
            raise ConfigError("give a split (e.g. dev) or task_ids")
        task_ids = load_task_ids(root, split)
    ids = list(task_ids)[: max_tasks if max_tasks else None]
    return [load_task(root, t) for t in ids]


def start_pool(root, pool_size: int = 1, step_timeout_s: int = 30, log_dir: Path | None = None):
    """A ServerPool for ``root`` (not started: use it in a ``with``); AppWorldNotInstalled without AppWorld."""
    from prost_lightning.env.pool import ServerPool
    from prost_lightning.env.runtime import appworld_python

    appworld_python()  # fails before any server is spawned, with the one message that says how to install
    return ServerPool(root, size=pool_size, step_timeout_s=step_timeout_s, log_dir=log_dir)


@dataclass
class _Running:
    index: int
    episode: Episode
    gen: Any
    env: Any
    lease: Any
    pending: Any = None
    result: Trajectory | None = None
    done: bool = False
    in_flight: bool = False  # its pending request is with a worker thread or a streaming policy


def run_episodes(
    system: str | AgentSystem,
    tasks: Sequence[TaskInfo],
    pool,
    policies: Mapping[str, Policy],
    *,
    limits: Limits | None = None,
    prompts: PromptSet | None = None,
    cost: CostModel | None = None,
    teacher: str = "unknown",
    preamble: str | None = None,
    use_preamble: bool = True,
    concurrency: int | None = None,
    on_episode: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Play every task once; returns the trajectories in task order (``on_episode`` sees each as it ends)."""
    system = build_system(system) if isinstance(system, str) else system
    missing = [r for r in system.roles if r not in policies]
    if missing:
        raise ConfigError(f"system '{system.name}' needs a policy for role(s) {missing}; got {sorted(policies)}")
    if use_preamble and preamble is None:
        preamble = load_preamble()
    role_parameters = {r: policies[r].num_parameters for r in system.roles}
    limits = limits or Limits()
    known_apis = None
    if limits.known_apis_only:
        unable = sorted({p.name for p in policies.values() if not p.constrains_known_apis})
        if unable:
            raise ConfigError(f"limits.known_apis_only: the {', '.join(unable)} policy cannot restrict its decoding "
                              "to known API names; use engine hf or hf_generate, or set known_apis_only to false")
        known_apis = KnownApis(load_api_names(pool.root))
    new_episode = partial(Episode, system, prompts=prompts or PromptSet(), limits=limits, cost=cost,
                          role_parameters=role_parameters, preamble=preamble, teacher=teacher, known_apis=known_apis)
    play = _Play(tasks, pool, policies, new_episode, max(1, min(concurrency or pool.size, pool.size)), on_episode)
    with ThreadPoolExecutor(max_workers=play.width, thread_name_prefix="env") as threads:
        if all(isinstance(p, StreamingPolicy) for p in play.engines):
            _play_continuously(play, threads, play.engines)
        else:
            _play_in_rounds(play, threads)
    return [r for r in play.results if r is not None]


class _Play:
    """The state of one ``run_episodes`` call: tasks to start, episodes running, results in task order."""

    def __init__(self, tasks, pool, policies, new_episode, width: int, on_episode):
        self.pool = pool
        self.policies = policies
        self.new_episode = new_episode
        self.width = width
        self.on_episode = on_episode
        self.queue = deque(enumerate(tasks))
        self.running: list[_Running] = []
        self.results: list[Trajectory | None] = [None] * len(tasks)
        self.engines = list({id(p): p for p in policies.values()}.values())

    def start_episodes(self) -> None:
        # a server that failed to restart is gone for good: never wait for it
        while self.queue and len(self.running) < max(1, min(self.width, _live_servers(self.pool))):
            index, task = self.queue.popleft()
            episode = self.new_episode(task)
            lease = self.pool.lease()
            env = lease.__enter__()
            slot = _Running(index, episode, episode.run(), env, lease)
            _advance(slot, None)
            self.running.append(slot)

    def finish_done(self) -> None:
        for slot in [s for s in self.running if s.done]:
            self.running.remove(slot)
            self._finish(slot)

    def _finish(self, slot: _Running) -> None:
        for policy in self.engines:
            policy.release(slot.episode.key)
        try:
            slot.lease.__exit__(None, None, None)  # closes the world; restarts a failed server
        except Exception as error:  # the pool must not take the run down
            log.warning("releasing the server after %s failed: %s", slot.episode.task.task_id, error)
        ep = slot.episode
        if ep.error is not None:  # the trajectory keeps the reason; the log keeps the details
            log.warning("episode %s failed: %s: %s", ep.task.task_id, ep.error, ep.error_detail)
        if slot.result is not None:
            self.results[slot.index] = slot.result
            if self.on_episode is not None:
                self.on_episode(slot.result)


def _play_in_rounds(play: _Play, threads: ThreadPoolExecutor) -> None:
    """Every round: start all env calls, meanwhile one generate call per policy, then collect."""
    while play.queue or play.running:
        play.start_episodes()
        env_slots = [s for s in play.running if not s.done and isinstance(s.pending, EnvCall)]
        futures = [(s, threads.submit(_call_env, s.env, s.pending)) for s in env_slots]
        # one call per policy object: roles served by one engine share its batch
        by_policy: dict[int, list[_Running]] = {}
        for s in play.running:
            if not s.done and isinstance(s.pending, GenerationRequest):
                by_policy.setdefault(id(play.policies[s.pending.role]), []).append(s)
        for slots in by_policy.values():
            _generate(play.policies[slots[0].pending.role], slots)
        for s, future in futures:
            value, error = future.result()
            _advance(s, value, error)
        play.finish_done()


def _play_continuously(play: _Play, threads: ThreadPoolExecutor, engines: list[StreamingPolicy]) -> None:
    """Decode step by step; an episode whose reply is done goes to its env call, then rejoins the batch."""
    tickets: dict[tuple[int, int], _Running] = {}
    calls: dict[Future, _Running] = {}
    while play.queue or play.running:
        play.start_episodes()
        for s in play.running:
            if s.done or s.in_flight:
                continue
            s.in_flight = True
            if isinstance(s.pending, EnvCall):
                calls[threads.submit(_call_env, s.env, s.pending)] = s
            else:
                _submit(play.policies[s.pending.role], s, tickets)
        busy = [p for p in engines if p.busy]
        for policy in busy:
            _step(policy, tickets)
        if not busy and calls:
            wait(calls, return_when=FIRST_COMPLETED)
        elif not busy and tickets:  # a policy idle with requests outstanding lost them: never wait forever
            _fail_tickets(tickets, None, PolicyError("the policy went idle without answering"))
        for future in [f for f in calls if f.done()]:
            s = calls.pop(future)
            s.in_flight = False
            value, error = future.result()
            _advance(s, value, error)
        play.finish_done()


def _submit(policy: StreamingPolicy, slot: _Running, tickets: dict) -> None:
    try:
        tickets[(id(policy), policy.submit(slot.pending))] = slot
    except Exception as error:
        slot.in_flight = False
        _advance(slot, None, PolicyError(f"{policy.name}: {error!r}"))


def _step(policy: StreamingPolicy, tickets: dict) -> None:
    try:
        replies = policy.step()
    except Exception as error:  # every request in flight is dropped: their episodes fail
        with contextlib.suppress(Exception):
            policy.abort()
        failure = error if isinstance(error, PolicyError) else PolicyError(f"{policy.name}: {error!r}")
        log.warning("policy %s failed on a decode step: %s", policy.name, failure)
        _fail_tickets(tickets, policy, failure)
        return
    for ticket, generation in replies:
        slot = tickets.pop((id(policy), ticket))
        slot.in_flight = False
        _advance(slot, generation)


def _fail_tickets(tickets: dict, policy: StreamingPolicy | None, failure: PolicyError) -> None:
    """End the requests of ``policy`` (None: every policy) with ``failure``."""
    for key in [k for k in tickets if policy is None or k[0] == id(policy)]:
        slot = tickets.pop(key)
        slot.in_flight = False
        _advance(slot, None, failure)


def _live_servers(pool) -> int:
    stats = getattr(pool, "stats", None)
    return int(stats()["live"]) if stats else pool.size


def _call_env(env, call: EnvCall) -> tuple[Any, BaseException | None]:
    try:
        return getattr(env, call.method)(*call.args), None
    except EnvError as error:
        return None, error
    except Exception as error:  # anything else from the transport counts as a server fault
        return None, EnvError(SERVER_FAULT, f"{call.method}: {error!r}")


def _generate(policy: Policy, slots: list[_Running]) -> None:
    requests = [s.pending for s in slots]
    try:
        generations = policy.generate(requests)
        if len(generations) != len(requests):
            raise PolicyError(f"policy {policy.name} returned {len(generations)} replies for {len(requests)} requests")
    except Exception as error:
        failure = error if isinstance(error, PolicyError) else PolicyError(f"{policy.name}: {error!r}")
        log.warning("policy %s failed on a batch of %d: %s", policy.name, len(requests), failure)
        for s in slots:
            _advance(s, None, failure)
        return
    for s, generation in zip(slots, generations, strict=True):
        _advance(s, generation)


def _advance(slot: _Running, value: Any, error: BaseException | None = None) -> None:
    try:
        slot.pending = slot.gen.throw(error) if error is not None else slot.gen.send(value)
    except StopIteration as stop:
        slot.result, slot.pending, slot.done = stop.value, None, True
    except Exception as bug:  # a bug in the loop or an invalid trajectory: record it, go on
        log.exception("episode %s crashed", slot.episode.task.task_id)
        slot.pending, slot.done = None, True
        ep = slot.episode
        ep.error, ep.error_detail = FailureReason.INTERNAL_ERROR, repr(bug)[:500]
        try:
            ep.evaluation = None
            slot.result = ep.trajectory()
        except Exception:
            log.exception("no trajectory for %s", ep.task.task_id)
            slot.result = None
