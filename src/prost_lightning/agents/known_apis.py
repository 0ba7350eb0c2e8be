"""Decode only API names the world has: after ``apis.<app>.`` a code turn may write only that app's APIs.

    apis = KnownApis(load_api_names(root))              # {app: [api names]}
    apis.allows("x = apis.phone.", "search_alarms")     # False: phone has no such API
    banned = apis.banned(text_so_far, ranked_token_ids, piece)   # tokens a model policy must not pick

Small models invent API names from the patterns they were trained on (``phone.search_alarms``
for ``phone.show_alarms``, because other apps have ``search_*`` APIs); on the held-out tasks of
the results grid that was the most common first error of the team's executor. The policies that
decode locally (the local engine, plain ``generate``) take a request's ``known_apis`` and, at each
token, drop the likely candidates whose text would start or finish a name the app does not have:
a greedy pick is the most likely token that keeps the name real, a sampled one is drawn from the
likely tokens that do. Only the
``apis.<app>.<name>`` spelling is checked; an alias (``phone = apis.phone``) is not followed.
Pure Python: no torch, no AppWorld.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

# ``apis.`` not preceded by a name character or a dot, then the app and, after a second dot, the API
_API_NAME = re.compile(r"(?<![\w.])apis\.(\w*)(?:\.(\w*))?")
_OPEN_NAME = re.compile(r"(?<![\w.])apis\.(\w*)(?:\.(\w*))?$")  # text that ends inside a name
_LEAD = re.compile(r"\w*")
_WINDOW = 160  # characters before the new text that can hold the start of a name it continues

CANDIDATES = 64  # most likely tokens checked per step when sampling (greedy checks down to the first allowed)


class KnownApis:
    """The apps and APIs a world documents, as a check on text a model is about to write."""

    def __init__(self, names: Mapping[str, Iterable[str]]):
        self.names = {app: frozenset(apis) for app, apis in names.items()}

    def allows(self, before: str, piece: str) -> bool:
        """Whether appending ``piece`` to ``before`` keeps every ``apis.<app>.<name>`` it touches real.

        A name still being written must be the start of a real one; a name the piece ends (by a
        character that cannot continue it) must be a real one. Names that ended in ``before`` were
        checked when they were written.
        """
        start = max(0, len(before) - _WINDOW)
        text = (before + piece)[start:]
        boundary = len(before) - start
        for match in _API_NAME.finditer(text):
            if match.end() < boundary:
                continue
            app, api = match.group(1), match.group(2)
            finished = match.end() < len(text)
            if api is None:  # still at the app: ``apis.pho``
                if not (app in self.names if finished else any(a.startswith(app) for a in self.names)):
                    return False
            elif app not in self.names:
                return False
            elif not (api in self.names[app] if finished else any(n.startswith(api) for n in self.names[app])):
                return False
        return True

    def allowed_tokens(self, before: str, pieces: TokenPieces) -> list[int] | None:
        """Every token that may follow ``before`` when it ends inside a name (``apis.pho``,
        ``apis.phone.sh``); None when it does not (then a token can only break a name it writes whole,
        which ``banned`` checks on the likely ones)."""
        match = _OPEN_NAME.search(before[-_WINDOW:])
        if match is None:
            return None
        app, api = match.groups()
        if api is None:
            names, partial = self.names, app
        elif app in self.names:
            names, partial = self.names[app], api
        else:
            return None
        allowed: set[int] = set()
        for name in names:
            if not name.startswith(partial):
                continue
            tail = name[len(partial):]
            for k in range(len(tail) + 1):  # a piece whose word characters stay inside the name
                allowed.update(pieces.by_lead(tail[:k])[0])
            # a piece that finishes the name and goes on: what follows may open the next level
            allowed.update(t for t in pieces.by_lead(tail)[1] if self.allows(before, pieces(t)))
        return sorted(allowed)

    def banned(self, before: str, ranked: Iterable[int], piece: Callable[[int], str], *,
               first_allowed: bool) -> list[int]:
        """The tokens of ``ranked`` (most likely first) that ``allows`` refuses.

        ``first_allowed``: stop at the first allowed token (greedy picks it, so later ones do not
        matter); otherwise check them all (sampling may pick any).
        """
        out = []
        for token in ranked:
            if self.allows(before, piece(token)):
                if first_allowed:
                    break
            else:
                out.append(token)
        return out


class TokenPieces:
    """The text of each token alone, decoded once (end-of-turn tokens are empty), for ``banned``."""

    def __init__(self, tokenizer, stop_ids):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self._pieces: dict[int, str] = {}
        self._leads: dict[str, tuple[list[int], list[int]]] | None = None

    def __call__(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = "" if token in self.stop_ids else self.tokenizer.decode([token], skip_special_tokens=True)
        return self._pieces[token]

    def by_lead(self, lead: str) -> tuple[list[int], list[int]]:
        """The tokens whose text starts with the name characters ``lead``: (those that are only
        that, those where something else follows)."""
        if self._leads is None:
            self._leads = {}
            for token in range(len(self.tokenizer)):
                piece = self(token)
                head = _LEAD.match(piece).group()
                self._leads.setdefault(head, ([], []))[len(head) < len(piece)].append(token)
        return self._leads.get(lead, ([], []))

    def text(self, tokens: list[int]) -> str:
        """The reply so far, as the policies read it (end-of-turn tokens dropped)."""
        return self.tokenizer.decode([t for t in tokens if t not in self.stop_ids], skip_special_tokens=True)
