"""What a reply looks like on Discord: text split into messages, as it grows.

Pure: :class:`ReplyText` decides the messages (splitting with :mod:`bot.splitter`).
Sending is done elsewhere (:mod:`bot.reply_writer` through a :class:`MessageTarget`).
"""

from __future__ import annotations

import enum
from typing import Protocol

from .splitter import DISCORD_LIMIT, close_open_fence, discord_len, take_chunk


class Controls(enum.Enum):
    """The buttons under a reply's first message."""

    NONE = "none"
    STOP = "stop"  # while it streams
    REGENERATE = "regenerate"  # once it is stored as the channel's latest answer


class MessageTarget(Protocol):
    """Where the messages of one reply go. Index 0 is the first message (the Discord reply).

    ``controls`` are the buttons to show on that message (None: leave them as they are). Both
    return True when done, None when it failed for now (try again a little later), and when
    Discord refuses for good (deleted channel, missing permission: stop the reply) the reason
    as a short text, or False."""

    async def send(
        self, index: int, text: str, *, controls: Controls | None
    ) -> bool | str | None: ...

    async def edit(
        self, index: int, text: str, *, controls: Controls | None
    ) -> bool | str | None: ...


class ReplyText:
    """A growing reply as Discord messages of at most ``limit`` characters.

    Full messages are frozen (they will not change again) and the split is done by
    :func:`take_chunk`, which never breaks a code block; the last message keeps growing.
    """

    def __init__(self, limit: int = DISCORD_LIMIT) -> None:
        self.limit = limit
        self.text = ""  # everything fed so far, exactly as the model wrote it
        self._frozen: list[str] = []
        self._tail = ""

    def feed(self, delta: str) -> None:
        self.text += delta
        self._append(delta)

    def add_note(self, note: str) -> None:
        """A notice after the text (cut off, stopped, an error): shown, never stored."""
        self._append(f"\n\n{note}" if self.messages() else note)

    def _append(self, delta: str) -> None:
        self._tail += delta
        while discord_len(close_open_fence(self._tail)) > self.limit:
            chunk, self._tail = take_chunk(self._tail, self.limit)
            if chunk:  # "" when the window was only whitespace: nothing to show
                self._frozen.append(chunk)

    def messages(self) -> list[str]:
        """The messages as they should look now."""
        messages = list(self._frozen)
        tail = close_open_fence(self._tail)
        if tail.strip():
            messages.append(tail)
        return messages
