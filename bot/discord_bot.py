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
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands

from .access import AccessPolicy, NoticeLimiter, Verdict
from .conversation import ChatEngine, Clock
from .discord_scheduler import CURRENT_PRIORITY, DiscordLimits, DiscordScheduler, Priority
from .health import HealthServer
from .history_store import HistoryStore, open_history_store
from .metrics import Metrics, RateLimitLogCounter
from .model_manager import ModelManager, PullTracker
from .ollama import OllamaClient, OllamaError, model_matches
from .reply_buttons import RegenerateButton, StopButton, controls_view
from .reply_writer import Controls, EditThrottle
from .settings import Settings
from .user_messages import (
    BUSY,
    BUTTON_EXPIRED,
    DM_BLOCKED,
    DM_NOT_ALLOWED,
    DMS_OFF,
    HINT,
    INTERNAL_ERROR,
    NOT_ADMIN,
    NOT_CONFIGURATOR,
    NOT_FOR_YOU,
    NOT_LATEST,
    NOT_YOURS_TO_REGENERATE,
    NOT_YOURS_TO_STOP,
    ONE_AT_A_TIME,
    RESET_DONE,
    RESET_REFUSED,
    RESET_STOPPED,
    RESTART_NOTE,
    RESTARTING,
    error_message,
    pull_failed,
    pull_progress,
    pull_succeeded,
    queued_status,
)

log = logging.getLogger(__name__)

# Model output must never ping anyone: discord.py merges these into every send *and* edit
# (an edit without allowed_mentions is re-parsed with the default, which pings @everyone).
# Only the replied-to author is notified, as a normal reply would.
ALLOWED_MENTIONS = discord.AllowedMentions(
    everyone=False, users=False, roles=False, replied_user=True
)

# A DM author's roles are looked up in the shared servers at most this often.
DM_ROLE_CACHE_SECONDS = 300.0

# Discord drops the typing indicator after 10 s; refresh it well before.
TYPING_REFRESH_SECONDS = 8.0


def conversation_id(channel_id: int) -> str:
    """Each channel, thread and DM channel has its own id, hence its own history."""
    return f"discord:{channel_id}"


class DiscordReplyTarget:
    """The messages of one reply: the first is a Discord reply to the user's message.

    Failures never end the reply (discord.py has already retried 5xx and 429s): a deleted
    message is replaced by a new one, anything else is logged and skipped."""

    # Discord error codes (developers/topics/opcodes-and-status-codes).
    UNKNOWN_CHANNEL = 10003
    UNKNOWN_MESSAGE = 10008
    MISSING_ACCESS = 50001
    MISSING_PERMISSIONS = 50013

    def __init__(
        self,
        source: discord.Message,
        metrics: Metrics | None = None,
        *,
        asker: int | None = None,
        asked: int | None = None,
        existing: discord.Message | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.asker = asker if asker is not None else source.author.id
        self.asked = asked if asked is not None else source.id
        # Regenerate writes over the earlier answer's first message.
        self.messages: list[discord.Message | None] = [existing] if existing else []

    def _view(self, controls: Controls) -> discord.ui.View:
        return controls_view(controls, self.source.channel.id, self.asked, self.asker)

    def _log(self, action: str, exc: discord.HTTPException, index: int) -> None:
        if self.metrics:
            self.metrics.discord_failures.labels(kind=action).inc()
        log.error(
            "event=discord_%s_failed channel=%s index=%d status=%s code=%s cause=%r",
            action,
            self.source.channel.id,
            index,
            exc.status,
            exc.code,
            exc.text,
        )

    def _fatal(self, exc: discord.HTTPException) -> bool:
        return exc.code in (self.UNKNOWN_CHANNEL, self.MISSING_ACCESS, self.MISSING_PERMISSIONS)

    async def send(self, index: int, text: str, *, controls: Controls | None) -> bool | None:
        # fail_if_not_exists=False: if the user deleted their message, still answer.
        reference = self.source.to_reference(fail_if_not_exists=False) if index == 0 else None
        extra: dict[str, Any] = {}
        if controls is not None and controls is not Controls.NONE:
            extra["view"] = self._view(controls)
        try:
            message = await self.source.channel.send(text, reference=reference, **extra)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            self._log("send", exc, index)
            return False if self._fatal(exc) else None  # None: try again a little later
        if self.metrics:
            self.metrics.discord_updates.labels(kind="send").inc()
        if index < len(self.messages):
            self.messages[index] = message
        else:
            self.messages.append(message)
        return True

    async def edit(self, index: int, text: str, *, controls: Controls | None) -> bool | None:
        message = self.messages[index] if index < len(self.messages) else None
        if message is None:
            return await self.send(index, text, controls=controls)
        extra: dict[str, Any] = {}
        if controls is not None:
            extra["view"] = None if controls is Controls.NONE else self._view(controls)
        try:
            await message.edit(content=text, **extra)
        except discord.NotFound as exc:
            self._log("edit", exc, index)
            if exc.code == self.UNKNOWN_MESSAGE:
                # Someone deleted the reply mid-stream: carry on in a new message.
                self.messages[index] = None
                return await self.send(index, text, controls=controls)
            return False
        except discord.HTTPException as exc:
            # discord.py already retried 5xx; the scheduler tries again a little later.
            self._log("edit", exc, index)
            return False if self._fatal(exc) else None
        if self.metrics:
            self.metrics.discord_updates.labels(kind="edit").inc()
        return True


class OllacordBot(discord.Client):
    """The bot: mention (or reply, or DM) -> streamed Ollama reply -> history; ``/reset``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        store: HistoryStore | None = None,
        ollama: OllamaClient | None = None,
        discord_limits: DiscordLimits | None = None,
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
        self.metrics = Metrics()
        self.models = ModelManager(
            self.ollama,
            settings.ollama_model,
            auto_pull=settings.auto_pull,
            keep_alive=settings.ollama_keep_alive,
            clock=clock,
        )
        self.engine = ChatEngine(
            self.ollama,
            self.store,
            settings,
            clock=clock,
            metrics=self.metrics,
            gate=self.models.busy_message,
        )
        self.tree = app_commands.CommandTree(self)
        self.gateway_connected = False
        self._latest_answer: dict[int, discord.Message] = {}
        self.access = AccessPolicy.from_settings(settings)
        self.notices = NoticeLimiter(clock)
        self._dm_roles: dict[int, tuple[float, frozenset[int]]] = {}
        self.scheduler = DiscordScheduler(
            clock, edit_interval=settings.edit_interval, limits=discord_limits
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._closed_resources = False
        self._rate_limit_counter = RateLimitLogCounter(self.metrics)
        self._health = (
            HealthServer(
                self.health_status, self.metrics, settings.health_host, settings.health_port
            )
            if settings.health_port
            else None
        )
        self._register_commands()

    # --- lifecycle ---------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        opener = getattr(self.store, "open", None)
        if opener is not None:
            await opener()
        logging.getLogger("discord.http").addHandler(self._rate_limit_counter)
        # Stop/Regenerate clicks reach the bot even on messages sent before a restart.
        self.add_dynamic_items(StopButton, RegenerateButton)
        # Every REST call counts against Discord's global budget: plan it in one place.
        self.scheduler.wrap_http(self.http)
        if self._health is not None:
            try:
                await self._health.start()
            except OSError as exc:
                # E.g. the port is taken: the bot itself still works, so say why and go on.
                log.error(
                    "event=health_failed port=%d cause=%r fix='set HEALTH_PORT to a free port, "
                    "or 0 to turn it off'",
                    self.settings.health_port,
                    str(exc),
                )
                self._health = None
            else:
                # Only with metrics exposed: a timer that never stops would keep SimCord busy.
                self._spawn(self.metrics.watch_event_loop())
        # Slash commands only exist once synced; an unsynced /reset fails for users.
        await self.tree.sync()
        # Ollama may be down or the model missing: Discord comes up regardless, and this
        # settles the model in the background (retry, pull, preload).
        self._spawn(self.models.run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_connect(self) -> None:
        self.gateway_connected = True

    async def on_resumed(self) -> None:
        self.gateway_connected = True

    async def on_disconnect(self) -> None:
        self.gateway_connected = False

    async def health_status(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the gateway is connected and the store answers; Ollama is reported."""
        store_ok = True
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2.0)
        except Exception as exc:
            store_ok = False
            log.error("event=health store_ok=false cause=%r", str(exc))
        gateway_ok = self.gateway_connected and not self.is_closed()
        body: dict[str, Any] = {
            "gateway": "connected" if gateway_ok else "disconnected",
            "store": "ok" if store_ok else "failing",
            "ollama": self.models.status(),
            "shutting_down": self.engine.closing,
        }
        return gateway_ok and store_ok, body

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
        logging.getLogger("discord.http").removeHandler(self._rate_limit_counter)
        if self._health is not None:
            await self._health.stop()
        await self.ollama.close()
        await self.store.close()

    async def shutdown(self) -> None:
        """Graceful stop (SIGTERM): no new mentions, replies in flight get SHUTDOWN_GRACE
        seconds to finish, the rest end with a visible note; then everything is closed."""
        log.info("event=shutdown grace=%.1fs", self.settings.shutdown_grace)
        await self.engine.shutdown(grace=self.settings.shutdown_grace, stop_note=RESTART_NOTE)
        await self.close()

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
        if not await self.may_talk(message):
            return
        if self.engine.closing:
            # Stop taking new mentions during a graceful shutdown; say so rather than ignore.
            await self.say(message, RESTARTING)
            return
        text = self.prompt_text(message)
        if not text:
            name = self.user.display_name if self.user else "bot"
            await self.say(message, HINT.format(name=name))
            return
        if message.guild is not None:
            # Several people share a channel's history: tell the model who is speaking.
            text = f"{message.author.display_name}: {text}"
        conversation = conversation_id(message.channel.id)
        queue = self.engine.queue
        if queue.has_pending(conversation, message.author.id):
            # One pending question per person and channel: acknowledge, never stay silent.
            await self._acknowledge(message, ONE_AT_A_TIME)
            return
        if queue.full():
            log.info("event=queue_full channel=%s waiting=%d", message.channel.id, queue.waiting)
            await self._acknowledge(message, BUSY, reaction=None)
            return
        target = DiscordReplyTarget(message, self.metrics)
        writer = self.scheduler.reply(message.channel.id, target)
        typing: asyncio.Task[None] | None = None

        def show_position(ahead: int) -> None:
            writer.set_status(queued_status(ahead))

        async def start_typing() -> None:
            nonlocal typing
            typing = asyncio.create_task(self._keep_typing(message.channel))

        async def stop_typing() -> None:
            if typing is not None:
                typing.cancel()

        try:
            await self.engine.respond(
                conversation,
                text,
                writer,
                user_id=message.author.id,
                ref=message.id,
                on_position=show_position,
                on_start=start_typing,
                on_first_text=stop_typing,
                log_fields=f"channel={message.channel.id} message={message.id} "
                f"author={message.author.id}",
            )
            if writer.controls is Controls.REGENERATE and target.messages:
                await self._latest_answer_is(message.channel.id, target.messages[0])
        except Exception:
            # Not an Ollama failure (those are answered by the engine): a bug or Discord itself.
            # Log the traceback, and still tell the user something went wrong.
            log.exception(
                "event=reply_crashed channel=%s message=%s", message.channel.id, message.id
            )
            with contextlib.suppress(discord.HTTPException):
                await writer.finish(INTERNAL_ERROR)
        finally:
            if typing is not None:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing

    # --- access control ----------------------------------------------------------------------

    @staticmethod
    def channel_scope(channel: Any) -> list[int | None]:
        """The channel, and what it belongs to: a thread's parent, the category above."""
        ids: list[int | None] = [getattr(channel, "id", None)]
        parent = getattr(channel, "parent", None)
        if parent is not None:
            ids.append(parent.id)
            ids.append(getattr(parent, "category_id", None))
        else:
            ids.append(getattr(channel, "parent_id", None))
        ids.append(getattr(channel, "category_id", None))
        return ids

    async def roles_in_shared_guilds(self, user: int) -> frozenset[int]:
        """A DM author's roles in the servers the bot shares with them (asked over REST: the
        bot does not need the privileged members intent); cached for a few minutes."""
        cached = self._dm_roles.get(user)
        now = self.clock()
        if cached is not None and now - cached[0] < DM_ROLE_CACHE_SECONDS:
            return cached[1]
        roles: set[int] = set()
        for guild in self.guilds:
            member = guild.get_member(user)
            if member is None:
                try:
                    member = await guild.fetch_member(user)
                except discord.HTTPException:
                    continue
            roles.update(role.id for role in member.roles)
        result = frozenset(roles)
        self._dm_roles[user] = (now, result)
        return result

    async def may_talk(self, message: discord.Message) -> bool:
        """The allow and block lists. In a channel that is not allowed the bot stays silent;
        a refused person is told once an hour; a refused message never reaches the model."""
        policy = self.access
        user = message.author.id
        if message.guild is None:
            if not policy.allow_dms:
                await self._refuse(message, "dm_off", DMS_OFF)
                return False
            roles = await self.roles_in_shared_guilds(user) if policy.needs_roles else frozenset()
            verdict = policy.user_verdict(user, roles)
            if verdict is not Verdict.ALLOWED:
                reason = DM_BLOCKED if verdict is Verdict.BLOCKED else DM_NOT_ALLOWED
                await self._refuse(message, "dm_refused", reason)
                return False
            return True
        if not policy.channel_allowed(self.channel_scope(message.channel)):
            log.debug("event=ignored reason=channel channel=%s", message.channel.id)
            return False
        roles = frozenset(r.id for r in getattr(message.author, "roles", ()))
        verdict = policy.user_verdict(user, roles)
        if verdict is not Verdict.ALLOWED:
            await self._refuse(message, "refused", NOT_FOR_YOU)
            return False
        return True

    async def _refuse(self, message: discord.Message, kind: str, text: str) -> None:
        log.info(
            "event=access_refused kind=%s channel=%s user=%s",
            kind,
            message.channel.id,
            message.author.id,
        )
        if self.notices.should_tell(kind, message.author.id):
            await self.say(message, text)

    async def may_reset(self, interaction: discord.Interaction) -> bool:
        if self.is_admin(interaction):
            return True
        if self.access.reset_requires_admin:
            return False
        if interaction.guild is None:
            if not self.access.allow_dms:
                return False
            roles = (
                await self.roles_in_shared_guilds(interaction.user.id)
                if self.access.needs_roles
                else frozenset()
            )
        else:
            if not self.access.channel_allowed(self.channel_scope(interaction.channel)):
                return False
            roles = frozenset(r.id for r in getattr(interaction.user, "roles", ()))
        return self.access.user_verdict(interaction.user.id, roles) is Verdict.ALLOWED

    async def _latest_answer_is(self, channel_id: int, answer: discord.Message | None) -> None:
        """Only the latest answer of a channel can be regenerated: the previous one loses its
        button (after a restart, an old button says so when clicked)."""
        previous = self._latest_answer.get(channel_id)
        if answer is not None:
            self._latest_answer[channel_id] = answer
        if previous is None or (answer is not None and previous.id == answer.id):
            return
        token = CURRENT_PRIORITY.set(Priority.STATUS)
        try:
            await previous.edit(view=None)
        except discord.HTTPException as exc:
            log.info("event=remove_button_failed message=%s cause=%r", previous.id, exc.text)
        finally:
            CURRENT_PRIORITY.reset(token)

    async def reply_button(
        self,
        interaction: discord.Interaction,
        action: str,
        channel_id: int,
        asked: int,
        asker: int,
    ) -> None:
        """Stop: the asker or a member with Manage Messages. Regenerate: the asker."""
        conversation = conversation_id(channel_id)
        user = interaction.user.id
        if action == "stop":
            manager = interaction.guild is not None and interaction.permissions.manage_messages
            if user != asker and not manager:
                await interaction.response.send_message(NOT_YOURS_TO_STOP, ephemeral=True)
                return
            if self.engine.stop(conversation, asked):
                log.info("event=stop_button channel=%s asked=%s user=%s", channel_id, asked, user)
                await interaction.response.defer()
            else:
                await interaction.response.send_message(BUTTON_EXPIRED, ephemeral=True)
            return
        if user != asker:
            await interaction.response.send_message(NOT_YOURS_TO_REGENERATE, ephemeral=True)
            return
        message = interaction.message
        channel = interaction.channel
        if message is None or not isinstance(channel, discord.abc.Messageable):
            await interaction.response.send_message(BUTTON_EXPIRED, ephemeral=True)
            return
        if self.engine.queue.has_pending(conversation, user):
            await interaction.response.send_message(ONE_AT_A_TIME, ephemeral=True)
            return
        if await self.engine.latest_question(conversation) != asked:
            await interaction.response.send_message(NOT_LATEST, ephemeral=True)
            with contextlib.suppress(discord.HTTPException):
                await message.edit(view=None)  # the button no longer applies
            return
        # Acknowledge at once (3 s), then answer again into the same message.
        await interaction.response.defer()
        log.info("event=regenerate_button channel=%s asked=%s user=%s", channel_id, asked, user)
        try:
            question = await channel.fetch_message(asked)
        except discord.HTTPException:
            question = None
        source = question if question is not None else message
        target = DiscordReplyTarget(
            source, self.metrics, asker=asker, asked=asked, existing=message
        )
        writer = self.scheduler.reply(channel_id, target)
        writer.shown = [message.content]
        writer.shown_controls = Controls.REGENERATE
        outcome = await self.engine.respond(
            conversation,
            "",
            writer,
            user_id=user,
            ref=asked,
            regenerate=True,
            log_fields=f"channel={channel_id} message={asked} author={user} regenerate=1",
        )
        if outcome.status == "refused":
            with contextlib.suppress(discord.HTTPException):
                await message.edit(view=None)  # the button no longer applies
        elif writer.controls is Controls.REGENERATE:
            await self._latest_answer_is(
                channel_id, target.messages[0] if target.messages else None
            )

    async def _acknowledge(
        self, message: discord.Message, text: str, *, reaction: str | None = "⏳"
    ) -> None:
        """A reaction where it says enough (quiet), else a short reply."""
        if reaction is not None:
            try:
                await message.add_reaction(reaction)
                return
            except discord.HTTPException:
                pass  # no Add Reactions permission: say it in words
        await self.say(message, text)

    async def say(self, message: discord.Message, text: str) -> None:
        """A one-message reply (hint, refusal, notice), sent through the scheduler like every
        reply, so it counts against the channel's rate limit window too."""
        target = DiscordReplyTarget(message, self.metrics)
        await self.scheduler.reply(message.channel.id, target).finish(text)

    async def _keep_typing(self, channel: discord.abc.Messageable) -> None:
        """Show "typing..." until the first words arrive (a cold model can take a minute).
        Lowest priority in the REST budget: under load, replies matter more than typing."""
        CURRENT_PRIORITY.set(Priority.STATUS)
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
            if not await self.may_reset(interaction):
                await interaction.response.send_message(RESET_REFUSED, ephemeral=True)
                return
            conversation = conversation_id(interaction.channel_id)
            await self.engine.reset(conversation, stop_note=RESET_STOPPED)
            log.info(
                "event=reset_command channel=%s user=%s",
                interaction.channel_id,
                interaction.user.id,
            )
            await interaction.response.send_message(RESET_DONE, ephemeral=True)

        @self.tree.command(name="model", description="Show or change this channel's model")
        @app_commands.describe(name="A model Ollama has (or 'default'); leave out to show it")
        async def model(interaction: discord.Interaction, name: str | None = None) -> None:
            await self.model_command(interaction, name)

        @model.autocomplete("name")
        async def model_autocomplete(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return await self.model_choices(current)

        system = app_commands.Group(
            name="system", description="This channel's system prompt (admins, Manage Channels)"
        )

        @system.command(name="set", description="Set this channel's system prompt")
        @app_commands.describe(prompt="The instructions the model gets before every message")
        async def system_set(interaction: discord.Interaction, prompt: str) -> None:
            await self.system_command(interaction, "set", prompt)

        @system.command(name="show", description="Show this channel's system prompt")
        async def system_show(interaction: discord.Interaction) -> None:
            await self.system_command(interaction, "show", None)

        @system.command(name="clear", description="Go back to the default system prompt")
        async def system_clear(interaction: discord.Interaction) -> None:
            await self.system_command(interaction, "clear", None)

        self.tree.add_command(system)

        @self.tree.command(name="status", description="The model and how much context is used")
        async def status(interaction: discord.Interaction) -> None:
            await self.status_command(interaction)

        @self.tree.command(name="pull", description="Download a model into Ollama (admins only)")
        @app_commands.describe(model="The model to pull, e.g. llama3.2 or qwen3:8b")
        async def pull(interaction: discord.Interaction, model: str) -> None:
            await self.pull_command(interaction, model.strip())

    def is_admin(self, interaction: discord.Interaction) -> bool:
        """ADMIN_USER_IDS, or Manage Server in the guild the command is used in. Checked by
        the bot itself: Discord's command visibility settings are not enough."""
        if interaction.user.id in self.access.admin_users:
            return True
        return interaction.guild is not None and interaction.permissions.manage_guild

    def may_configure(self, interaction: discord.Interaction) -> bool:
        """Channel settings: admins, or members with Manage Channels where it is used."""
        if self.is_admin(interaction):
            return True
        return interaction.guild is not None and interaction.permissions.manage_channels

    async def model_choices(self, current: str) -> list[app_commands.Choice[str]]:
        """Autocomplete: Ollama's models containing what was typed, at most 25 (Discord's cap)."""
        try:
            names = await self.ollama.list_models()
        except OllamaError:
            return []
        typed = current.strip().lower()
        matches = sorted(n for n in names if typed in n.lower())
        return [app_commands.Choice(name=n, value=n) for n in matches[:25]]

    async def model_command(self, interaction: discord.Interaction, name: str | None) -> None:
        if interaction.channel_id is None:
            return
        conversation = conversation_id(interaction.channel_id)
        if name is None:
            _, model, _ = await self.engine.conversation_settings(conversation)
            await interaction.response.send_message(f"This channel uses `{model}`.", ephemeral=True)
            return
        if not self.may_configure(interaction):
            await interaction.response.send_message(NOT_CONFIGURATOR, ephemeral=True)
            return
        name = name.strip()
        # Checking the name asks Ollama: acknowledge first (Discord allows 3 s).
        await interaction.response.defer(ephemeral=True, thinking=True)
        if name.lower() != "default":
            try:
                available = await self.ollama.list_models()
            except OllamaError as exc:
                await interaction.followup.send(error_message(exc, model=name), ephemeral=True)
                return
            if not any(model_matches(name, n) for n in available):
                await interaction.followup.send(
                    f"⚠️ Ollama has no model `{name}`. Pick one from the list, or `/pull` it first.",
                    ephemeral=True,
                )
                return
        chosen = None if name.lower() == "default" else name
        await self.engine.update_state(conversation, lambda s: replace(s, model=chosen))
        log.info(
            "event=model_set channel=%s user=%s model=%s",
            interaction.channel_id,
            interaction.user.id,
            chosen or "default",
        )
        shown = chosen or f"{self.settings.ollama_model} (the default)"
        await interaction.followup.send(f"🧠 This channel now uses `{shown}`.", ephemeral=True)

    async def system_command(
        self, interaction: discord.Interaction, action: str, prompt: str | None
    ) -> None:
        if interaction.channel_id is None:
            return
        if not self.may_configure(interaction):
            await interaction.response.send_message(NOT_CONFIGURATOR, ephemeral=True)
            return
        conversation = conversation_id(interaction.channel_id)
        if action == "show":
            state, _, system_prompt = await self.engine.conversation_settings(conversation)
            origin = "this channel's" if state.system_prompt is not None else "the default"
            text = (
                f"System prompt ({origin}):\n>>> {system_prompt}"
                if system_prompt
                else "No system prompt is set."
            )
            await interaction.response.send_message(text[:2000], ephemeral=True)
            return
        new = prompt.strip() if action == "set" and prompt else None
        await self.engine.update_state(conversation, lambda s: replace(s, system_prompt=new))
        log.info(
            "event=system_prompt_%s channel=%s user=%s chars=%d",
            action,
            interaction.channel_id,
            interaction.user.id,
            len(new or ""),
        )
        await interaction.response.send_message(
            "📝 System prompt set for this channel."
            if new
            else "📝 This channel uses the default system prompt again.",
            ephemeral=True,
        )

    async def status_command(self, interaction: discord.Interaction) -> None:
        if interaction.channel_id is None:
            return
        conversation = conversation_id(interaction.channel_id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        state, _, system_prompt = await self.engine.conversation_settings(conversation)
        info = await self.engine.context.status(conversation, state, system_prompt)
        percent = 100 * info["tokens_used"] // max(1, info["budget"])
        lines = [
            f"**Model:** `{info['model']}`",
            f"**Turns kept:** {info['turns']} (messages sent with each request)",
            f"**Summary of older turns:** {'yes' if info['summary'] else 'none yet'}",
            f"**Context used:** about {info['tokens_used']:,} of {info['budget']:,} tokens "
            f"({percent}%; num_ctx {info['num_ctx']:,})",
            f"**System prompt:** {'this channel' if state.system_prompt is not None else 'default'}"
            f"{'' if system_prompt else ' (empty)'}",
        ]
        if self.is_admin(interaction):
            lines.append("")
            lines.append(self.access.describe())
        await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True)

    async def pull_command(self, interaction: discord.Interaction, model: str) -> None:
        if not self.is_admin(interaction):
            log.info("event=pull_refused user=%s model=%s", interaction.user.id, model)
            await interaction.response.send_message(NOT_ADMIN, ephemeral=True)
            return
        # A pull takes minutes: acknowledge within Discord's 3 s, then edit one message.
        await interaction.response.defer(thinking=True)
        log.info("event=pull_command user=%s model=%s", interaction.user.id, model)
        message = PullStatusMessage(interaction, self.clock)
        throttle = EditThrottle(1.0, self.clock)

        async def show(tracker: PullTracker) -> None:
            if throttle.ready():
                throttle.mark()
                await message.update(pull_progress(model, tracker))

        try:
            tracker = await self.models.pull(model, on_progress=show)
        except OllamaError as exc:
            await message.update(pull_failed(model, exc))
            return
        await message.update(pull_succeeded(model, tracker))


class PullStatusMessage:
    """One message showing a pull's progress. It starts as the deferred interaction response;
    interaction tokens expire after 15 minutes, so a longer pull continues in a normal
    channel message."""

    TOKEN_LIFETIME = 14 * 60.0

    def __init__(self, interaction: discord.Interaction, clock: Clock) -> None:
        self.interaction = interaction
        self.clock = clock
        self.started = clock()
        self.channel_message: discord.Message | None = None

    async def update(self, text: str) -> None:
        try:
            if self.channel_message is not None:
                await self.channel_message.edit(content=text)
            elif self.clock() - self.started < self.TOKEN_LIFETIME:
                await self.interaction.edit_original_response(content=text)
            elif isinstance(self.interaction.channel, discord.abc.Messageable):
                self.channel_message = await self.interaction.channel.send(text)
        except discord.HTTPException as exc:
            log.warning("event=pull_message_failed status=%s cause=%r", exc.status, exc.text)


def create_bot(settings: Settings, *, clock: Clock = time.monotonic) -> OllacordBot:
    """Build the bot, ready for ``await bot.start(settings.discord_token)``."""
    return OllacordBot(settings, clock=clock)
