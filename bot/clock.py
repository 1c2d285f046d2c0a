"""Time as the bot sees it: an injected clock (tests pass a fake one) and a throttle built on it.

SimCord freezes ``time.monotonic`` inside bot code (docs/testing.md), so nothing that decides
*when* to act reads the system clock directly: it is handed a :data:`Clock`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
"""Seconds, monotonic (``time.monotonic`` in production)."""

Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep`` in production; tests advance a virtual clock instead."""


class EditThrottle:
    """At most one update per ``interval`` seconds, measured with an injected clock."""

    def __init__(self, interval: float, clock: Clock) -> None:
        self.interval = interval
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        return self._last is None or self.clock() - self._last >= self.interval

    def mark(self) -> None:
        self._last = self.clock()


def as_ms(nanoseconds: int | None) -> str:
    """Ollama's durations (nanoseconds) as milliseconds for a log line; "?" when not given."""
    return "?" if nanoseconds is None else f"{nanoseconds / 1e6:.1f}"
