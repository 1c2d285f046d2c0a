"""The reply writer: turns a growing text into a few Discord messages, edited as it grows.

Pure decisions (where to split, when to edit) live here and in :mod:`bot.splitter`; the actual
sending is a :class:`MessageTarget` given by the caller (the Discord layer), so this module
never imports discord and is tested without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .splitter import DISCORD_LIMIT, close_open_fence, discord_len, take_chunk

Clock = Callable[[], float]


class EditThrottle:
    """At most one update per ``interval`` seconds, measured with an injected clock.

    One throttle is shared by every reply streaming in the same Discord channel, because
    Discord's edit rate limit is per channel, not per message.
    """

    def __init__(self, interval: float, clock: Clock) -> None:
        self.interval = interval
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        return self._last is None or self.clock() - self._last >= self.interval

    def mark(self) -> None:
        self._last = self.clock()


class MessageTarget(Protocol):
    """Where the messages of one reply go. Index 0 is the first message (the Discord reply)."""

    async def send(self, index: int, text: str) -> None: ...

    async def edit(self, index: int, text: str) -> None: ...


class ReplyWriter:
    """Feed it text deltas; it keeps Discord's view of the reply close behind, within limits.

    * The first visible text is sent at once (replies should start within a second).
    * Later updates go out only when the channel's throttle allows, and always carry the
      latest full text, so skipped intermediate states cost nothing.
    * Text over ``limit`` continues in further messages; a finished message is frozen and the
      split is done by :func:`take_chunk`, which never breaks a code block.
    * :meth:`finish` writes the final text immediately, whatever the throttle says.
    """

    def __init__(
        self,
        target: MessageTarget,
        throttle: EditThrottle,
        *,
        limit: int = DISCORD_LIMIT,
    ) -> None:
        self.target = target
        self.throttle = throttle
        self.limit = limit
        self.text = ""  # everything fed so far, exactly as the model wrote it
        self._frozen: list[str] = []  # messages that are full and will not change again
        self._tail = ""  # the text of the message still growing
        self._shown: list[str] = []  # what Discord shows, per message
        self.updates = 0  # sends + edits made, for logs and tests

    @property
    def shown(self) -> list[str]:
        return list(self._shown)

    def desired(self) -> list[str]:
        """The messages as they should look now."""
        messages = list(self._frozen)
        tail = close_open_fence(self._tail)
        if tail.strip():
            messages.append(tail)
        return messages

    def _append(self, delta: str) -> None:
        self._tail += delta
        while discord_len(close_open_fence(self._tail)) > self.limit:
            chunk, self._tail = take_chunk(self._tail, self.limit)
            if chunk:  # "" when the window was only whitespace: nothing to show
                self._frozen.append(chunk)

    async def feed(self, delta: str) -> None:
        if not delta:
            return
        self.text += delta
        self._append(delta)
        if not self._shown or self.throttle.ready():
            await self.sync()

    async def finish(self, note: str | None = None) -> None:
        """Write the final state now; ``note`` (an error or cut-off notice) goes at the end."""
        if note:
            self._append(f"\n\n{note}" if self.desired() else note)
        await self.sync()

    async def sync(self) -> None:
        """Make Discord match :meth:`desired`: edit changed messages, send new ones."""
        desired = self.desired()
        if not desired:
            return
        self.throttle.mark()
        for index, text in enumerate(desired):
            if index >= len(self._shown):
                await self.target.send(index, text)
                self._shown.append(text)
                self.updates += 1
            elif self._shown[index] != text:
                await self.target.edit(index, text)
                self._shown[index] = text
                self.updates += 1
