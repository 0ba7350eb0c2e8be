"""Draft tokens for the engine's decode steps: what followed the same few tokens before.

A decode step may feed, after a row's next token, a guess of the tokens that follow it; the model's
own pick at every fed position says how much of the guess to keep, so a good guess saves forward
passes and a bad one costs only the extra positions of that pass (the reply is unchanged). Agents
repeat themselves, so the guess is a lookup, not a model: find an earlier occurrence of the row's
last n tokens and propose what came after it. Two places are searched:

- the row's own context (prompt lookup): API names, arguments and its own earlier code;
- the replies the same adapter (role) finished before, in any episode: episodes of one task
  family write the same code with other names and values, so one episode's reply drafts the next.

Each place proposes what followed an earlier occurrence of the row's last 3 (else 2) tokens: of its
latest few occurrences, the one preceded by more of the row's tokens (an earlier reply that agrees
with the row's whole reply so far, from its first token, ranks first); between the places, again
the longer match, the row's own context at equal length.
"""

from __future__ import annotations

NGRAMS = (3, 2)
OCCURRENCES = 4  # latest occurrences of an n-gram kept, to choose among
MATCH_CAP = 32  # tokens compared backwards to rank candidate drafts
SEPARATOR = -1  # between replies in a reply index: no n-gram or draft crosses it
REPLY_INDEX_TOKENS = 65_536  # a reply index past this many tokens starts again empty


class NgramIndex:
    """Where each n-gram of a growing token list occurred lately (indexed lazily, as the list grows)."""

    def __init__(self, tokens: list[int] | None = None):
        self.tokens = tokens if tokens is not None else []  # shared, not copied: the owner appends to it
        self._follows: dict[tuple[int, ...], list[int]] = {}  # n-gram -> index of the token after each latest occurrence
        self._indexed = 0

    def follow(self, tail: list[int], limit: int, reply_start: int | None = None) -> tuple[int, list[int]]:
        """(match, up to ``limit`` tokens that followed an earlier occurrence of ``tail``'s last n tokens).

        Of the latest ``OCCURRENCES`` occurrences, the one preceded by more of ``tail``'s tokens wins,
        then the one with the longer guess. ``match`` is how many tokens there equal the end of
        ``tail`` (at least n, at most ``MATCH_CAP``; the longer, the likelier the guess). (0, []) when
        none of ``NGRAMS`` occurred. The list's own last n-gram counts only at an earlier position, so an index of a row's context
        proposes what followed it before. ``reply_start``: where the row's reply begins in ``tail``;
        an earlier reply that agrees with all of it, from its first token, ranks highest (``MATCH_CAP``).
        """
        tokens = self.tokens
        for end in range(max(self._indexed, 1), len(tokens)):  # n-gram tokens[end-n:end] was followed by tokens[end]
            for n in NGRAMS:
                if end >= n:
                    ends = self._follows.setdefault(tuple(tokens[end - n:end]), [])
                    ends.append(end)
                    if len(ends) > OCCURRENCES:
                        del ends[0]
        self._indexed = len(tokens)
        for n in NGRAMS:
            if len(tail) < n:
                continue
            best, best_match = [], 0
            for end in reversed(self._follows.get(tuple(tail[-n:]), ())):
                guess = tokens[end:end + limit]
                if SEPARATOR in guess:
                    guess = guess[:guess.index(SEPARATOR)]
                match = n
                while match < min(MATCH_CAP, end, len(tail)) and tokens[end - match - 1] == tail[-match - 1]:
                    match += 1
                if len(tail) - match == reply_start and (end == match or tokens[end - match - 1] == SEPARATOR):
                    match = MATCH_CAP  # the same reply so far, from its first token
                if guess and (match, len(guess)) > (best_match, len(best)):  # a run's latest occurrence has no future
                    best, best_match = guess, match
            if best:
                return best_match, best
        return 0, []


class ReplyIndex(NgramIndex):
    """The finished replies of one adapter, one after the other (bounded: ``REPLY_INDEX_TOKENS``)."""

    def add(self, reply: list[int]) -> None:
        if len(self.tokens) + len(reply) >= REPLY_INDEX_TOKENS:
            self.tokens.clear()
            self._follows.clear()
            self._indexed = 0
        self.tokens.extend(reply)
        self.tokens.append(SEPARATOR)


def draft(context: NgramIndex, replies: ReplyIndex | None, limit: int, reply_start: int | None = None) -> list[int]:
    """Up to ``limit`` guessed tokens after ``context``'s last token (see the module docstring);
    ``reply_start``: where the row's reply begins in its context."""
    if limit <= 0:
        return []
    own_n, own = context.follow(context.tokens, limit)
    if replies is None:
        return own
    other_n, other = replies.follow(context.tokens, limit, reply_start)
    return other if other_n > own_n else own
