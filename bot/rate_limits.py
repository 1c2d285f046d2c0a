"""Discord's rate limits as the bot plans for them, and the priorities of its REST calls.

Pure bookkeeping (no I/O): :class:`RateWindow` counts events in a sliding window;
:class:`DiscordLimits` holds the numbers planned for (docs/discord-limits.md).
"""

from __future__ import annotations

import contextvars
import enum
from collections import deque
from dataclasses import dataclass


class Priority(enum.IntEnum):
    """Lower goes first. REST calls outside the scheduler (interaction responses with their
    3 s deadline, typing) count as URGENT. A final text goes before a first text or a split
    (an answer done is what people wait for; a first text only replaces "typing"), and both
    before intermediate edits."""

    URGENT = 0
    FINAL = 1
    FIRST = 2
    INTERMEDIATE = 3
    STATUS = 4


# The priority of the REST call being made in this task (read by the global budget).
CURRENT_PRIORITY: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "ollacord_rest_priority", default=Priority.URGENT
)


# Discord's own global limit: REST requests per second per bot token, all processes together.
DISCORD_GLOBAL_LIMIT = 50


@dataclass(frozen=True)
class DiscordLimits:
    """Discord's limits as planned for, with headroom.

    Discord publishes no number for message edits; "5 per 5 s per channel" is the long-standing
    observed bucket, which the per-channel ``X-RateLimit-*`` headers confirm. The global limit
    is 50 requests per second (docs/discord-limits.md#global-limit).
    """

    channel_limit: int = 5
    channel_window: float = 5.25  # 5 s plus a margin for network jitter
    global_limit: int = 45  # of Discord's 50/s: room for discord.py's own calls and jitter
    # Discord counts a call when it arrives: a call sent just before its 1 s window turns but
    # late on the way counts in the next one. Planning over 1.05 s, calls up to 50 ms late
    # still never make more than 45 in any of Discord's windows.
    global_window: float = 1.05
    intermediate_share: float = 0.6  # of the global budget, at most, for intermediate edits


# A plan tightened by a 429 wins back one event per window after this long without another.
RECOVERY = 600.0


class RateWindow:
    """At most ``limit`` events in any ``window`` seconds (a sliding window: never more than
    Discord's fixed window allows, wherever its window starts), corrected by what Discord
    says (:meth:`observe`, :meth:`rate_limited`): the plan is a model, Discord's headers are
    the truth."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self._planned = limit
        self.window = window
        self._times: deque[float] = deque()
        # Discord's last word: this many more events fit until then.
        self._cap_until = float("-inf")
        self._cap_left = 0
        self._limited_until = float("-inf")  # the end of the last 429's wait

    def observe(self, now: float, remaining: int, reset_after: float) -> None:
        """Discord's ``X-RateLimit-Remaining`` and ``Reset-After`` for this bucket, just read:
        no more than ``remaining`` further events until ``reset_after`` seconds from now."""
        self._cap_until = now + reset_after
        self._cap_left = remaining

    def rate_limited(self, now: float, retry_after: float) -> None:
        """A 429 happened anyway: nothing more until Discord's ``retry_after``, and from now
        on one event fewer per window for this bucket. The calls in flight when the limit was
        hit come back with 429s together: one incident, one event fewer."""
        if now >= self._limited_until:
            self.limit = max(1, self.limit - 1)
        self._limited_until = max(self._limited_until, now + retry_after)
        self.observe(now, 0, self._limited_until - now)

    def _expire(self, now: float) -> None:
        if self.limit < self._planned and now - self._limited_until >= RECOVERY:
            self.limit += 1  # a rare 429 must not slow a bot that runs for weeks for good
            self._limited_until = now
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def wait(self, now: float, *, keep_free: int = 0) -> float:
        """Seconds until one more event fits while ``keep_free`` slots stay unused."""
        self._expire(now)
        capped = now < self._cap_until and self._cap_left - keep_free <= 0
        cap_wait = self._cap_until - now if capped else 0.0
        allowed = self.limit - keep_free
        if allowed <= 0:
            return max(self.window, cap_wait)
        excess = len(self._times) - allowed + 1
        if excess <= 0:
            return cap_wait
        return max(0.0, self._times[excess - 1] + self.window - now, cap_wait)

    def record(self, now: float) -> None:
        self._times.append(now)
        if now < self._cap_until:
            self._cap_left -= 1
