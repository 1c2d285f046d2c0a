"""Where a reply lands on Discord: its messages (created and edited for the scheduler) and,
until its first words, the typing indicator."""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord

from ..background import cancel_and_wait
from ..metrics import Metrics
from ..rate_limits import CURRENT_PRIORITY, Priority
from ..reply_text import Controls
from ..reply_writer import ReplyWriter
from ..turn import ReplyUndeliverable
from .buttons import controls_view
from .failures import DISCORD_FAILURES, failure_cause, failure_code, failure_status

log = logging.getLogger(__name__)

# Discord drops the typing indicator after 10 s; refresh it well before.
TYPING_REFRESH_SECONDS = 8.0

# Discord error codes (docs/discord-limits.md#error-codes).
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
ARCHIVED_THREAD = 50083
LOCKED_THREAD = 160005
# Refusals that no retry will change: the reply stops (and stores nothing).
FOR_GOOD = {
    UNKNOWN_CHANNEL: "the channel was deleted (10003)",
    MISSING_ACCESS: "the bot cannot see this channel (50001)",
    MISSING_PERMISSIONS: "the bot lacks a permission here, e.g. Send Messages (50013)",
    ARCHIVED_THREAD: "the thread is archived (50083)",
    LOCKED_THREAD: "the thread is locked (160005)",
}
# Refusals a channel's admins can fix by giving the bot a permission.
PERMISSION_CODES = {MISSING_ACCESS, MISSING_PERMISSIONS}


class DiscordReplyTarget:
    """The messages of one reply: the first is a Discord reply to the user's message.

    Failures never end the reply (discord.py has already retried 5xx and 429s): a deleted
    message is replaced by a new one, anything else is logged; the writer tries again later
    (None) or gives up (False) when Discord refuses for good."""

    def __init__(
        self,
        source: discord.Message,
        metrics: Metrics | None = None,
        *,
        asker: int | None = None,
        asked: int | None = None,
        existing: Sequence[discord.Message] = (),
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.asker = asker if asker is not None else source.author.id
        self.asked = asked if asked is not None else source.id
        # Regenerate writes over the earlier answer's messages.
        self.messages: list[discord.Message | None] = list(existing)
        self.refused_code: int | None = None  # Discord's code when it refused for good
        # Per message index, the nonce of its create until the create succeeds: Discord makes
        # one message per nonce (discord.py sends enforce_nonce), so a create tried again
        # after the connection dropped before Discord's answer cannot post the part twice.
        self._nonces: dict[int, int] = {}
        # Told of each message the reply creates (the reply is then written into it).
        self.on_new_message: Callable[[discord.Message], Awaitable[None]] | None = None

    def _view(self, controls: Controls) -> discord.ui.View:
        return controls_view(controls, self.source.channel.id, self.asked, self.asker)

    def _failed(self, action: str, exc: Exception, index: int) -> str | None:
        """Log a failed update; the refusal's reason if no retry can help, else None."""
        if self.metrics:
            self.metrics.discord_failures.labels(kind=action).inc()
        code = failure_code(exc)
        refused = FOR_GOOD.get(code) if code is not None else None
        if refused is not None:
            self.refused_code = code
        log.log(
            logging.WARNING if refused else logging.ERROR,
            "event=discord_%s_failed channel=%s index=%d status=%s code=%s cause=%r%s",
            action,
            self.source.channel.id,
            index,
            failure_status(exc),
            code,
            failure_cause(exc),
            " outcome=reply_stopped" if refused else "",
        )
        return refused

    async def send(
        self,
        index: int,
        text: str,
        *,
        controls: Controls | None,
        file: tuple[str, bytes] | None = None,
    ) -> bool | str | None:
        # fail_if_not_exists=False: if the user deleted their message, still answer.
        reference = self.source.to_reference(fail_if_not_exists=False) if index == 0 else None
        extra: dict[str, Any] = {}
        if controls is not None and controls is not Controls.NONE:
            extra["view"] = self._view(controls)
        if file is not None:
            extra["file"] = discord.File(io.BytesIO(file[1]), filename=file[0])
        nonce = self._nonces.setdefault(index, random.getrandbits(63))
        try:
            message = await self.source.channel.send(
                text,
                reference=reference,  # type: ignore[arg-type]
                nonce=nonce,
                **extra,
            )
        except DISCORD_FAILURES as exc:
            return self._failed("send", exc, index)  # None: try again a little later
        del self._nonces[index]
        if self.metrics:
            self.metrics.discord_updates.labels(kind="send").inc()
        if index < len(self.messages):
            self.messages[index] = message
        else:
            self.messages.append(message)
        if self.on_new_message is not None:
            await self.on_new_message(message)
        return True

    async def edit(
        self,
        index: int,
        text: str,
        *,
        controls: Controls | None,
        file: tuple[str, bytes] | None = None,
    ) -> bool | str | None:
        message = self.messages[index] if index < len(self.messages) else None
        if message is None:
            return await self.send(index, text, controls=controls, file=file)
        extra: dict[str, Any] = {}
        if controls is not None:
            extra["view"] = None if controls is Controls.NONE else self._view(controls)
        if file is not None:
            extra["attachments"] = [discord.File(io.BytesIO(file[1]), filename=file[0])]
        try:
            # Keep the edited message: its buttons are read again when it is no longer the latest.
            self.messages[index] = await message.edit(content=text, **extra)
        except DISCORD_FAILURES as exc:
            if failure_code(exc) == UNKNOWN_MESSAGE:
                # Someone deleted the reply mid-stream: carry on in a new message.
                if self.metrics:
                    self.metrics.discord_failures.labels(kind="edit").inc()
                channel = self.source.channel.id
                log.info("event=reply_message_deleted channel=%s index=%d", channel, index)
                self.messages[index] = None
                return await self.send(index, text, controls=controls, file=file)
            return self._failed("edit", exc, index)
        if self.metrics:
            self.metrics.discord_updates.labels(kind="edit").inc()
        return True

    def overtaken(self, index: int) -> bool:
        message = self.messages[index] if index < len(self.messages) else None
        latest = getattr(self.source.channel, "last_message_id", None)  # kept by the gateway
        return message is not None and latest is not None and latest != message.id

    async def replace(self, index: int, text: str, *, controls: Controls) -> bool | str | None:
        old = self.messages[index] if index < len(self.messages) else None
        self.messages[index : index + 1] = []
        ok = await self.send(index, text, controls=controls)
        if ok is not True:
            self.messages.insert(index, old)  # still the one shown: try again later
            return ok
        if old is not None:
            try:
                await old.delete()
            except DISCORD_FAILURES as exc:  # a stale queue place is only untidy
                log.info(
                    "event=placeholder_delete_failed message=%s cause=%r",
                    old.id,
                    failure_cause(exc),
                )
        return True

    async def delete(self, index: int) -> bool | str | None:
        message = self.messages[index] if index < len(self.messages) else None
        if message is not None:
            try:
                await message.delete()
            except DISCORD_FAILURES as exc:
                if failure_code(exc) != UNKNOWN_MESSAGE:  # already gone is what was wanted
                    return self._failed("delete", exc, index)
        del self.messages[index]
        return True


class DiscordReplySink:
    """The engine's sink for a Discord reply: the writer (through the scheduler) plus the
    typing indicator from the moment the request goes out until the first words show.
    ``footer`` is a note the reply always ends with (e.g. that attachments were not read).
    ``show_queue``: show the queue place while waiting (not over an answer being redone)."""

    def __init__(
        self,
        writer: ReplyWriter,
        channel: discord.abc.Messageable,
        *,
        footer: str | None = None,
        show_queue: bool = True,
    ) -> None:
        self.writer = writer
        self.channel = channel
        self.footer = footer
        self.show_queue = show_queue
        self._typing: asyncio.Task[None] | None = None

    def queued(self, ahead: int) -> None:
        if self.show_queue:
            self.writer.queued(ahead)

    def thinking(self, seconds: float) -> None:
        self.writer.thinking(seconds)

    async def started(self) -> None:
        self._typing = asyncio.create_task(self._keep_typing())

    async def first_text(self) -> None:
        await self.stop_typing()

    async def feed(self, delta: str) -> None:
        try:
            await self.writer.feed(delta)
        except ReplyUndeliverable:
            await self.stop_typing()
            raise

    async def finish(
        self, note: str | None = None, *, stored: bool = False, reasoning: bool = False
    ) -> bool:
        await self.stop_typing()
        if self.footer:
            note = f"{note}\n{self.footer}" if note else self.footer
        return await self.writer.finish(note, stored=stored, reasoning=reasoning)

    async def stop_typing(self) -> None:
        task, self._typing = self._typing, None
        if task is not None:
            await cancel_and_wait(task)

    async def _keep_typing(self) -> None:
        """Show "typing..." until the first words arrive (a cold model can take a minute).
        Lowest priority in the REST budget: under load, replies matter more than typing."""
        CURRENT_PRIORITY.set(Priority.STATUS)
        try:
            while True:
                await self.channel.typing()
                await asyncio.sleep(TYPING_REFRESH_SECONDS)
        except Exception as exc:  # typing is decoration: a failure must not end anything
            log.info(
                "event=typing_failed channel=%s cause=%r", getattr(self.channel, "id", "?"), exc
            )
