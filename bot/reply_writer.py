"""The reply writer: one reply's wanted state on Discord, fed by the engine as it streams.

The engine feeds text (never waiting for Discord); the scheduler (:mod:`bot.discord_scheduler`)
decides when the writer may push the next update to its :class:`MessageTarget`, one REST call
at a time, until Discord shows what the writer wants.
"""

from __future__ import annotations

import asyncio
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
        self.final = False
        # Buttons: Stop while streaming; what finish() says once done (Regenerate if stored).
        self.controls = Controls.STOP
        self.shown_controls: Controls | None = None
        self.updates = 0
        self.last_update: float | None = None
        self.failures = 0  # updates in a row that Discord failed (for now)
        # Why Discord refuses this reply for good (deleted channel, missing permission).
        self.refused: str | None = None
        self.delivered = True  # False once an update was given up: the reader missed text
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
        if not messages and self.final and self.shown:
            # Over with no text of its own (a refused Regenerate): what is shown stays.
            return list(self.shown)
        return messages

    def pending(self) -> bool:
        desired = self.desired()
        return (
            len(desired) > len(self.shown)
            or any(shown != want for shown, want in zip(self.shown, desired, strict=False))
            or (bool(self.shown) and self.shown_controls is not self._wanted_controls())
            or (self._wanted_file() is not None and not self.file_shown)
        )

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
        self.shown_controls = self._wanted_controls()
        self._settle()

    async def push(self) -> None:
        """One REST call towards the wanted state: send the next message or edit one."""
        desired = self.desired()
        controls = self._wanted_controls()
        file = self._wanted_file()
        attach = file is not None and not self.file_shown
        for index, text in enumerate(desired):
            # The file goes with the last message (only given when there is one to attach).
            with_file = {"file": file} if attach and index == len(desired) - 1 else {}
            if index >= len(self.shown):
                first = controls if index == 0 else None
                ok = await self.target.send(index, text, controls=first, **with_file)
                break
            if (
                self.shown[index] != text
                or (index == 0 and self.shown_controls is not controls)
                or with_file
            ):
                changed = controls if index == 0 and self.shown_controls is not controls else None
                ok = await self.target.edit(index, text, controls=changed, **with_file)
                break
        else:
            if self.pending():  # nothing left to send yet still not as wanted: never spin
                self.give_up()
            self._settle()
            return
        now = self.scheduler.clock()
        self.last_update = now
        if ok is None:
            # Failed for now: the same update again after a pause, a few times, then give up.
            self.failures += 1
            if self.failures > RETRIES:
                self.give_up()
            else:
                self.retry_at = now + RETRY_DELAY * 2 ** (self.failures - 1)
            return
        self.failures = 0
        self.retry_at = None
        if ok is False or isinstance(ok, str):
            self.give_up(ok or "Discord refused the update")
            return
        self.updates += 1
        if with_file:
            self.file_shown = True
        if index >= len(self.shown):
            self.shown.append(text)
        else:
            self.shown[index] = text
        if index == 0:
            self.shown_controls = controls
        self._settle()
