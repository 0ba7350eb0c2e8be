"""The perturbing teacher: the oracle, but a share of its executor code steps start with a realistic mistake.

    policies = perturbing_policies(("planner", "executor"), share=0.3, seed=0)   # one object, every role
    prost collect --teacher oracle --perturb 0.3 --perturb_seed 0 ...          # the CLI form

For a perturbed sub-task the executor's first reply runs a wrong version of the plan step's code in
the real AppWorld engine, so the next user turn holds AppWorld's own error (or the wrong result);
its second reply is the correct step and its third the report. :meth:`PerturbingOracle.mark`
then flags the mistaken reply ``context_only`` (never trained: the model learns to read the error
and repair, not to make the mistake) and puts the plan's code back into the trajectory's sub-task.
Collection keeps the episode only when ``evaluate()`` passes, like every teacher episode.

Which sub-tasks are perturbed, and how, is a pure function of (seed, task id, sub-task): the same
seed gives the same data, whatever the order episodes finish in.

Perturbation kinds form a registry: a kind is a function ``(code, rng) -> wrong code | None``
(None: it does not apply to this step). Built in: ``wrong_api`` (a plausible API name of the same
app that does not exist, e.g. ``phone.search_alarms`` for ``phone.show_alarms``), ``no_pagination``
(one page instead of the ``collect`` loop), ``wrong_app`` (``login("notes")`` for simple_note), ``wrong_field`` (a wrong key of a returned record),
``wrong_argument`` (a wrong keyword argument name), ``unbound_variable`` (a name no earlier step
defined). Add one with :func:`register_perturbation`, or name a function ``package.module:function``
in ``perturb_kinds`` (imported and registered on first use).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import Trajectory

from .oracle import OraclePolicy
from .policy import GenerationRequest, Policy
from .prompts import PromptSet

Perturbation = Callable[[str, random.Random], "str | None"]
PERTURBATIONS: dict[str, Perturbation] = {}

# executor replies a perturbed sub-task needs: the mistake, the repair, the report
STEPS_NEEDED = 3


def register_perturbation(name: str):
    def decorate(fn: Perturbation) -> Perturbation:
        PERTURBATIONS[name] = fn
        return fn

    return decorate


def resolve_kinds(kinds: Sequence[str] | None) -> list[str]:
    """Registered kind names (all when None); ``package.module:function`` entries are imported."""
    if kinds is None:
        return list(PERTURBATIONS)
    for kind in kinds:
        if kind not in PERTURBATIONS and ":" in kind:
            module, _, name = kind.partition(":")
            try:
                register_perturbation(kind)(getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError) as error:
                raise ConfigError(f"perturb_kinds: cannot import '{kind}' ({error})") from None
    unknown = [k for k in kinds if k not in PERTURBATIONS]
    if unknown or not kinds:
        raise ConfigError(f"perturb_kinds: unknown kind(s) {unknown or '(none given)'}; known: {sorted(PERTURBATIONS)} "
                          "(or 'package.module:function' of your own)")
    return list(kinds)


# -- the built-in kinds ------------------------------------------------------------------------------
def _replace_one(code: str, matches: list[re.Match], rng: random.Random, wrong) -> str | None:
    """``code`` with one of ``matches`` (drawn by ``rng``) replaced by ``wrong(match)``; None without any."""
    if not matches:
        return None
    m = rng.choice(matches)
    return code[:m.start()] + wrong(m) + code[m.end():]


_API_CALL = re.compile(r"apis\.(\w+)\.([a-z]+)_(\w+)")
# a verb a small model confuses with the right one; the result names no API of the mini-world's apps
_VERB_SWAPS = {"show": "search", "search": "show", "create": "add", "add": "create", "delete": "remove",
               "update": "edit", "send": "post", "complete": "finish"}


@register_perturbation("wrong_api")
def wrong_api(code: str, rng: random.Random) -> str | None:
    calls = [m for m in _API_CALL.finditer(code) if m.group(2) in _VERB_SWAPS]
    return _replace_one(code, calls, rng, lambda m: f"apis.{m.group(1)}.{_VERB_SWAPS[m.group(2)]}_{m.group(3)}")


_COLLECT = re.compile(r"collect\((apis\.\w+\.\w+),\s*")
_ONE_PAGE = re.compile(r"^(\w+) = apis\.\w+\.\w+\([^()\n]*\)$")


@register_perturbation("no_pagination")
def no_pagination(code: str, rng: random.Random) -> str | None:
    """One call (the first page) where the ``collect`` loop reads every page; prints what it got."""
    if not _COLLECT.search(code):
        return None
    wrong = _COLLECT.sub(r"\1(", code, count=1)
    target = _ONE_PAGE.match(wrong)
    if target:
        wrong += f"\nprint(len({target.group(1)}))"  # the short page is the observation
    return wrong


_LOGIN = re.compile(r'login\("(\w+)"\)')
# the names instructions and other apps suggest for an app (AppWorld's accounts use the app id)
_APP_SWAPS = {"simple_note": "notes", "spotify": "music", "todoist": "todo", "phone": "contacts",
              "venmo": "payments", "gmail": "email", "supervisor": "profile"}


@register_perturbation("wrong_app")
def wrong_app(code: str, rng: random.Random) -> str | None:
    """A login to the app under another name (``login("notes")`` for simple_note): no such account."""
    logins = [m for m in _LOGIN.finditer(code) if m.group(1) in _APP_SWAPS]
    return _replace_one(code, logins, rng, lambda m: f'login("{_APP_SWAPS[m.group(1)]}")')


_FIELD = re.compile(r'\["(\w+)"\]')
_FIELD_SWAPS = {"title": "name", "name": "title", "label": "name", "relationships": "relationship",
                "email": "email_address", "phone_number": "phone", "amount": "value", "content": "text",
                "is_public": "public", "enabled": "is_enabled", "pinned": "is_pinned", "receiver": "recipient",
                "sender": "from"}


def _swap(name: str, table: Mapping[str, str]) -> str:
    return table.get(name, name[:-1] if name.endswith("s") else name + "s")


@register_perturbation("wrong_field")
def wrong_field(code: str, rng: random.Random) -> str | None:
    return _replace_one(code, list(_FIELD.finditer(code)), rng, lambda m: f'["{_swap(m.group(1), _FIELD_SWAPS)}"]')


_KEYWORD = re.compile(r"(?<=[(,\s])(\w+)=(?!=)")
_ARGUMENT_SWAPS = {"alarm_id": "id", "note_id": "id", "playlist_id": "id", "project_id": "id",
                   "contact_id": "id", "receiver_email": "email", "user_email": "email", "phone_number": "phone",
                   "email_addresses": "emails", "message": "text", "title": "name", "content": "body",
                   "body": "content", "answer": "result", "description": "note", "amount": "value"}


@register_perturbation("wrong_argument")
def wrong_argument(code: str, rng: random.Random) -> str | None:
    """A wrong keyword name in an API call (the access token is left alone: a different mistake)."""
    names = [m for m in _KEYWORD.finditer(code) if m.group(1) != "access_token" and "apis." in code[:m.start()]]
    return _replace_one(code, names, rng, lambda m: _swap(m.group(1), _ARGUMENT_SWAPS) + "=")


_NAME_SWAPS = {"matches": "match", "person": "contact", "transactions": "transaction"}
_KNOWN = set(dir(builtins)) | {"apis", "login", "collect", "x"}


@register_perturbation("unbound_variable")
def unbound_variable(code: str, rng: random.Random) -> str | None:
    """A variable an earlier step defined, misnamed (``access_token`` for ``phone_token``, ``match`` ...)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    loaded = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                    - stored - _KNOWN)
    if not loaded:
        return None
    name = rng.choice(loaded)
    wrong = "access_token" if name.endswith("_token") else _swap(name, _NAME_SWAPS)
    # the name as a variable only: not an attribute, a keyword name or inside a string
    return re.sub(rf'(?<![\w."]){name}\b(?!\s*=[^=]|")', wrong, code)


# -- the teacher ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mistake:
    kind: str
    reply: str  # the executor's mistaken reply (thought + wrong code)
    code: str  # the plan step's correct code


class PerturbingOracle(OraclePolicy):
    """The oracle whose executor starts ``share`` of its sub-tasks with a mistake (see the module doc)."""

    name = "oracle+perturb"

    def __init__(self, prompts: PromptSet | None = None, share: float = 0.3, kinds: Sequence[str] | None = None,
                 seed: int = 0):
        super().__init__(prompts)
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"perturb: {share} is not a share of code steps; give a number in [0, 1], e.g. 0.3")
        self.share, self.kinds, self.seed = share, resolve_kinds(kinds), seed
        self._played: dict[tuple[str, int], Mistake] = {}  # (task id, sub-task) -> the mistake played there

    def mistake(self, task_id: str, subtask: int, description: str, code: str) -> Mistake | None:
        """The mistake this sub-task starts with, or None: a function of (seed, task, sub-task) only."""
        rng = random.Random(f"{self.seed}:{task_id}:{subtask}")
        if rng.random() >= self.share:
            return None
        for kind in rng.sample(self.kinds, len(self.kinds)):
            wrong = PERTURBATIONS[kind](code, rng)
            if wrong and wrong.strip() != code.strip():
                return Mistake(kind, self.prompts.render("oracle_code", description=description, code=wrong), code)
        return None

    def _reply(self, request: GenerationRequest) -> str:
        view = request.view
        if request.role != "executor" or view is None or not view.task.plan or view.subtask > len(view.task.plan):
            return super()._reply(request)
        step = view.task.plan[view.subtask - 1]
        wrong = self.mistake(view.task.task_id, view.subtask, step.description, step.code)
        if wrong is None:
            return super()._reply(request)
        if view.step == 1:
            self._played[(view.task.task_id, view.subtask)] = wrong
            return wrong.reply
        if view.step == 2:
            return self.prompts.render("oracle_code", description=step.description, code=step.code)
        return self.prompts.render("oracle_report", description=step.description)

    def mark(self, trajectory: Trajectory) -> Trajectory:
        """A copy whose mistaken executor replies are ``context_only`` and whose sub-tasks hold the plan's code."""
        marked = trajectory.model_copy(deep=True)
        for conv in marked.conversations:
            mistake = self._played.get((marked.task_id, conv.subtask))
            replies = [m for m in conv.messages if m.role == "assistant"]
            if conv.role != "executor" or mistake is None or len(replies) < 2 or replies[0].content != mistake.reply:
                continue
            replies[0].context_only = True
            marked.subtasks[conv.subtask - 1].code = mistake.code  # the episode recorded mistake + repair
        return marked


def perturbing_policies(roles: Iterable[str], *, prompts: PromptSet | None = None, share: float = 0.3,
                        kinds: Sequence[str] | None = None, seed: int = 0,
                        max_steps_per_subtask: int = STEPS_NEEDED) -> dict[str, Policy]:
    """One :class:`PerturbingOracle` for every role; refuses systems and budgets it cannot play."""
    roles = tuple(roles)
    if max_steps_per_subtask < STEPS_NEEDED:
        raise ConfigError(f"limits.max_steps_per_subtask: {max_steps_per_subtask} leaves no room for a mistake, its "
                          f"repair and the report; give at least {STEPS_NEEDED} with --perturb")
    if "executor" not in roles:
        raise ConfigError(f"perturb: mistakes are played by the executor; the system's roles {list(roles)} have none "
                          "(use --system planner_executor, or --perturb 0)")
    teacher = PerturbingOracle(prompts, share, kinds, seed)
    return {r: teacher for r in roles}


def mark_mistakes(trajectory: Trajectory, policies: Mapping[str, Policy]) -> Trajectory:
    """The trajectory with the mistakes of any perturbing teacher among ``policies`` marked context-only."""
    for policy in {id(p): p for p in policies.values()}.values():
        if isinstance(policy, PerturbingOracle):
            trajectory = policy.mark(trajectory)
    return trajectory
