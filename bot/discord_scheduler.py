"""The one scheduler for every message the bot creates or edits, and the global REST budget.

Discord limits message creates and edits per channel (about 5 per 5 s, shared by every reply
streaming in that channel) and all REST calls of a bot together (50 per second). discord.py
waits when a limit is hit, or after a 429; awaiting each edit inside the token loop would then
stall the stream. So replies never send anything themselves: they update their wanted state
(:class:`ScheduledReply`) and this scheduler decides what goes out, when:

* it plans from Discord's limits, with headroom, so that it never has to meet a 429;
* first visible text and final text go before intermediate edits (in the channel and in the
  global budget), and one slot of each channel's window is kept free for them;
* intermediate edits of a reply are at least ``EDIT_INTERVAL`` apart per channel, and further
  apart when many replies stream at once: everyone slows down instead of anyone failing.

Per channel, a short-lived "pump" task sends one update at a time and ends when nothing is
due; no task waits around idle.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .reply_writer import Controls, MessageTarget, ReplyText
from .splitter import DISCORD_LIMIT

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Priority(enum.IntEnum):
    """Lower goes first. REST calls outside the scheduler (interaction responses with their
    3 s deadline, typing) count as URGENT."""

    URGENT = 0
    FIRST = 1
    FINAL = 2
    INTERMEDIATE = 3
    STATUS = 4


# The priority of the REST call being made in this task (read by the global budget).
CURRENT_PRIORITY: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "ollacord_rest_priority", default=Priority.URGENT
)


@dataclass(frozen=True)
class DiscordLimits:
    """Discord's limits as planned for, with headroom.

    Discord publishes no number for message edits; "5 per 5 s per channel" is the long-standing
    observed bucket, which the per-channel ``X-RateLimit-*`` headers confirm. The global limit
    is 50 requests per second (discord-platform.md).
    """

    channel_limit: int = 5
    channel_window: float = 5.25  # 5 s plus a margin for network jitter
    global_limit: int = 45  # of Discord's 50/s: room for discord.py's own calls and jitter
    global_window: float = 1.0
    intermediate_share: float = 0.6  # of the global budget, at most, for intermediate edits


class RateWindow:
    """At most ``limit`` events in any ``window`` seconds (a sliding window: never more than
    Discord's fixed window allows, wherever its window starts)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def wait(self, now: float, *, keep_free: int = 0) -> float:
        """Seconds until one more event fits while ``keep_free`` slots stay unused."""
        self._expire(now)
        allowed = self.limit - keep_free
        if allowed <= 0:
            return self.window
        excess = len(self._times) - allowed + 1
        if excess <= 0:
            return 0.0
        return max(0.0, self._times[excess - 1] + self.window - now)

    def record(self, now: float) -> None:
        self._times.append(now)


# A failed update is tried again after 0.5 s, 1 s, 2 s; then the reply stops trying.
RETRIES = 3
RETRY_DELAY = 0.5


class ScheduledReply:
    """One reply's wanted state on Discord. The engine feeds it (never waiting for Discord);
    the scheduler makes Discord match it."""

    def __init__(
        self,
        scheduler: DiscordScheduler,
        channel_id: int,
        target: MessageTarget,
        *,
        limit: int = DISCORD_LIMIT,
    ) -> None:
        self.scheduler = scheduler
        self.channel_id = channel_id
        self.target = target
        self.content = ReplyText(limit)
        self.status: str | None = None  # e.g. "queued: 2 ahead", shown until text arrives
        self.shown: list[str] = []
        self.final = False
        # Buttons: Stop while streaming; what finish() says once done (Regenerate if stored).
        self.controls = Controls.STOP
        self.shown_controls: Controls | None = None
        self.updates = 0
        self.last_update: float | None = None
        self.failures = 0  # updates in a row that Discord failed (for now)
        self.retry_at: float | None = None
        self.waiting_since = scheduler.clock()
        self._delivered: asyncio.Future[None] | None = None

    @property
    def text(self) -> str:
        return self.content.text

    def desired(self) -> list[str]:
        messages = self.content.messages()
        if not messages and self.status and not self.final:
            return [self.status]
        return messages

    def pending(self) -> bool:
        desired = self.desired()
        return (
            len(desired) > len(self.shown)
            or any(shown != want for shown, want in zip(self.shown, desired, strict=False))
            or (bool(self.shown) and self.shown_controls is not self._wanted_controls())
        )

    def _wanted_controls(self) -> Controls:
        if not self.content.messages() and not self.final:
            return Controls.NONE  # a queue placeholder has nothing to stop yet
        return self.controls

    def priority(self) -> Priority | None:
        """What kind of update is due, if any."""
        if not self.pending():
            return None
        if self.final:
            return Priority.FINAL
        if not self.content.messages():
            return Priority.STATUS
        if not self.shown or self.shown == [self.status]:
            return Priority.FIRST
        if len(self.desired()) > len(self.shown):
            return Priority.FIRST  # a new message of an overflowing reply: show it promptly
        return Priority.INTERMEDIATE

    async def feed(self, delta: str) -> None:
        """Add model text. Never waits for Discord (the stream goes at Ollama's pace)."""
        if delta:
            self.content.feed(delta)
            self.scheduler.poke(self)

    def set_status(self, status: str | None) -> None:
        self.status = status
        self.scheduler.poke(self)

    async def finish(self, note: str | None = None, *, stored: bool = False) -> None:
        """The text is complete: write the final state now, and wait until Discord shows it.
        ``stored``: the reply is in the history (so it may be regenerated)."""
        if note:
            self.content.add_note(note)
        self.final = True
        self.controls = Controls.REGENERATE if stored else Controls.NONE
        if not self.pending():
            self.scheduler.done(self)
            return
        self._delivered = asyncio.get_running_loop().create_future()
        self.scheduler.poke(self)
        await self._delivered

    def _settle(self) -> None:
        if self.final and not self.pending():
            if self._delivered is not None and not self._delivered.done():
                self._delivered.set_result(None)
            self.scheduler.done(self)

    def _give_up(self) -> None:
        """Discord refuses: stop trying (the target logged why)."""
        self.shown = self.desired()
        self.shown_controls = self._wanted_controls()
        self._settle()

    async def push(self) -> None:
        """One REST call towards the wanted state: send the next message or edit one."""
        desired = self.desired()
        controls = self._wanted_controls()
        for index, text in enumerate(desired):
            if index >= len(self.shown):
                ok = await self.target.send(index, text, controls=controls if index == 0 else None)
                break
            if self.shown[index] != text or (index == 0 and self.shown_controls is not controls):
                changed = controls if index == 0 and self.shown_controls is not controls else None
                ok = await self.target.edit(index, text, controls=changed)
                break
        else:
            self._settle()
            return
        now = self.scheduler.clock()
        self.last_update = now
        if ok is None:
            # Failed for now: the same update again after a pause, a few times, then give up.
            self.failures += 1
            if self.failures > RETRIES:
                self._give_up()
            else:
                self.retry_at = now + RETRY_DELAY * 2 ** (self.failures - 1)
            return
        self.failures = 0
        self.retry_at = None
        if ok is False:
            self._give_up()
            return
        self.updates += 1
        if index >= len(self.shown):
            self.shown.append(text)
        else:
            self.shown[index] = text
        if index == 0:
            self.shown_controls = controls
        self._settle()


class DiscordScheduler:
    """Decides which message update goes out next, per channel and across the bot."""

    def __init__(
        self,
        clock: Clock,
        *,
        edit_interval: float,
        limits: DiscordLimits | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.edit_interval = edit_interval
        self.limits = limits or DiscordLimits()
        self.sleep = sleep
        self._replies: dict[int, list[ScheduledReply]] = {}
        self._channel_windows: dict[int, RateWindow] = {}
        self._channel_intermediate: dict[int, float] = {}
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._global = RateWindow(self.limits.global_limit, self.limits.global_window)
        self.rest_calls = 0

    # --- replies -----------------------------------------------------------------------------

    def reply(self, channel_id: int, target: MessageTarget) -> ScheduledReply:
        reply = ScheduledReply(self, channel_id, target)
        self._replies.setdefault(channel_id, []).append(reply)
        return reply

    def done(self, reply: ScheduledReply) -> None:
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
        budget = (
            self.limits.global_limit * self.limits.intermediate_share / self.limits.global_window
        )
        return max(self.edit_interval, self.streaming / budget)

    def _due(self, reply: ScheduledReply, now: float) -> Priority | None:
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
                return None
        return priority

    def poke(self, reply: ScheduledReply) -> None:
        """Something changed: make sure the channel's pump runs if an update may be due."""
        channel = reply.channel_id
        if channel in self._pumps:
            return
        if self._due(reply, self.clock()) is None:
            return
        self._pumps[channel] = asyncio.create_task(self._pump(channel))

    def _choose(self, channel: int, now: float) -> tuple[ScheduledReply, Priority] | None:
        best: tuple[Priority, float, ScheduledReply] | None = None
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
        window = self._channel_windows.setdefault(
            channel, RateWindow(self.limits.channel_limit, self.limits.channel_window)
        )
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
                # Keep one slot of the channel's window for first and final texts.
                keep = 0 if priority <= Priority.FINAL else 1
                wait = window.wait(now, keep_free=keep)
                if wait > 0:
                    await self.sleep(wait)
                    continue
                window.record(now)
                if priority >= Priority.INTERMEDIATE:
                    self._channel_intermediate[channel] = now
                token = CURRENT_PRIORITY.set(priority)
                try:
                    await reply.push()
                except Exception:
                    log.exception("event=discord_update_crashed channel=%s", channel)
                    reply._give_up()
                finally:
                    CURRENT_PRIORITY.reset(token)
        finally:
            self._pumps.pop(channel, None)

    # --- the global REST budget --------------------------------------------------------------

    async def admit(self) -> None:
        """Wait until one more REST call fits the global budget, at this task's priority.
        Every REST call of the bot goes through here (see :meth:`wrap_http`)."""
        priority = CURRENT_PRIORITY.get()
        keep = 0
        if priority >= Priority.INTERMEDIATE:
            keep = int(self.limits.global_limit * (1 - self.limits.intermediate_share))
        elif priority >= Priority.FIRST:
            keep = max(1, self.limits.global_limit // 10)  # room for interaction responses
        while (wait := self._global.wait(self.clock(), keep_free=keep)) > 0:
            await self.sleep(wait)
        self._global.record(self.clock())
        self.rest_calls += 1

    def wrap_http(self, http: object) -> None:
        """Route every REST call of discord.py's HTTP client through :meth:`admit`."""
        original = http.request  # type: ignore[attr-defined]

        async def request(*args: object, **kwargs: object) -> object:
            await self.admit()
            return await original(*args, **kwargs)

        http.request = request  # type: ignore[attr-defined]
