"""Finished answers on screen as soon as Discord's limits allow: the end of an answer is one
request, intermediate edits leave room for what matters, finals go first across channels, and
a queue place that other messages pushed up is replaced by a fresh answer at the bottom.

Scheduler tests run on a manual clock (time moves when the scheduler sleeps) against a
recording target; the placeholder test runs the real bot under SimCord."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from simcord import Env

from bot.discord.rate_headers import RateLimitListener
from bot.discord_scheduler import DiscordScheduler
from bot.rate_limits import CURRENT_PRIORITY, DiscordLimits, Priority, RateWindow
from bot.reply_text import Controls
from tests.conftest import until
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, setup_channel
from tests.test_discord_scheduler import ManualClock, drain


class Target:
    """A reply's messages with their buttons; every call recorded with its time."""

    def __init__(self, clock: ManualClock, log: list[tuple[float, str, str, int]], name: str):
        self.clock = clock
        self.log = log
        self.name = name
        self.messages: list[str] = []
        self.buttons: list[Controls] = []
        self.calls: list[tuple[str, int, Controls | None]] = []

    async def send(self, index: int, text: str, *, controls: Controls | None, **_: object) -> bool:
        self.log.append((self.clock(), self.name, "send", index))
        self.calls.append(("send", index, controls))
        self.messages.append(text)
        self.buttons.append(controls or Controls.NONE)
        return True

    async def edit(self, index: int, text: str, *, controls: Controls | None, **_: object) -> bool:
        self.log.append((self.clock(), self.name, "edit", index))
        self.calls.append(("edit", index, controls))
        self.messages[index] = text
        if controls is not None:
            self.buttons[index] = controls
        return True

    async def delete(self, index: int) -> bool:
        del self.messages[index], self.buttons[index]
        return True

    def overtaken(self, index: int) -> bool:
        return False

    async def replace(self, index: int, text: str, *, controls: Controls) -> bool:
        raise AssertionError("nothing is overtaken here")


def scheduler(limits: DiscordLimits, interval: float = 1.0) -> tuple[DiscordScheduler, ManualClock]:
    clock = ManualClock()
    return DiscordScheduler(clock, edit_interval=interval, limits=limits, sleep=clock.sleep), clock


async def test_a_split_answer_ends_with_one_edit_carrying_text_and_buttons() -> None:
    s, clock = scheduler(DiscordLimits())
    log: list[tuple[float, str, str, int]] = []
    target = Target(clock, log, "a")
    reply = s.reply(1, target)
    words = [f"word{i} " for i in range(700)]  # about 5,000 characters: three messages
    for word in words:
        clock.now += 0.05
        await reply.feed(word)
        await drain()
    before_finish = len(target.calls)
    assert await reply.finish(stored=True)
    # The end: one request, on the last message, with its final text and its buttons.
    assert target.calls[before_finish:] == [("edit", 2, Controls.REGENERATE)]
    assert " ".join(target.messages).split() == "".join(words).split()
    # While it streamed, Stop moved down with the text: each split took it off the message it
    # completed (in the edit completing it) and the new message was created with it.
    assert target.buttons == [Controls.NONE, Controls.NONE, Controls.REGENERATE]
    completes = [c for c in target.calls if c[0] == "edit" and c[2] is Controls.NONE]
    assert [index for _, index, _ in completes] == [0, 1]
    assert [c for c in target.calls if c[0] == "send"] == [
        ("send", 0, Controls.STOP),
        ("send", 1, Controls.STOP),
        ("send", 2, Controls.STOP),
    ]


async def test_a_one_message_answer_ends_with_one_edit() -> None:
    s, clock = scheduler(DiscordLimits())
    target = Target(clock, [], "a")
    reply = s.reply(1, target)
    await reply.feed("short")
    await drain()
    clock.now += 0.5
    await reply.feed(" answer")
    await reply.finish(stored=True, reasoning=True)
    assert target.calls == [
        ("send", 0, Controls.STOP),
        ("edit", 0, Controls.REGENERATE_REASONING),
    ]


async def test_an_intermediate_edit_never_takes_a_channels_last_slot() -> None:
    limits = DiscordLimits(channel_limit=5, channel_window=5.0)
    s, clock = scheduler(limits, interval=0.0)
    log: list[tuple[float, str, str, int]] = []
    replies = [s.reply(7, Target(clock, log, name)) for name in "ab"]
    kinds: list[tuple[float, Priority]] = []
    original = [r.push for r in replies]
    for reply, push in zip(replies, original, strict=True):

        async def recorded(reply=reply, push=push) -> None:  # type: ignore[no-untyped-def]
            kinds.append((clock(), reply.priority() or Priority.STATUS))
            await push()

        reply.push = recorded  # type: ignore[method-assign]
    for step in range(100):
        clock.now += 0.1
        for reply in replies:
            await reply.feed(f" t{step}")
        await drain()
        # After each intermediate edit, one slot of the window is still free.
        for at, priority in kinds:
            if priority >= Priority.INTERMEDIATE:
                start = at - limits.channel_window + 1e-9  # (float: 5.1 - 5.0 < 0.1)
                in_window = [t for t, _ in kinds if start < t <= at]
                assert len(in_window) <= limits.channel_limit - 1
    finishing = [asyncio.create_task(r.finish()) for r in replies]
    await drain()
    # The free slot is there when the answers end: both finals go without waiting for it
    # (one takes the free slot; the other its turn in line, never behind an edit).
    await asyncio.gather(*finishing)
    assert all(r.target.messages[-1].endswith("t99") for r in replies)


async def test_a_final_waiting_behind_other_channels_intermediate_edits_goes_first() -> None:
    limits = DiscordLimits(global_limit=10, global_window=1.0, intermediate_share=0.6)
    s, clock = scheduler(limits, interval=0.0)
    admitted: list[tuple[float, str]] = []
    before_final: list[int] = []

    async def call(priority: Priority, name: str) -> None:
        CURRENT_PRIORITY.set(priority)
        if name == "final":
            before_final.append(len(admitted))
        await s.admit()
        admitted.append((clock(), name))

    # Thirty intermediate edits of other channels are already waiting for the budget.
    edits = [asyncio.create_task(call(Priority.INTERMEDIATE, f"edit{i}")) for i in range(30)]
    await drain()
    final = asyncio.create_task(call(Priority.FINAL, "final"))
    await asyncio.gather(final, *edits)
    order = [name for _, name in admitted]
    # It went before every edit that was still waiting when it arrived (most of them).
    assert before_final[0] < 20
    assert order.index("final") == before_final[0]
    # And the oldest-starved edits went first among themselves.
    assert [n for n in order if n != "final"] == [f"edit{i}" for i in range(30)]


async def test_an_overtaken_queue_place_is_replaced_by_a_fresh_answer_at_the_bottom(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob", global_name="Bob"))
    carol = simcord_env.guild.add_member(simcord_env.create_user("carol", global_name="Carol"))
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(
        Reply(tokens=[f" w{i}" for i in range(60)], token_delay=0.02), Reply(tokens=["Second."])
    )
    simcord_env.backend.create_message(channel.id, alice.id, f"{mention} first")
    assert await until(lambda: len(bot_messages(simcord_env, channel)) == 1)
    simcord_env.backend.create_message(channel.id, bob.id, f"{mention} second")
    # Bob's question waits: its queue place shows; then Carol talks below it.
    assert await until(lambda: len(bot_messages(simcord_env, channel)) == 2)
    place = bot_messages(simcord_env, channel)[1]
    assert place.content.startswith("⏳")
    simcord_env.backend.create_message(channel.id, carol.id, "meanwhile, something else")
    await simcord_env.settle()

    history = sorted(channel.history(), key=lambda m: m.id)
    texts = [m.content for m in history]
    # Bob's answer is the last message of the channel; the queue place is gone.
    assert texts[-1] == "Second."
    assert history[-1].reference is not None
    assert history[-2].content == "meanwhile, something else"
    assert place.id not in [m.id for m in history]
    assert not any(t.startswith("⏳") for t in texts)


def test_discords_headers_cap_the_window_until_its_reset() -> None:
    window = RateWindow(limit=5, window=5.0)
    window.record(0.0)
    # Discord says only one more fits in the next 3 s (a tighter bucket than planned).
    window.observe(0.0, remaining=1, reset_after=3.0)
    assert window.wait(0.5) == 0.0
    assert window.wait(0.5, keep_free=1) == pytest.approx(2.5)  # the last one is kept
    window.record(0.5)
    assert window.wait(1.0) == pytest.approx(2.0)
    assert window.wait(3.0) == 0.0  # reset: the model decides again


def test_a_429_anyway_waits_it_out_and_plans_one_write_fewer() -> None:
    window = RateWindow(limit=5, window=5.0)
    window.rate_limited(10.0, retry_after=1.5)
    assert window.wait(10.0) == pytest.approx(1.5)
    assert window.limit == 4
    for second in range(3):  # the calls in flight all come back with a 429: one incident
        window.rate_limited(20.0 + second / 100, retry_after=0.1)
    assert window.limit == 3
    assert window.wait(20.05) == pytest.approx(0.07)  # the longest wait of the incident
    for second in range(10):
        window.rate_limited(30.0 + second, retry_after=0.1)
    assert window.limit == 1  # never below one
    # Ten quiet minutes win back one write per window, up to the planned five.
    window.wait(40.0 + 600)
    assert window.limit == 2
    for minutes in range(2, 8):
        window.wait(40.0 + 600 * minutes)
    assert window.limit == 5


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=300))
# A burst, most of the budget 50 ms later, then what the burst frees: with a 1 s plan, the
# burst's successors arrive in the same Discord window as the burst when it was late.
@example([0.0] * 10 + [0.05] * 35 + [1.0] * 10)
def test_calls_up_to_50_ms_late_never_make_more_than_discords_50_in_its_window(
    wanted: list[float],
) -> None:
    # Calls wanted at these moments go when the global window lets them; Discord counts each
    # when it arrives, up to 50 ms later, in fixed 1 s windows starting anywhere.
    limits = DiscordLimits()
    window = RateWindow(limits.global_limit, limits.global_window)
    sent = []
    for at in sorted(wanted):
        at += window.wait(at)
        window.record(at)
        sent.append(at)
    for start in sent:  # the worst case: Discord's window starts as a call arrives
        late = [t for t in sent if start - 0.05 <= t < start + 1.0]
        assert len(late) <= 45 < 50


async def test_a_global_429_is_the_whole_bots_not_the_channels() -> None:
    channel_429s: list[tuple[int, float]] = []
    global_429s: list[float] = []
    listener = RateLimitListener(
        lambda channel, retry: channel_429s.append((channel, retry)), global_429s.append
    )
    discord_http = logging.getLogger("discord.http")
    discord_http.addHandler(listener)
    try:
        # What discord.py logs for a global 429 on an edit: two warnings, nothing in between.
        discord_http.warning(
            "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
            "PATCH",
            "https://discord.com/api/v10/channels/42/messages/7",
            0.01,
        )
        discord_http.warning("Global rate limit has been hit. Retrying in %.2f seconds.", 0.01)
        # And for the channel's own bucket: one warning...
        discord_http.warning(
            "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
            "PATCH",
            "https://discord.com/api/v10/channels/43/messages/8",
            1.5,
        )
        # ... even when another call meets a global 429 in the same turn of the loop.
        discord_http.warning(
            "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
            "PUT",
            "https://discord.com/api/v10/channels/44/messages/9/reactions/x/@me",
            0.02,
        )
        discord_http.warning("Global rate limit has been hit. Retrying in %.2f seconds.", 0.02)
        await asyncio.sleep(0)
    finally:
        discord_http.removeHandler(listener)
    assert global_429s == [0.01, 0.02]
    assert channel_429s == [(43, 1.5)]


async def test_after_a_global_429_every_call_waits_and_the_plan_is_one_call_fewer() -> None:
    s, clock = scheduler(DiscordLimits(global_limit=45))
    for _ in range(12):  # every call in flight comes back with one: a single incident
        s.rate_limited_globally(0.5)
    await s.admit()
    assert clock() == pytest.approx(0.5)
    assert s._global.window.limit == 44


def test_discord_py_429_warnings_reach_the_scheduler_with_their_channel() -> None:
    seen: list[tuple[int, float]] = []
    listener = RateLimitListener(lambda channel, retry: seen.append((channel, retry)))
    record = logging.LogRecord(
        "discord.http",
        logging.WARNING,
        __file__,
        1,
        "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
        ("PATCH", "https://discord.com/api/v10/channels/42/messages/7", 1.25),
        None,
    )
    listener.emit(record)
    reaction = logging.LogRecord(
        "discord.http",
        logging.WARNING,
        __file__,
        1,
        "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
        ("PUT", "https://discord.com/api/v10/channels/42/messages/7/reactions/x/@me", 0.25),
        None,
    )
    listener.emit(reaction)  # another bucket: not the channel's writes
    assert seen == [(42, 1.25)]
