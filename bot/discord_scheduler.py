"""The one scheduler for every message the bot creates or edits, and the global REST budget.

Discord limits message creates and edits per channel (about 5 per 5 s, shared by every reply
streaming in that channel) and all REST calls of a bot together (50 per second). discord.py
waits when a limit is hit, or after a 429; awaiting each edit inside the token loop would then
stall the stream. So replies never send anything themselves: they update their wanted state
(:class:`ReplyWriter`) and this scheduler decides what goes out, when:

* it plans from Discord's limits, with headroom, so that it never has to meet a 429;
* first visible text and final text go before intermediate edits (in the channel and in the
  global budget), and one slot of each channel's window is kept free for them;
* intermediate edits of a reply are at least ``EDIT_INTERVAL`` apart per channel, and further
  apart when many replies stream at once: everyone slows down instead of anyone failing.

Per channel, a short-lived "pump" task sends one update at a time and ends when nothing is
due; no task waits around idle.

Several processes (shards) spend one bot token's 50 requests per second: each then also draws
every REST call from a ``shared`` budget (a token bucket in Redis, leased a few tokens at a time,
see bot/coordination_budget.py), and paces its intermediate edits for its ``share`` of the
shards. Channel windows stay local: a channel belongs to one shard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from .clock import Clock, Sleep
from .coordination import RateBudget
from .rate_limits import CURRENT_PRIORITY, DiscordLimits, Priority, RateWindow
from .reply_text import MessageTarget
from .reply_writer import ReplyWriter
from .rest_gate import RestGate

log = logging.getLogger(__name__)

# Reads what Discord said about a route's bucket: (channel, remaining, reset_after) or None.
Observer = Callable[[object, object], tuple[int, int, float] | None]

# The shared REST budget of all processes together, per second, and its burst: Discord allows
# 50, and a leased token may be spent up to LeasedBudget's horizon (0.2 s) after it was counted,
# so rate * 1.2 + burst must stay within 50 (see bot/coordination_budget.py).
SHARED_RATE = 37.0
SHARED_BURST = 5
# Redis unreachable: seconds before the shared budget is asked again.
SHARED_RETRY = 5.0


class DiscordScheduler:
    """Decides which message update goes out next, per channel and across the bot."""

    def __init__(
        self,
        clock: Clock,
        *,
        edit_interval: float,
        limits: DiscordLimits | None = None,
        sleep: Sleep = asyncio.sleep,
        max_reply_messages: int | None = None,
        shared: RateBudget | None = None,
        share: float = 1.0,
    ) -> None:
        self.clock = clock
        self.shared = shared  # every process's REST budget, with several processes
        self.share = share  # this process's part of the bot's traffic (its shards of all)
        self._shared_failing = False
        self._shared_retry_at = 0.0
        self.edit_interval = edit_interval
        self.limits = limits or DiscordLimits()
        self.sleep = sleep
        self.max_reply_messages = max_reply_messages
        self._replies: dict[int, list[ReplyWriter]] = {}
        self._channel_windows: dict[int, RateWindow] = {}
        self._channel_intermediate: dict[int, float] = {}
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._naps: dict[int, asyncio.Future[None]] = {}  # a pump waiting for a slot
        self._global = RestGate(
            RateWindow(self.limits.global_limit, self.limits.global_window),
            partial(keep_free, self.limits),
            clock=clock,
            sleep=sleep,
        )
        self.rest_calls = 0

    # --- replies -----------------------------------------------------------------------------

    def reply(self, channel_id: int, target: MessageTarget) -> ReplyWriter:
        reply = ReplyWriter(self, channel_id, target, max_messages=self.max_reply_messages)
        self._replies.setdefault(channel_id, []).append(reply)
        return reply

    def done(self, reply: ReplyWriter) -> None:
        replies = self._replies.get(reply.channel_id)
        if replies is not None and reply in replies:
            replies.remove(reply)
            if not replies:
                del self._replies[reply.channel_id]

    @property
    def streaming(self) -> int:
        return sum(len(r) for r in self._replies.values())

    def intermediate_interval(self) -> float:
        """Seconds between intermediate edits in one channel: EDIT_INTERVAL, or longer when so
        many replies stream that the global budget could not keep up."""
        limit = self.limits.global_limit
        if self.shared is not None:
            limit = min(limit, int(SHARED_RATE * self.limits.global_window))
        budget = limit * self.limits.intermediate_share * self.share / self.limits.global_window
        return max(self.edit_interval, self.streaming / budget)

    def _due(self, reply: ReplyWriter, now: float) -> Priority | None:
        priority = reply.priority()
        if priority is None:
            return None
        if reply.retry_at is not None and now < reply.retry_at:
            return None
        if priority is Priority.STATUS and not reply.shown:
            return priority  # a waiting reply shows its place at once; updates are paced
        if priority in (Priority.INTERMEDIATE, Priority.STATUS):
            interval = self.intermediate_interval()
            last = max(
                reply.last_update if reply.last_update is not None else -1e18,
                self._channel_intermediate.get(reply.channel_id, -1e18),
            )
            if now - last < interval:
                # Remembered, so that the tokens arriving meanwhile cost no new look (the
                # per-token path): only a complete message or the end can change it.
                reply.paced_until = last + interval
                reply.paced_at_message = reply.content.frozen_count
                return None
        return priority

    def poke(self, reply: ReplyWriter) -> None:
        """Something changed: make sure the channel's pump runs if an update may be due."""
        channel = reply.channel_id
        if channel in self._pumps:
            nap = self._naps.get(channel)
            if nap is not None and _urgent(reply):
                nap.cancel()  # it waits for a lesser update: this one may go sooner
            return
        now = self.clock()
        if (
            now < reply.paced_until
            and not reply.final
            and reply.content.frozen_count == reply.paced_at_message
        ):
            return  # an intermediate update, not due yet
        if self._due(reply, now) is None:
            return
        self._pumps[channel] = asyncio.create_task(self._pump(channel))

    def _choose(self, channel: int, now: float) -> tuple[ReplyWriter, Priority] | None:
        best: tuple[Priority, float, ReplyWriter] | None = None
        for reply in self._replies.get(channel, ()):
            priority = self._due(reply, now)
            if priority is None:
                continue
            key = (
                priority,
                reply.last_update if reply.last_update is not None else reply.waiting_since,
            )
            if best is None or key < best[:2]:
                best = (*key, reply)
        return (best[2], best[0]) if best else None

    def _next_retry(self, channel: int) -> float | None:
        """When a failed update waits to be tried again (only these keep a pump waiting)."""
        times = [
            r.retry_at
            for r in self._replies.get(channel, ())
            if r.retry_at is not None and r.priority() is not None
        ]
        return min(times) if times else None

    async def _pump(self, channel: int) -> None:
        window = self._window(channel)
        try:
            while True:
                now = self.clock()
                choice = self._choose(channel, now)
                if choice is None:
                    retry = self._next_retry(channel)
                    if retry is None:
                        return
                    await self.sleep(max(0.0, retry - now))
                    continue
                reply, priority = choice
                # Keep one slot of the channel's window for finals, first texts and splits.
                keep = 0 if priority <= Priority.FIRST else 1
                wait = window.wait(now, keep_free=keep)
                if priority >= Priority.INTERMEDIATE:
                    # Not into the global line while holding the channel: its final text may
                    # become due meanwhile, and would wait behind a stale edit.
                    wait = max(wait, self._global.ready(priority))
                if wait > 0:
                    await self._nap(channel, wait)
                    continue
                window.record(now)
                if priority >= Priority.INTERMEDIATE:
                    self._channel_intermediate[channel] = now
                token = CURRENT_PRIORITY.set(priority)
                try:
                    await reply.push()
                except Exception:
                    log.exception("event=discord_update_crashed channel=%s", channel)
                    reply.give_up()
                finally:
                    CURRENT_PRIORITY.reset(token)
        finally:
            self._pumps.pop(channel, None)

    async def _nap(self, channel: int, seconds: float) -> None:
        """Sleep until a slot frees for the update chosen, or until a more urgent update of
        the channel (a final text, a first text, a new message) wakes the channel."""
        nap = asyncio.ensure_future(self.sleep(seconds))
        self._naps[channel] = nap
        try:
            await asyncio.wait({nap})  # returns when woken (cancelled) as when it ends
        finally:
            del self._naps[channel]
            nap.cancel()

    # --- the global REST budget --------------------------------------------------------------

    async def admit(self) -> None:
        """Wait until one more REST call fits the global budget, at this task's priority (in
        line behind more important calls). Every REST call of the bot goes through here (see
        :meth:`wrap_http`)."""
        await self._global.admit(CURRENT_PRIORITY.get())
        while (wait := await self._shared_wait()) > 0:
            await self.sleep(wait)
        self.rest_calls += 1

    async def _shared_wait(self) -> float:
        """0 once a token of the shared budget is taken, else the seconds to wait. Redis
        unreachable: this process's own window is all that limits it, and Redis is asked again
        only every few seconds (logged once; discord.py still waits out any 429 the processes
        together then meet)."""
        if self.shared is None or self.clock() < self._shared_retry_at:
            return 0.0
        try:
            wait = await self.shared.acquire()
        except Exception as exc:
            if not self._shared_failing:
                log.warning("event=shared_budget_unavailable cause=%r", str(exc))
            self._shared_failing = True
            self._shared_retry_at = self.clock() + SHARED_RETRY
            return 0.0
        if self._shared_failing:
            log.info("event=shared_budget_back")
            self._shared_failing = False
        return wait

    def wrap_http(self, http: object, observe: Observer | None = None) -> None:
        """Route every REST call of discord.py's HTTP client through :meth:`admit`; after
        each, ``observe(http, route)`` tells what Discord said about that route's bucket."""
        original = http.request  # type: ignore[attr-defined]

        async def request(*args: object, **kwargs: object) -> object:
            await self.admit()
            try:
                return await original(*args, **kwargs)
            finally:
                seen = observe(http, args[0]) if observe is not None and args else None
                if seen is not None:
                    self.observed(*seen)

        http.request = request  # type: ignore[attr-defined]

    def _window(self, channel: int) -> RateWindow:
        return self._channel_windows.setdefault(
            channel, RateWindow(self.limits.channel_limit, self.limits.channel_window)
        )

    def observed(self, channel: int, remaining: int, reset_after: float) -> None:
        """Discord's headers for a channel's message bucket correct its plan."""
        self._window(channel).observe(self.clock(), remaining, reset_after)

    def rate_limited_globally(self, retry_after: float) -> None:
        """A 429 for the whole bot despite the plan: every call waits it out, and the bot
        plans one call fewer per window from now on."""
        _tighten(self._global.window, self.clock(), retry_after, "scope=global")

    def rate_limited(self, channel: int, retry_after: float) -> None:
        """A 429 on a channel's messages despite the plan: wait it out, plan tighter."""
        _tighten(self._window(channel), self.clock(), retry_after, f"channel={channel}")


def _tighten(window: RateWindow, now: float, retry_after: float, where: str) -> None:
    window.rate_limited(now, retry_after)
    log.warning(
        "event=discord_rate_limited %s retry_after=%.2f plan_now=%d_per_%.2gs",
        where,
        retry_after,
        window.limit,
        window.window,
    )


def _urgent(reply: ReplyWriter) -> bool:
    """Whether ``reply`` may want a final text, a first text or a new message (cheap: asked
    for every token while its channel's pump waits)."""
    return (
        reply.final
        or not reply.shown
        or reply.status_shown
        or reply.content.frozen_count >= len(reply.shown)
    )


def keep_free(limits: DiscordLimits, priority: Priority) -> int:
    """Slots of the global window a call leaves to more important ones: intermediate edits
    leave what finals and first texts need; those leave room for interaction responses (3 s
    to answer)."""
    if priority >= Priority.INTERMEDIATE:
        return int(limits.global_limit * (1 - limits.intermediate_share))
    if priority is Priority.URGENT:
        return 0
    return max(1, limits.global_limit // 10)
