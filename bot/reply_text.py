"""What a reply looks like on Discord: text split into messages, as it grows.

Pure: :class:`ReplyText` decides the messages (splitting with :mod:`bot.splitter`).
Sending is done elsewhere (:mod:`bot.reply_writer` through a :class:`MessageTarget`).
"""

from __future__ import annotations

import enum
from typing import Protocol

from .splitter import DISCORD_LIMIT, close_open_fence, discord_len, take_chunk

# The most close_open_fence() adds to a text: one "```".
CLOSING_FENCE_UNITS = 3


class Controls(enum.Enum):
    """The buttons under a reply's first message."""

    NONE = "none"
    STOP = "stop"  # while it streams
    REGENERATE = "regenerate"  # once it is stored as the channel's latest answer
    REGENERATE_REASONING = "regenerate+reasoning"  # ... and the model's reasoning is kept
    REASONING = "reasoning"  # an older answer whose reasoning can still be read

    @classmethod
    def after(cls, *, stored: bool, reasoning: bool) -> Controls:
        """The buttons of a finished answer."""
        if not stored:
            return cls.NONE
        return cls.REGENERATE_REASONING if reasoning else cls.REGENERATE

    @property
    def regenerate(self) -> bool:
        return self in (Controls.REGENERATE, Controls.REGENERATE_REASONING)

    @property
    def reasoning(self) -> bool:
        return self in (Controls.REGENERATE_REASONING, Controls.REASONING)


class MessageTarget(Protocol):
    """Where the messages of one reply go. Index 0 is the first message (the Discord reply).

    ``controls`` are the buttons to show on that message (None: leave them as they are; only
    the reply's last message carries any);
    ``file`` (name, bytes), a file to attach to it (given only when there is one). Both
    return True when done, None when it failed for now (try again a little later), and when
    Discord refuses for good (deleted channel, missing permission: stop the reply) the reason
    as a short text, or False."""

    async def send(
        self,
        index: int,
        text: str,
        *,
        controls: Controls | None,
        file: tuple[str, bytes] | None = None,
    ) -> bool | str | None: ...

    async def edit(
        self,
        index: int,
        text: str,
        *,
        controls: Controls | None,
        file: tuple[str, bytes] | None = None,
    ) -> bool | str | None: ...

    async def delete(self, index: int) -> bool | str | None:
        """Remove a message (one a regenerated, shorter answer no longer needs)."""
        ...

    def overtaken(self, index: int) -> bool:
        """Whether other messages were posted in the channel after this one."""
        ...

    async def replace(self, index: int, text: str, *, controls: Controls) -> bool | str | None:
        """Post ``text`` as a new message at the bottom of the channel in place of message
        ``index`` (which is then deleted)."""
        ...


class ReplyText:
    """A growing reply as Discord messages of at most ``limit`` characters.

    Full messages are frozen (they will not change again) and the split is done by
    :func:`take_chunk`, which never breaks a code block; the last message keeps growing.

    With ``max_messages``, an answer that needs more messages than that stops growing on
    Discord: its last message becomes ``overflow`` (a line saying the whole answer is attached
    as a file, see :meth:`attachment`), instead of a wall of messages.
    """

    ATTACHMENT_NAME = "answer.md"

    def __init__(
        self, limit: int = DISCORD_LIMIT, *, max_messages: int | None = None, overflow: str = ""
    ) -> None:
        self.limit = limit
        self.max_messages = max_messages
        self.overflow = overflow
        self.text = ""  # everything fed so far, exactly as the model wrote it
        self.note = ""
        self._frozen: list[str] = []
        self._tail = ""
        self._tail_units = 0  # discord_len(self._tail), kept as text arrives

    @property
    def frozen_count(self) -> int:
        """Messages complete so far (they will not change again)."""
        return len(self._frozen)

    @property
    def overflowed(self) -> bool:
        return self.max_messages is not None and len(self._frozen) >= self.max_messages

    def feed(self, delta: str) -> None:
        self.text += delta
        if not self.overflowed:  # past the last message, only the file grows
            self._append(delta)

    def add_note(self, note: str) -> None:
        """A notice after the text (cut off, stopped, an error): shown, never stored."""
        self.note = note
        if not self.overflowed:
            self._append(f"\n\n{note}" if self.messages() else note)

    def attachment(self) -> tuple[str, bytes] | None:
        """The whole answer as a file, for an answer too long for its messages."""
        return (self.ATTACHMENT_NAME, self.text.encode()) if self.overflowed else None

    def _append(self, delta: str) -> None:
        self._tail += delta
        self._tail_units += discord_len(delta)
        # The per-token path: closing an open code block adds at most a fence (3 units), so
        # below that the tail surely fits and nothing is scanned.
        if self._tail_units + CLOSING_FENCE_UNITS <= self.limit:
            return
        while discord_len(close_open_fence(self._tail)) > self.limit:
            chunk, self._tail = take_chunk(self._tail, self.limit)
            if chunk:  # "" when the window was only whitespace: nothing to show
                self._frozen.append(chunk)
        self._tail_units = discord_len(self._tail)

    def messages(self) -> list[str]:
        """The messages as they should look now."""
        messages = list(self._frozen)
        if self.max_messages is not None and len(messages) >= self.max_messages:
            last = f"{self.overflow}\n\n{self.note}" if self.note else self.overflow
            return [*messages[: self.max_messages - 1], last]
        tail = close_open_fence(self._tail)
        if tail.strip():
            messages.append(tail)
        return messages
