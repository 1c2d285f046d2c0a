"""The Discord layer: the only module that imports discord.

It turns gateway events into conversation turns and turns the reply writer's decisions into
REST calls. Everything it decides on its own is small: is this message for us, what is the
prompt text, which conversation does it belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import discord
from discord import app_commands

from .conversation import ChatEngine, Clock
from .history_store import HistoryStore, open_history_store
from .ollama import OllamaClient, OllamaError, model_matches
from .reply_writer import EditThrottle, ReplyWriter
from .settings import Settings
from .user_messages import HINT, INTERNAL_ERROR, RESET_DONE, RESET_STOPPED

log = logging.getLogger(__name__)

# Model output must never ping anyone: discord.py merges these into every send *and* edit
# (an edit without allowed_mentions is re-parsed with the default, which pings @everyone).
# Only the replied-to author is notified, as a normal reply would.
ALLOWED_MENTIONS = discord.AllowedMentions(
    everyone=False, users=False, roles=False, replied_user=True
)

# Discord drops the typing indicator after 10 s; refresh it well before.
TYPING_REFRESH_SECONDS = 8.0


def conversation_id(channel_id: int) -> str:
    """Each channel, thread and DM channel has its own id, hence its own history."""
    return f"discord:{channel_id}"


class DiscordReplyTarget:
    """The messages of one reply: the first is a Discord reply to the user's message."""

    def __init__(self, source: discord.Message) -> None:
        self.source = source
        self.messages: list[discord.Message | None] = []

    async def send(self, index: int, text: str) -> None:
        # fail_if_not_exists=False: if the user deleted their message, still answer.
        reference = self.source.to_reference(fail_if_not_exists=False) if index == 0 else None
        try:
            message = await self.source.channel.send(text, reference=reference)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            log.error(
                "event=discord_send_failed channel=%s index=%d status=%s code=%s cause=%r",
                self.source.channel.id,
                index,
                exc.status,
                exc.code,
                exc.text,
            )
            message = None
        self.messages.append(message)

    async def edit(self, index: int, text: str) -> None:
        message = self.messages[index]
        if message is None:
            return
        try:
            await message.edit(content=text)
        except discord.HTTPException as exc:
            # A failed edit must not end the reply: the next update carries the full text again.
            log.error(
                "event=discord_edit_failed channel=%s message=%s status=%s code=%s cause=%r",
                self.source.channel.id,
                message.id,
                exc.status,
                exc.code,
                exc.text,
            )


class OllacordBot(discord.Client):
    """The bot: mention (or reply, or DM) -> streamed Ollama reply -> history; ``/reset``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        store: HistoryStore | None = None,
        ollama: OllamaClient | None = None,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = settings.message_content_intent
        super().__init__(intents=intents, allowed_mentions=ALLOWED_MENTIONS)
        self.settings = settings
        self.clock = clock
        self.store = store if store is not None else open_history_store(settings.history_store)
        self.ollama = ollama or OllamaClient(
            settings.ollama_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )
        self.engine = ChatEngine(self.ollama, self.store, settings, clock=clock)
        self.tree = app_commands.CommandTree(self)
        self._throttles: dict[int, EditThrottle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closed_resources = False
        self._register_commands()

    # --- lifecycle ---------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        opener = getattr(self.store, "open", None)
        if opener is not None:
            await opener()
        # Slash commands only exist once synced; an unsynced /reset fails for users.
        await self.tree.sync()
        task = asyncio.create_task(self.check_ollama())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def check_ollama(self) -> None:
        """Say in the log, at start-up, whether Ollama answers and has the model."""
        model = self.settings.ollama_model
        try:
            models = await self.ollama.list_models()
        except OllamaError as exc:
            log.error("event=ollama_check ok=false url=%s cause=%r", self.ollama.base_url, str(exc))
            return
        if any(model_matches(model, name) for name in models):
            log.info("event=ollama_check ok=true url=%s model=%s", self.ollama.base_url, model)
        else:
            log.warning(
                "event=ollama_check ok=false url=%s model=%s cause='model not pulled' "
                "fix='ollama pull %s' available=%s",
                self.ollama.base_url,
                model,
                model,
                ",".join(models) or "-",
            )

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "event=ready user=%s id=%s guilds=%d model=%s",
            user,
            user.id if user else "?",
            len(self.guilds),
            self.settings.ollama_model,
        )

    async def close_resources(self) -> None:
        """Release what the bot opened (HTTP session to Ollama, the store). Idempotent."""
        if self._closed_resources:
            return
        self._closed_resources = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.ollama.close()
        await self.store.close()

    async def close(self) -> None:
        await super().close()
        await self.close_resources()

    # --- messages ----------------------------------------------------------------------------

    def is_for_me(self, message: discord.Message) -> bool:
        """A DM, a mention of the bot (or of its own role), or a reply to one of its messages."""
        me = self.user
        if me is None:
            return False
        if message.guild is None:
            return True
        if me in message.mentions:
            return True
        self_role = message.guild.self_role
        if self_role is not None and self_role in message.role_mentions:
            return True
        reference = message.reference
        resolved = reference.resolved if reference is not None else None
        return isinstance(resolved, discord.Message) and resolved.author == me

    def prompt_text(self, message: discord.Message) -> str:
        """The message text with the bot's mention removed and other mentions made readable."""
        me = self.user
        text = message.content
        if me is not None:
            text = re.sub(rf"<@!?{me.id}>", "", text)
        if message.guild is not None and message.guild.self_role is not None:
            text = text.replace(f"<@&{message.guild.self_role.id}>", "")
        for user in message.mentions:
            text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
        for role in message.role_mentions:
            text = text.replace(f"<@&{role.id}>", f"@{role.name}")
        for channel in message.channel_mentions:
            text = text.replace(f"<#{channel.id}>", f"#{getattr(channel, 'name', channel.id)}")
        return text.strip()

    async def on_message(self, message: discord.Message) -> None:
        # Bots (ourselves included) are ignored so that two bots can never talk in a loop.
        if message.author.bot or not self.is_for_me(message):
            return
        text = self.prompt_text(message)
        if not text:
            name = self.user.display_name if self.user else "bot"
            await message.channel.send(
                HINT.format(name=name),
                reference=message.to_reference(fail_if_not_exists=False),
            )
            return
        if message.guild is not None:
            # Several people share a channel's history: tell the model who is speaking.
            text = f"{message.author.display_name}: {text}"
        conversation = conversation_id(message.channel.id)
        throttle = self._throttles.get(message.channel.id)
        if throttle is None:
            throttle = EditThrottle(self.settings.edit_interval, self.clock)
            self._throttles[message.channel.id] = throttle
        target = DiscordReplyTarget(message)
        writer = ReplyWriter(target, throttle)
        typing = asyncio.create_task(self._keep_typing(message.channel))

        async def stop_typing() -> None:
            typing.cancel()

        try:
            await self.engine.respond(
                conversation,
                text,
                writer,
                on_first_text=stop_typing,
                log_fields=f"channel={message.channel.id} message={message.id} "
                f"author={message.author.id}",
            )
        except Exception:
            # Not an Ollama failure (those are answered by the engine): a bug or Discord itself.
            # Log the traceback, and still tell the user something went wrong.
            log.exception(
                "event=reply_crashed channel=%s message=%s", message.channel.id, message.id
            )
            with contextlib.suppress(discord.HTTPException):
                await writer.finish(INTERNAL_ERROR)
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing

    async def _keep_typing(self, channel: discord.abc.Messageable) -> None:
        """Show "typing..." until the first words arrive (a cold model can take a minute)."""
        with contextlib.suppress(discord.HTTPException):
            while True:
                await channel.typing()
                await asyncio.sleep(TYPING_REFRESH_SECONDS)

    # --- slash commands ----------------------------------------------------------------------

    def _register_commands(self) -> None:
        @self.tree.command(
            name="reset", description="Forget this channel's (or thread's, or DM's) conversation"
        )
        async def reset(interaction: discord.Interaction) -> None:
            if interaction.channel_id is None:
                await interaction.response.send_message(
                    "⚠️ This command only works in a channel, thread or DM.", ephemeral=True
                )
                return
            conversation = conversation_id(interaction.channel_id)
            await self.engine.reset(conversation, stop_note=RESET_STOPPED)
            log.info(
                "event=reset_command channel=%s user=%s",
                interaction.channel_id,
                interaction.user.id,
            )
            await interaction.response.send_message(RESET_DONE, ephemeral=True)


def create_bot(settings: Settings, *, clock: Clock = time.monotonic) -> OllacordBot:
    """Build the bot, ready for ``await bot.start(settings.discord_token)``."""
    return OllacordBot(settings, clock=clock)
