"""Draft lookup (pure): what a row's own context and its role's earlier replies propose."""

from prost_lightning.agents.drafts import (
    MATCH_CAP,
    REPLY_INDEX_TOKENS,
    SEPARATOR,
    NgramIndex,
    ReplyIndex,
    draft,
)


def test_own_context_proposes_what_followed_its_last_ngram_before():
    context = NgramIndex([1, 2, 3, 4, 5, 9, 1, 2, 3])
    assert context.follow(context.tokens, 4) == (3, [4, 5, 9, 1])  # "1 2 3" matched: 3 tokens
    context.tokens.append(7)  # the owner appends; the index catches up on the next lookup
    assert context.follow(context.tokens, 4) == (0, [])  # "2 3 7" and "3 7" never occurred before
    context.tokens.extend([1, 2])
    assert context.follow(context.tokens, 2) == (2, [3, 7])  # the latest earlier "1 2" (not the first)


def test_replies_draft_a_row_whose_own_context_has_no_match():
    replies = ReplyIndex()
    replies.add([10, 11, 12, 13, 14])  # another episode's reply of the same role
    replies.add([20, 21, 22])
    row = NgramIndex([50, 51, 10, 11, 12])
    assert draft(row, replies, 3) == [13, 14]  # cut at the end of that reply: no draft crosses replies
    assert draft(row, None, 3) == []  # own context only: nothing to propose
    assert SEPARATOR not in draft(NgramIndex([7, 21, 22]), replies, 5)


def test_a_longer_match_wins_and_the_rows_own_context_wins_ties():
    replies = ReplyIndex()
    replies.add([1, 2, 3, 40, 41])
    own_bigram = NgramIndex([2, 3, 30, 31, 1, 2, 3])  # own context knows only "2 3" -> 30; replies know "1 2 3" -> 40
    assert draft(own_bigram, replies, 2) == [40, 41]
    own_trigram = NgramIndex([1, 2, 3, 30, 31, 1, 2, 3])
    assert draft(own_trigram, replies, 2) == [30, 31]
    assert draft(own_trigram, replies, 0) == []
    # a reply repeating an earlier one matches it back to its start, beyond the row's own repetitions
    replies.add([7, 8, 9, 5, 6, 5, 6, 5, 20])
    row = NgramIndex([100, 7, 8, 9, 5, 6, 5, 6, 5])
    assert row.follow(row.tokens, 2) == (3, [6, 5])  # own: the earlier "5 6 5", 3 tokens
    assert replies.follow(row.tokens, 2) == (8, [20])  # the earlier reply: all 8 tokens so far
    assert draft(row, replies, 2) == [20]


def test_the_reply_index_stays_bounded():
    replies = ReplyIndex()
    chunk = list(range(1000))
    for _ in range(REPLY_INDEX_TOKENS // len(chunk) + 3):
        replies.add(chunk)
    assert len(replies.tokens) < REPLY_INDEX_TOKENS
    assert replies.follow([5, 6, 7], 3) == (3, [8, 9, 10])  # still answers after starting again


def test_of_several_occurrences_the_one_preceded_by_more_of_the_row_wins():
    replies = ReplyIndex()
    replies.add([1, 2, 3, 4, 5, 9])
    replies.add([7, 3, 4, 5, 8])  # the latest "3 4 5", but preceded by 7
    assert replies.follow([0, 1, 2, 3, 4, 5], 3) == (5, [9])
    assert replies.follow([0, 7, 3, 4, 5], 3) == (4, [8])


def test_an_earlier_reply_agreeing_from_its_first_token_outranks_the_rows_own_repetitions():
    replies = ReplyIndex()
    replies.add([5, 6, 5, 6, 7])
    row = NgramIndex([5, 6, 5, 6, 9, 5, 6])  # prompt [5, 6, 5, 6, 9], reply so far [5, 6]
    assert row.follow(row.tokens, 2) == (2, [9, 5])  # own context: the prompt's latest "5 6"
    assert replies.follow(row.tokens, 2, reply_start=5)[0] == MATCH_CAP
    assert draft(row, replies, 2, reply_start=5) == [5, 6]
    assert draft(row, replies, 2) == [9, 5]  # without knowing where the reply starts, the own context's tie wins
