"""The Discord scheduler: every create and edit, planned within Discord's limits.

Driven with a manual clock whose sleep moves time, and a recording target standing in for
Discord's message API (the end-to-end tests and bench/load.py run it against the
rate-limiting fake Discord)."""

from __future__ import annotations

import asyncio

import pytest

from bot.discord_scheduler import DiscordScheduler
from bot.rate_limits import DiscordLimits, Priority, RateWindow


class ManualClock:
    """Time moves only when the scheduler sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Recorder:
    """A reply's messages, recording each call with the time it was made."""

    def __init__(
        self, clock: ManualClock, log: list[tuple[float, str, int, str]], name: str
    ) -> None:
        self.clock = clock
        self.log = log
        self.name = name
        self.messages: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def send(self, index: int, text: str, *, controls: object) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        self.log.append((self.clock(), f"{self.name}:send", index, text))
        self.messages.append(text)
        return not self.fail

    async def edit(self, index: int, text: str, *, controls: object) -> bool:
        self.log.append((self.clock(), f"{self.name}:edit", index, text))
        self.messages[index] = text
        return not self.fail


def make(
    limits: DiscordLimits | None = None, interval: float = 1.0
) -> tuple[DiscordScheduler, ManualClock, list[tuple[float, str, int, str]]]:
    clock = ManualClock()
    scheduler = DiscordScheduler(clock, edit_interval=interval, limits=limits, sleep=clock.sleep)
    return scheduler, clock, []


async def drain() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_first_text_at_once_intermediate_edits_at_most_one_per_interval_final_at_once() -> (
    None
):
    scheduler, clock, log = make()
    reply = scheduler.reply(1, Recorder(clock, log, "a"))
    times = [0.0, 0.5, 1.0, 1.5, 1.75]  # when each token arrives
    for now, token in zip(times, ["Hello", " there", ",", " friend", "!"], strict=True):
        clock.now = now
        await reply.feed(token)
        await drain()
    await reply.finish()
    assert [(t, kind, text) for t, kind, _, text in log] == [
        (0.0, "a:send", "Hello"),  # the first text at once
        (1.0, "a:edit", "Hello there,"),  # 0.5 was too soon after 0.0
        (1.75, "a:edit", "Hello there, friend!"),  # 1.5 was too soon; the final goes at once
    ]


async def test_the_stream_never_waits_for_discord() -> None:
    scheduler, clock, log = make()
    target = Recorder(clock, log, "a")
    target.gate = asyncio.Event()  # Discord is slow to answer the first send
    reply = scheduler.reply(1, target)
    for token in ["a", "b", "c", "d"]:
        await asyncio.wait_for(reply.feed(token), timeout=1)  # returns at once every time
    assert reply.text == "abcd"
    target.gate.set()
    await reply.finish()
    assert target.messages == ["abcd"]


async def test_a_channel_never_gets_more_than_its_window_allows_and_finals_go_first() -> None:
    limits = DiscordLimits(channel_limit=5, channel_window=5.0)
    scheduler, clock, log = make(limits, interval=0.1)
    replies = [scheduler.reply(7, Recorder(clock, log, name)) for name in "abc"]
    for step in range(60):
        clock.now += 0.1
        for reply in replies:
            await reply.feed(f" {step}")
        await drain()
    await asyncio.gather(*(r.finish() for r in replies))
    times = [t for t, *_ in log]
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t < start + limits.channel_window]
        assert len(in_window) <= limits.channel_limit
    # Every reply ends showing its whole text.
    for reply in replies:
        assert reply.target.messages == [reply.text]


async def test_finals_are_sent_before_intermediate_edits_waiting_in_the_same_channel() -> None:
    limits = DiscordLimits(channel_limit=2, channel_window=10.0)
    scheduler, clock, log = make(limits, interval=0.0)
    streaming = scheduler.reply(3, Recorder(clock, log, "s"))
    ending = scheduler.reply(3, Recorder(clock, log, "e"))
    await streaming.feed("x")
    await ending.feed("y")
    await drain()  # two sends: the window is full until t=10
    await streaming.feed("x2")
    finishing = asyncio.create_task(ending.finish(note="done"))
    await drain()
    await finishing
    kinds = [kind for _, kind, _, _ in log]
    assert kinds[:3] == ["s:send", "e:send", "e:edit"], kinds  # the final before the edit


async def test_many_replies_slow_down_together_within_the_global_budget() -> None:
    limits = DiscordLimits(global_limit=45, global_window=1.0, intermediate_share=0.6)
    scheduler, clock, log = make(limits, interval=1.0)
    replies = [
        scheduler.reply(channel, Recorder(clock, log, str(channel))) for channel in range(100)
    ]
    assert scheduler.intermediate_interval() == pytest.approx(100 / 27)
    for step in range(30):
        clock.now += 0.2
        for reply in replies:
            await reply.feed(f" t{step}")
            await scheduler.admit()  # what the HTTP wrapper does for every REST call
        await drain()
    await asyncio.gather(*(r.finish() for r in replies))
    # Every reply shows its final text.
    assert all(r.target.messages[-1].endswith("t29") for r in replies)


async def test_global_budget_admits_urgent_calls_first_and_never_more_than_the_limit() -> None:
    limits = DiscordLimits(global_limit=10, global_window=1.0, intermediate_share=0.5)
    scheduler, clock, _ = make(limits)
    admitted: list[tuple[float, Priority]] = []

    async def call(priority: Priority) -> None:
        from bot.rate_limits import CURRENT_PRIORITY

        CURRENT_PRIORITY.set(priority)
        await scheduler.admit()
        admitted.append((clock.now, priority))

    await asyncio.gather(*(call(Priority.INTERMEDIATE) for _ in range(20)))
    times = [t for t, _ in admitted]
    for i, start in enumerate(times):
        assert len([t for t in times[i:] if t < start + 1.0]) <= 5  # half the budget
    await call(Priority.URGENT)
    assert len(admitted) == 21


async def test_a_refused_update_does_not_hang_the_reply() -> None:
    scheduler, clock, log = make()
    target = Recorder(clock, log, "a")
    target.fail = True
    reply = scheduler.reply(1, target)
    await reply.feed("text")
    await asyncio.wait_for(reply.finish(note="end"), timeout=1)


def test_rate_window_waits_exactly_until_a_slot_frees() -> None:
    window = RateWindow(limit=2, window=5.0)
    window.record(0.0)
    window.record(1.0)
    assert window.wait(2.0) == pytest.approx(3.0)  # the call at 0.0 leaves at 5.0
    assert window.wait(5.0) == 0.0
    # Keeping one slot free means both must have left: the call at 1.0 leaves at 6.0.
    assert window.wait(0.5, keep_free=1) == pytest.approx(5.5)


async def test_a_final_edit_that_fails_for_now_is_tried_again_and_lands() -> None:
    scheduler, clock, log = make()
    target = Recorder(clock, log, "a")
    reply = scheduler.reply(1, target)
    await reply.feed("draft")
    await drain()
    failures = iter([None, None])  # Discord fails twice (a 500 after discord.py's retries)

    async def flaky_edit(index: int, text: str, *, controls: object) -> bool | None:
        result = next(failures, True)
        if result:
            target.messages[index] = text
        log.append((clock(), f"edit:{result}", index, text))
        return result

    target.edit = flaky_edit  # type: ignore[method-assign]
    await reply.feed(" done")
    await asyncio.wait_for(reply.finish(), timeout=1)
    assert target.messages == ["draft done"]
    assert [(t, kind) for t, kind, _, _ in log[1:]] == [
        (0.0, "edit:None"),
        (0.5, "edit:None"),  # tried again after 0.5 s, then 1 s
        (1.5, "edit:True"),
    ]
