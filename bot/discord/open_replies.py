"""Replies a killed process left half-written.

While a reply is written, the store knows which message it is in (``set_open_reply``); it is
forgotten when the reply ends, however it ends. A process killed mid-reply (``kill -9``, the
OOM killer, a power cut) cannot end it, so the next start does: the message gets the restart
note and loses its Stop button, and the asker knows to ask again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import discord

from ..app import Services
from ..splitter import DISCORD_LIMIT, discord_len
from ..user_messages import RESTART_NOTE
from .failures import DISCORD_FAILURES, failure_cause
from .intake import conversation_id

PREFIX = conversation_id(0).removesuffix("0")  # "discord:"

log = logging.getLogger(__name__)


class OpenReplies:
    """Keeps the store's record of the reply being written in each conversation."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._left: dict[str, int] = {}  # what earlier processes left open, read at start
        # Records are written in order by one short-lived task: a reply never waits for them.
        self._writes: deque[tuple[str, int | None]] = deque()
        self._writer: asyncio.Task[None] | None = None

    async def read_left_open(self) -> None:
        """Before connecting: the replies left open, before this process opens any (it may
        answer messages before it is told it is ready)."""
        try:
            self._left = await self.services.store.open_replies()
        except Exception as exc:
            log.warning("event=abandoned_replies_unknown cause=%r", str(exc))

    async def opened(self, conversation: str, message: discord.Message) -> None:
        self._record(conversation, message.id)

    def closed(self, conversation: str) -> None:
        self._record(conversation, None)

    def _record(self, conversation: str, message_id: int | None) -> None:
        self._writes.append((conversation, message_id))
        if self._writer is None or self._writer.done():
            self._writer = self.services.background.spawn(self._write())

    async def _write(self) -> None:
        while self._writes:
            conversation, message_id = self._writes.popleft()
            try:
                await self.services.store.set_open_reply(conversation, message_id)
            except Exception as exc:
                # The reply is not affected; only its ending after a kill (or, for a close, a
                # later start adds the note to a reply that had finished).
                log.warning(
                    "event=open_reply_not_kept conversation=%s cause=%r", conversation, str(exc)
                )

    async def close_abandoned(self, client: discord.Client) -> None:
        """Once connected: end every reply a killed process left open in this process's
        channels (those read by :meth:`read_left_open`)."""
        abandoned, self._left = self._left, {}
        for conversation, message_id in abandoned.items():
            if not conversation.startswith(PREFIX):
                continue  # the console's (nothing to edit there)
            channel = await self._channel(client, int(conversation.removeprefix(PREFIX)))
            if channel is None:
                continue  # another shard's channel (its process ends it), or gone
            if not await self._free(conversation):
                continue  # a running process is still writing it (a rolling restart)
            await self._end(conversation, channel, message_id)

    @staticmethod
    async def _channel(client: discord.Client, channel_id: int) -> object | None:
        """The channel if this process serves it: one of its guilds' channels (from the
        cache), or a DM channel (not cached after a restart: asked for)."""
        channel = client.get_channel(channel_id)
        if channel is not None:
            return channel
        try:
            fetched = await client.fetch_channel(channel_id)
        except DISCORD_FAILURES:
            return None
        return fetched if isinstance(fetched, discord.DMChannel) and _runs_dms(client) else None

    async def _free(self, conversation: str) -> bool:
        lease = self.services.engine.leases.lease
        if lease is None:
            return True
        try:
            return await lease.holder(f"conversation:{conversation}") is None
        except Exception:
            return False

    async def _end(self, conversation: str, channel: object, message_id: int) -> None:
        if not isinstance(channel, discord.abc.Messageable):
            return
        try:
            message = await channel.fetch_message(message_id)
            text = message.content
            if text.endswith(RESTART_NOTE):  # a stop that ended it, but not its record
                await self._forget(conversation, message_id)
                return
            room = DISCORD_LIMIT - discord_len(RESTART_NOTE) - 3
            if discord_len(text) > room:  # (only a message at the very limit)
                text = text[: room - 1]
                while discord_len(text) > room - 1:  # characters beyond the BMP count twice
                    text = text[:-1]
                text += "…"
            await message.edit(content=f"{text}\n\n{RESTART_NOTE}".strip(), view=None)
        except discord.NotFound:
            pass  # deleted meanwhile: nothing to end
        except DISCORD_FAILURES as exc:
            log.warning(
                "event=abandoned_reply_not_ended conversation=%s message=%s cause=%r",
                conversation,
                message_id,
                failure_cause(exc),
            )
            return
        log.info("event=abandoned_reply_ended conversation=%s message=%s", conversation, message_id)
        await self._forget(conversation, message_id)

    async def _forget(self, conversation: str, message_id: int) -> None:
        """Forget the abandoned reply, unless a new reply of the conversation is open by now."""
        try:
            if (await self.services.store.open_replies()).get(conversation) != message_id:
                return
        except Exception:
            return
        self.closed(conversation)


def _runs_dms(client: discord.Client) -> bool:
    """DMs reach shard 0 only: the process running it (or an unsharded one) ends them."""
    shard_ids = getattr(client, "shard_ids", None)
    return not shard_ids or 0 in shard_ids
