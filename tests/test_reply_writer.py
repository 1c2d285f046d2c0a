"""ReplyText: what a growing reply looks like as Discord messages."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.clock import EditThrottle
from bot.reply_text import ReplyText
from bot.splitter import discord_len, split_message
from tests.conftest import SteppingClock

texts = st.text(
    alphabet=st.sampled_from(list("ab cd\n\n```py\n`~🌤é")) | st.characters(codec="utf-8"),
    max_size=600,
)


@settings(max_examples=200, deadline=None)
@given(texts, st.data(), st.integers(40, 200))
def test_streamed_messages_equal_splitting_the_whole_text(
    text: str, data: st.DataObject, limit: int
) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=30))))
    reply = ReplyText(limit)
    for a, b in itertools.pairwise([0, *cuts, len(text)]):
        reply.feed(text[a:b])
        for message in reply.messages():
            assert message.strip() and discord_len(message) <= limit
    assert reply.messages() == split_message(text, limit)
    assert reply.text == text


def test_an_open_code_block_is_shown_closed_while_streaming() -> None:
    reply = ReplyText()
    reply.feed("```python\n")
    assert reply.messages() == ["```python\n```"]
    reply.feed("print(1)")
    # Discord accepts a closing fence at the end of a code line (see close_open_fence).
    assert reply.messages() == ["```python\nprint(1)```"]


def test_note_goes_after_the_text_or_alone() -> None:
    reply = ReplyText()
    reply.feed("Partial")
    reply.add_note("*(cut off)*")
    assert reply.messages() == ["Partial\n\n*(cut off)*"]
    assert reply.text == "Partial"  # notes are shown, never stored
    alone = ReplyText()
    alone.add_note("⚠️ error")
    assert alone.messages() == ["⚠️ error"]


def test_whitespace_only_text_shows_nothing() -> None:
    reply = ReplyText()
    reply.feed("\n  ")
    assert reply.messages() == []


def test_overflow_continues_in_a_new_message() -> None:
    reply = ReplyText()
    for _ in range(500):
        reply.feed("word ")
    assert len(reply.messages()) == 2
    assert all(len(m) <= 2000 for m in reply.messages())


def test_edit_throttle_uses_the_injected_clock() -> None:
    clock = SteppingClock(0.0)
    throttle = EditThrottle(1.0, clock)
    assert throttle.ready()
    throttle.mark()
    assert not throttle.ready()
    clock.now += 1.0
    assert throttle.ready()
