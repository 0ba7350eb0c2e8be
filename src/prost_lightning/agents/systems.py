"""Agent systems: who talks to whom, and how each message is tagged with its sub-task.

Built in (the conversation conventions every system keeps, so rendering and masks work for all):

``single`` (role ``agent``), a ReAct code agent. One conversation:
[system(0), user(0): task], then per turn i: assistant = short thought + one ```python block,
user = "Output:\\n<observation>". **Tagging:** turn i (its reply and its observation) belongs to
sub-task ``min(i, K)``, K = number of steps of the task's ground-truth plan (1 when the task has
no plan, e.g. test splits). The oracle plays one plan step per turn, so its turns line up with the
plan exactly; a model that needs more turns has its extra turns counted in sub-task K. The
trajectory's ``subtasks`` are the task's plan. Budget: ``max_steps_per_subtask * K`` turns, capped
by ``max_env_steps``. A reply without code gets the user turn "Output:\\nNo ```python block ...".

``planner_executor`` (roles ``planner``, ``executor``). The planner's conversation:
[system(0), user(0): task], then assistant(k) = sub-task k, user(k) = "Report: <executor's
report>"; its finish line ("The task is finished.") is the final assistant turn, tagged K (the
number of sub-tasks it emitted). The executor has one conversation per sub-task k:
[system(0), user(k): task + sub-task k], assistant(k) code turns and user(k) "Output:" turns,
and a final assistant(k) report (its first reply without code). The trajectory's ``subtasks``
are the sub-tasks the planner emitted (with the code the executor ran for each). Budgets:
``max_subtasks`` planner steps; ``max_steps_per_subtask`` executor replies per sub-task (running
out ends the episode); once ``complete_task`` has been called, the executor's next reply is its
report and the planner's next reply ends the episode (kept only if it is the finish line).

Adding a system: subclass :class:`AgentSystem`, set ``roles``, write ``play(ep)`` with
``yield from ep.generate(...)`` / ``ep.execute(...)``, decorate with ``@register_system("name")``,
and add ``<role>_system.txt`` prompts for new roles (built-in folder or a ``prompt_dir``). A config
can then name it ``system: my_package.my_module:MySystem`` without touching this file; its roles
must be in ``model.roles``.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator
from typing import Any

from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import BUILTIN_SYSTEM_ROLES, Message, SubTask

from .episode import Episode, EpisodeStop, FailureReason
from .parsing import extract_code, is_finish

SYSTEMS: dict[str, type[AgentSystem]] = {}


def register_system(name: str):
    def decorate(cls):
        cls.name = name
        SYSTEMS[name] = cls
        return cls

    return decorate


def build_system(name: str) -> AgentSystem:
    """A registered system by name, or ``"package.module:ClassName"`` (imported, then registered)."""
    if name not in SYSTEMS and ":" in name:
        module, _, cls_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"system '{name}': cannot import it ({error})") from None
        if not (isinstance(cls, type) and issubclass(cls, AgentSystem)):
            raise ConfigError(f"system '{name}' is not an AgentSystem subclass")
        if "name" not in vars(cls):
            cls.name = name
        SYSTEMS[name] = cls
    try:
        return SYSTEMS[name]()
    except KeyError:
        raise ConfigError(f"system '{name}' is unknown; known systems: {sorted(SYSTEMS)} "
                          "(or give 'package.module:ClassName' of your own AgentSystem)") from None


def system_roles(name: str) -> tuple[str, ...]:
    return build_system(name).roles


def system_for_roles(roles) -> str | None:
    """The registered system whose roles are exactly ``roles`` (in any order); None when none is."""
    wanted = set(roles)
    return next((name for name, cls in SYSTEMS.items() if set(cls.roles) == wanted), None)


class AgentSystem:
    name = "abstract"
    roles: tuple[str, ...] = ()

    def play(self, ep: Episode) -> Generator[Any, Any, None]:
        raise NotImplementedError


def _user(content: str, subtask: int) -> Message:
    return Message(role="user", content=content, subtask=subtask)


def _assistant(content: str, subtask: int) -> Message:
    return Message(role="assistant", content=content, subtask=subtask)


@register_system("single")
class SingleAgent(AgentSystem):
    roles = BUILTIN_SYSTEM_ROLES["single"]

    def play(self, ep: Episode):
        plan = list(ep.task.plan)
        ep.subtasks = [SubTask(index=i + 1, description=s.description, code=s.code) for i, s in enumerate(plan)]
        k_total = max(1, len(plan))
        messages = ep.conversation("agent")
        messages.append(_user(ep.prompts.render("task", **ep.task_fields), 0))
        max_turns = min(ep.limits.max_env_steps, ep.limits.max_steps_per_subtask * k_total)
        for turn in range(1, max_turns + 1):
            tag = min(turn, k_total)
            ep.current_subtask = tag
            reply = yield from ep.generate("agent", messages, tag, turn, code_turn=True)
            messages.append(_assistant(reply, tag))
            code = extract_code(reply)
            ep.last_reply_had_code = code is not None
            if code is None:
                messages.append(_user(ep.observation_turn(ep.prompts.render("no_code")), tag))
                continue
            observation = yield from ep.execute(code)
            messages.append(_user(ep.observation_turn(observation), tag))
            if (yield from ep.check_completed()):
                return
        raise EpisodeStop(FailureReason.STEP_LIMIT)


@register_system("planner_executor")
class PlannerExecutor(AgentSystem):
    roles = BUILTIN_SYSTEM_ROLES["planner_executor"]

    def play(self, ep: Episode):
        planner = ep.conversation("planner")
        planner.append(_user(ep.prompts.render("task", **ep.task_fields), 0))
        k = 0
        while True:
            k += 1
            if k > ep.limits.max_subtasks:
                raise EpisodeStop(FailureReason.SUBTASK_LIMIT)
            ep.current_subtask = k
            text = yield from ep.generate("planner", planner, k, 1)
            if is_finish(text, ep.prompts.finish):
                if k == 1:  # finished before any sub-task: the trajectory still needs one
                    ep.subtasks.append(SubTask(index=1, description="(no sub-task)"))
                planner.append(_assistant(text, max(1, k - 1)))
                ep.current_subtask = max(1, k - 1)
                return
            if ep.completed:  # task already completed; a reply other than the finish line is dropped
                ep.current_subtask = k - 1
                return
            planner.append(_assistant(text, k))
            ep.subtasks.append(SubTask(index=k, description=text or "(empty)"))
            report = yield from self._solve_subtask(ep, k, text)
            planner.append(_user(ep.prompts.render("report", report=report), k))

    def _solve_subtask(self, ep: Episode, k: int, subtask: str):
        messages = ep.conversation("executor", subtask=k)
        messages.append(_user(ep.prompts.render("executor_task", index=k, subtask=subtask, **ep.task_fields), k))
        codes: list[str] = []
        for step in range(1, ep.limits.max_steps_per_subtask + 1):
            reply = yield from ep.generate("executor", messages, k, step, code_turn=True)
            messages.append(_assistant(reply, k))
            code = extract_code(reply)
            if code is None or ep.completed:  # the report (after completion, whatever comes next)
                ep.subtasks[k - 1].code = "\n".join(codes) or None
                return reply or "(empty report)"
            ep.last_reply_had_code = True
            observation = yield from ep.execute(code)
            codes.append(code)
            ep.subtasks[k - 1].code = "\n".join(codes)
            messages.append(_user(ep.observation_turn(observation), k))
            yield from ep.check_completed()
        raise EpisodeStop(FailureReason.STEP_LIMIT)
