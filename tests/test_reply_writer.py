"""The reply writer: what Discord is shown while a reply streams, and when."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.reply_writer import EditThrottle, ReplyWriter
from bot.splitter import discord_len, split_message
from tests.conftest import SteppingClock


class RecordingTarget:
    """Stands in for Discord's message API, enforcing its rules (non-empty, <= limit)."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.messages: list[str] = []
        self.calls: list[tuple[str, int, str]] = []

    def _check(self, text: str) -> None:
        assert text.strip(), "Discord rejects empty messages"
        assert discord_len(text) <= self.limit, f"over the limit: {discord_len(text)}"

    async def send(self, index: int, text: str) -> None:
        self._check(text)
        assert index == len(self.messages)
        self.messages.append(text)
        self.calls.append(("send", index, text))

    async def edit(self, index: int, text: str) -> None:
        self._check(text)
        self.messages[index] = text
        self.calls.append(("edit", index, text))


def run_stream(
    deltas: list[str], *, step: float = 0.0, limit: int = 2000, note: str | None = None
) -> tuple[RecordingTarget, ReplyWriter]:
    target = RecordingTarget(limit)
    writer = ReplyWriter(target, EditThrottle(1.0, SteppingClock(step)), limit=limit)

    async def go() -> None:
        for delta in deltas:
            await writer.feed(delta)
        await writer.finish(note)

    asyncio.run(go())
    return target, writer


texts = st.text(
    alphabet=st.sampled_from(list("ab cd\n\n```py\n`~🌤é")) | st.characters(codec="utf-8"),
    max_size=600,
)


@settings(max_examples=200, deadline=None)
@given(texts, st.data(), st.sampled_from([0.0, 0.3, 1.0]), st.integers(40, 200))
def test_streamed_result_equals_splitting_the_whole_text(
    text: str, data: st.DataObject, step: float, limit: int
) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=30))))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    target, writer = run_stream(deltas, step=step, limit=limit)
    assert target.messages == split_message(text, limit)
    assert writer.text == text


def test_first_text_is_sent_at_once_and_later_edits_wait_for_the_interval() -> None:
    target, _ = run_stream(["Hel", "lo", " wor", "ld"], step=0.0)
    assert target.calls == [("send", 0, "Hel"), ("edit", 0, "Hello world")]


def test_with_a_moving_clock_each_update_carries_the_full_text() -> None:
    target, _ = run_stream(["a", "b", "c"], step=1.0)
    assert target.calls == [("send", 0, "a"), ("edit", 0, "ab"), ("edit", 0, "abc")]


def test_whitespace_only_start_is_not_sent() -> None:
    target, _ = run_stream(["\n", "  ", "hi"])
    # Nothing went out for the blank deltas (Discord rejects blank messages); Discord itself
    # trims the leading whitespace on display.
    assert target.calls == [("send", 0, "\n  hi")]


def test_an_open_code_block_is_shown_closed_while_streaming() -> None:
    target, _ = run_stream(["```python\n", "print(1)"], step=1.0)
    # Discord accepts a closing fence at the end of a code line (see close_open_fence).
    assert [text for _, _, text in target.calls] == ["```python\n```", "```python\nprint(1)```"]


def test_note_is_appended_after_the_text() -> None:
    target, _ = run_stream(["Partial"], note="*(cut off)*")
    assert target.messages == ["Partial\n\n*(cut off)*"]


def test_note_alone_when_nothing_was_shown() -> None:
    target, _ = run_stream([], note="⚠️ error")
    assert target.messages == ["⚠️ error"]


def test_overflow_continues_in_a_new_message() -> None:
    words = ["word "] * 500  # 2500 characters
    target, _ = run_stream(words, step=0.0)
    assert len(target.messages) == 2
    assert all(len(m) <= 2000 for m in target.messages)
    sends = [c for c in target.calls if c[0] == "send"]
    assert [c[1] for c in sends] == [0, 1]


def test_a_throttle_is_shared_by_replies_in_the_same_channel() -> None:
    clock = SteppingClock(0.0)
    throttle = EditThrottle(1.0, clock)
    first, second = RecordingTarget(), RecordingTarget()

    async def go() -> None:
        a = ReplyWriter(first, throttle)
        b = ReplyWriter(second, throttle)
        await a.feed("a1")
        await b.feed("b1")  # first text always goes out
        clock.now += 1.0
        await a.feed(" a2")  # the interval passed: this one edits ...
        await b.feed(" b2")  # ... and the channel's budget is spent for this interval
        await a.finish()
        await b.finish()

    asyncio.run(go())
    assert first.calls == [("send", 0, "a1"), ("edit", 0, "a1 a2")]
    assert second.calls == [("send", 0, "b1"), ("edit", 0, "b1 b2")]
    assert [c for c in second.calls if c[2] == "b1 b2"] == [("edit", 0, "b1 b2")]
