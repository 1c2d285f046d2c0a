"""The reply writer: one reply's wanted state on Discord, fed by the engine as it streams.

The engine feeds text (never waiting for Discord); the scheduler (:mod:`bot.discord_scheduler`)
decides when the writer may push the next update to its :class:`MessageTarget`, one REST call
at a time, until Discord shows what the writer wants.

The buttons (Stop while it streams; Regenerate, Reasoning once done) sit under the reply's
*last* message, so that the end of an answer is one request: its final text and its buttons in
the same edit. When an answer grows a new message, the edit that completes the previous one
also takes its buttons away, and the new message is created with them: nothing is left to fix
at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from .clock import Clock
from .rate_limits import Priority
from .reply_text import Controls, MessageTarget, ReplyText
from .splitter import DISCORD_LIMIT
from .turn import QuietEvents, ReplyUndeliverable
from .user_messages import REPLY_OVERFLOW, queued_status, thinking_status


class WriterHost(Protocol):
    """What a writer needs from its scheduler."""

    clock: Clock

    def poke(self, writer: ReplyWriter) -> None:
        """Something changed: an update may be due."""
        ...

    def done(self, writer: ReplyWriter) -> None:
        """The writer has nothing more to send."""
        ...


# A failed update is tried again after 0.5 s, 1 s, 2 s; then the reply stops trying.
RETRIES = 3
RETRY_DELAY = 0.5


class ReplyWriter(QuietEvents):
    """One reply's wanted state on Discord. The engine feeds it (never waiting for Discord);
    the scheduler makes Discord match it."""

    def __init__(
        self,
        scheduler: WriterHost,
        channel_id: int,
        target: MessageTarget,
        *,
        limit: int = DISCORD_LIMIT,
        max_messages: int | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.channel_id = channel_id
        self.target = target
        self.content = ReplyText(limit, max_messages=max_messages, overflow=REPLY_OVERFLOW)
        self.file_shown = False  # the whole answer attached, for one too long for its messages
        self.status: str | None = None  # e.g. "queued: 2 ahead", shown until text arrives
        self.shown: list[str] = []
        self.status_shown = False  # the first message shows a status (queue place, thinking)
        self.final = False
        # Buttons: Stop while streaming; what finish() says once done (Regenerate if stored).
        # They go under the last message; ``shown_buttons`` are those of each shown message.
        self.controls = Controls.STOP
        self.shown_buttons: list[Controls] = []
        self.updates = 0
        self.last_update: float | None = None
        self.failures = 0  # updates in a row that Discord failed (for now)
        # Why Discord refuses this reply for good (deleted channel, missing permission).
        self.refused: str | None = None
        self.delivered = True  # False once an update was given up: the reader missed text
        self.retry_at: float | None = None
        self.waiting_since = scheduler.clock()
        # Set by the scheduler: no intermediate update is due before then, unless a message
        # completes (a split) or the reply ends.
        self.paced_until = float("-inf")
        self.paced_at_message = 0
        self._delivered: asyncio.Future[None] | None = None

    @property
    def text(self) -> str:
        return self.content.text

    def desired(self) -> list[str]:
        messages = self.content.messages()
        if not messages and self.status and not self.final:
            return [self.status]
        if not messages and self.final and self.shown:
            # Over with no text of its own (a refused Regenerate): what is shown stays.
            return list(self.shown)
        return messages

    def pending(self) -> bool:
        desired = self.desired()
        buttons = self._wanted_buttons(len(desired))
        return (
            len(desired) > len(self.shown)
            or any(shown != want for shown, want in zip(self.shown, desired, strict=False))
            or any(s is not w for s, w in zip(self.shown_buttons, buttons, strict=False))
            or (self._wanted_file() is not None and not self.file_shown)
            or (self.final and len(self.shown) > len(desired))  # an earlier answer was longer
        )

    def _wanted_buttons(self, count: int) -> list[Controls]:
        """The buttons each of ``count`` messages should carry: only the last has any."""
        return [Controls.NONE] * (count - 1) + [self._wanted_controls()] if count else []

    def _wanted_file(self) -> tuple[str, bytes] | None:
        """The whole answer as a file, once it is complete (only for an overflowing one)."""
        return self.content.attachment() if self.final else None

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
        """Add model text. Never waits for Discord (the stream goes at Ollama's pace).
        Raises :class:`ReplyUndeliverable` once Discord refused the reply for good."""
        if self.refused is not None:
            raise ReplyUndeliverable(self.refused)
        if delta:
            self.content.feed(delta)
            self.scheduler.poke(self)

    def set_status(self, status: str | None) -> None:
        self.status = status
        if self.refused is None:
            self.scheduler.poke(self)

    def queued(self, ahead: int) -> None:
        """The queue place is shown in the message that becomes the answer."""
        self.set_status(queued_status(ahead))

    def thinking(self, seconds: float) -> None:
        """While the model reasons, the message that becomes the answer says so."""
        self.set_status(thinking_status(seconds))

    async def finish(
        self, note: str | None = None, *, stored: bool = False, reasoning: bool = False
    ) -> bool:
        """The text is complete: write the final state now, and wait until Discord shows it.
        ``stored``: the reply is to be kept in the history (so it may be regenerated).
        Returns whether the reader saw it all (False if Discord refused or kept failing)."""
        self.final = True
        if self.refused is not None:
            self.scheduler.done(self)
            return False
        if note:
            self.content.add_note(note)
        self.controls = Controls.after(stored=stored, reasoning=reasoning)
        if self.pending():
            self._delivered = asyncio.get_running_loop().create_future()
            self.scheduler.poke(self)
            await self._delivered
        else:
            self.scheduler.done(self)
        return self.delivered

    def _settle(self) -> None:
        if self.final and not self.pending():
            if self._delivered is not None and not self._delivered.done():
                self._delivered.set_result(None)
            self.scheduler.done(self)

    def give_up(self, refused: str | None = None) -> None:
        """Stop trying (the target logged why): after failures for now, or for good when
        Discord ``refused`` (then nothing more is sent, and the engine stops the reply)."""
        self.delivered = False
        if refused is not None:
            self.refused = refused
        self.shown = self.desired()
        self.shown_buttons = self._wanted_buttons(len(self.shown))
        self._settle()

    async def push(self) -> None:
        """One REST call towards the wanted state: send the next message, edit one (its text
        and its buttons together), or remove one an earlier, longer answer left."""
        desired = self.desired()
        buttons = self._wanted_buttons(len(desired))
        showing_status = bool(desired) and not self.content.messages() and desired == [self.status]
        step = self._next_step(desired, buttons)
        if step is None:
            if self.pending():  # nothing left to send yet still not as wanted: never spin
                self.give_up()
            self._settle()
            return
        index, text, with_file, call = step
        if not self._landed(await call()):
            return
        self.updates += 1
        self.status_shown = showing_status
        if index >= len(desired):  # removed
            del self.shown[index], self.shown_buttons[index]
        elif index >= len(self.shown):
            self.shown.append(text)
            self.shown_buttons.append(buttons[index])
        else:
            self.shown[index] = text
            self.shown_buttons[index] = buttons[index]
        if with_file:
            self.file_shown = True
        self._settle()

    def _next_step(
        self, desired: list[str], buttons: list[Controls]
    ) -> tuple[int, str, bool, Callable[[], Awaitable[bool | str | None]]] | None:
        """The one call that brings Discord closest to ``desired``: (message index, its text,
        whether the file goes with it, the call), or None when nothing is left to do."""
        file = self._wanted_file()
        attach = file is not None and not self.file_shown
        # A queue place that other messages have since pushed up the channel: the answer is
        # posted fresh at the bottom instead, so that the channel reads in the order answers
        # were written.
        if self.status_shown and self.content.messages() and self.target.overtaken(0):
            return (
                0,
                desired[0],
                False,
                lambda: self.target.replace(0, desired[0], controls=buttons[0]),
            )
        for index, text in enumerate(desired):
            # The file goes with the last message (only given when there is one to attach).
            extra = {"file": file} if attach and index == len(desired) - 1 else {}
            if index >= len(self.shown):
                wanted = buttons[index]
                return (
                    index,
                    text,
                    bool(extra),
                    partial(self.target.send, index, text, controls=wanted, **extra),
                )
            changed = buttons[index] if self.shown_buttons[index] is not buttons[index] else None
            if self.shown[index] != text or changed is not None or extra:
                return (
                    index,
                    text,
                    bool(extra),
                    partial(self.target.edit, index, text, controls=changed, **extra),
                )
        if self.final and len(self.shown) > len(desired):
            last = len(self.shown) - 1
            return last, "", False, lambda: self.target.delete(last)
        return None

    def _landed(self, ok: bool | str | None) -> bool:
        """Whether the call did what it was asked; else note the failure (try again later, or
        give up)."""
        now = self.scheduler.clock()
        self.last_update = now
        if ok is None:
            # Failed for now: the same update again after a pause, a few times, then give up.
            self.failures += 1
            if self.failures > RETRIES:
                self.give_up()
            else:
                self.retry_at = now + RETRY_DELAY * 2 ** (self.failures - 1)
            return False
        self.failures = 0
        self.retry_at = None
        if ok is False or isinstance(ok, str):
            self.give_up(ok or "Discord refused the update")
            return False
        return True
