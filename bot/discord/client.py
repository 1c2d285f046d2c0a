"""The Discord client: gateway events and the bot's lifecycle, nothing else.

Messages go to :class:`Answers`, commands to the command tree, button presses to the dynamic
items (which find their controls here, as ``reply_controls``). Everything that is not Discord
(store, Ollama, engine, model manager, metrics, health) comes built from :class:`Services`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord

from ..access import AccessPolicy
from ..app import Services
from ..chat_engine import ChatEngine
from ..clock import Clock
from ..coordination import is_shared
from ..discord_scheduler import SHARED_BURST, SHARED_RATE, DiscordScheduler
from ..history_store import HistoryStore
from ..metrics import Metrics, RateLimitLogCounter
from ..model_manager import ModelManager
from ..ollama import Ollama
from ..rate_limits import DISCORD_GLOBAL_LIMIT, DiscordLimits
from ..settings import Settings
from ..user_messages import RESTART_NOTE
from .answers import Answers
from .buttons import ReasoningButton, RegenerateButton, ReplyControls, StopButton
from .commands import OllacordTree, SlashCommands
from .permissions import Permissions
from .rate_headers import RateLimitListener, message_bucket

log = logging.getLogger(__name__)

# Model output must never ping anyone: discord.py merges these into every send *and* edit
# (an edit without allowed_mentions is re-parsed with the default, which pings @everyone).
# Only the replied-to author is notified, as a normal reply would.
ALLOWED_MENTIONS = discord.AllowedMentions(
    everyone=False, users=False, roles=False, replied_user=True
)


class OllacordBot(discord.Client):
    """The bot: mention (or reply, or DM) -> streamed Ollama reply -> history; commands."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        services: Services | None = None,
        discord_limits: DiscordLimits | None = None,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = settings.message_content_intent
        super().__init__(
            intents=intents,
            allowed_mentions=ALLOWED_MENTIONS,
            # No message cache: the bot reads each message once, from its event (a reply's
            # message comes with it), so 1,000 cached messages would only hold memory.
            max_messages=None,
            **self.shard_options(settings),
        )
        self.settings = settings
        self.services = services or Services.build(settings, clock=clock)
        self.services.gateway_up = self.gateway_is_up
        self.gateway_connected = False
        shared = None
        limits = discord_limits or DiscordLimits()
        # Several processes may spend the bot's budget (unless told to plan for no limits at
        # all, as under SimCord, which has none).
        if is_shared(settings.history_store) and limits.global_limit <= DISCORD_GLOBAL_LIMIT:
            shared = self.services.coordination.budget("discord-rest", SHARED_RATE, SHARED_BURST)
        self.scheduler = DiscordScheduler(
            clock,
            edit_interval=settings.edit_interval,
            limits=limits,
            max_reply_messages=settings.max_reply_messages,
            shared=shared,
            share=settings.shard_share,
        )
        self.permissions = Permissions(AccessPolicy.from_settings(settings), clock, self._guilds)
        self.answers = Answers(self.services, self.scheduler, self.permissions, lambda: self.user)
        # The Stop and Regenerate buttons find what they do here.
        self.reply_controls: ReplyControls = self.answers
        self.tree = OllacordTree(self)
        SlashCommands(self.services, self.permissions).install(self.tree)
        self._rate_limit_counter = RateLimitLogCounter(self.services.metrics)
        self._rate_limit_listener = RateLimitListener(
            self.scheduler.rate_limited, self.scheduler.rate_limited_globally
        )
        self._ended_abandoned = False

    @staticmethod
    def shard_options(settings: Settings) -> dict[str, Any]:
        """One process, one connection (the sharded bot below runs several)."""
        return {}

    # The parts tests and the health server look at.
    @property
    def store(self) -> HistoryStore:
        return self.services.store

    @property
    def ollama(self) -> Ollama:
        return self.services.ollama

    @property
    def engine(self) -> ChatEngine:
        return self.services.engine

    @property
    def models(self) -> ModelManager:
        return self.services.models

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics

    def _guilds(self) -> list[discord.Guild]:
        return list(self.guilds)

    def gateway_is_up(self) -> bool:
        return self.gateway_connected and not self.is_closed()

    # --- lifecycle ---------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        await self.services.store.open()
        await self.answers.open_replies.read_left_open()
        logging.getLogger("discord.http").addHandler(self._rate_limit_counter)
        # Stop/Regenerate presses reach the bot even on messages sent before a restart.
        self.add_dynamic_items(StopButton, RegenerateButton, ReasoningButton)
        # Every REST call counts against Discord's global budget: plan it in one place.
        self.scheduler.wrap_http(self.http, message_bucket)
        logging.getLogger("discord.http").addHandler(self._rate_limit_listener)
        await self.services.start_health()
        # Slash commands only exist once synced; an unsynced /reset fails for users.
        await self.tree.sync()
        # Ollama may be down or the model missing: Discord comes up regardless, and this
        # settles the model in the background (retry, pull, preload).
        self.services.background.spawn(self.services.models.run())

    async def on_connect(self) -> None:
        self.gateway_connected = True

    async def on_resumed(self) -> None:
        self.gateway_connected = True

    async def on_disconnect(self) -> None:
        self.gateway_connected = False

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "event=ready user=%s id=%s guilds=%d model=%s",
            user,
            user.id if user else "?",
            len(self.guilds),
            self.settings.ollama_model,
        )
        if not self._ended_abandoned:  # once per start (ready comes again on reconnects)
            self._ended_abandoned = True
            self.services.background.spawn(self.answers.open_replies.close_abandoned(self))

    async def on_message(self, message: discord.Message) -> None:
        await self.answers.on_message(message)

    async def close_resources(self) -> None:
        """Release what the bot opened (HTTP session to Ollama, the store). Idempotent."""
        logging.getLogger("discord.http").removeHandler(self._rate_limit_counter)
        logging.getLogger("discord.http").removeHandler(self._rate_limit_listener)
        await self.services.close()

    async def shutdown(self) -> None:
        """Graceful stop (SIGTERM): no new mentions, replies in flight get SHUTDOWN_GRACE
        seconds to finish, the rest end with a visible note; then everything is closed."""
        log.info("event=shutdown grace=%.1fs", self.settings.shutdown_grace)
        await self.engine.shutdown(grace=self.settings.shutdown_grace, stop_note=RESTART_NOTE)
        await self.close()

    async def close(self) -> None:
        await super().close()
        await self.close_resources()


class ShardedOllacordBot(OllacordBot, discord.AutoShardedClient):
    """The bot for SHARD_COUNT/SHARD_IDS: this process runs those of the bot's shards (each
    guild belongs to shard ``(guild_id >> 22) % SHARD_COUNT``; DMs to shard 0). Several such
    processes share one Redis history (HISTORY_STORE=redis://...)."""

    @staticmethod
    def shard_options(settings: Settings) -> dict[str, Any]:
        ids = sorted(settings.shard_ids) if settings.shard_ids else None
        return {"shard_count": settings.shard_count, "shard_ids": ids}


def create_bot(settings: Settings, *, clock: Clock = time.monotonic) -> OllacordBot:
    """Build the bot, ready for ``await bot.start(settings.discord_token)``."""
    if settings.shard_count is not None:
        return ShardedOllacordBot(settings, clock=clock)
    return OllacordBot(settings, clock=clock)
