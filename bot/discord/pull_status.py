"""``/pull``: download a model into Ollama, with one message showing the progress."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from ..app import Services
from ..clock import Clock, EditThrottle
from ..model_manager import PullTracker
from ..ollama import OllamaError
from ..user_messages import pull_failed, pull_progress, pull_succeeded
from .failures import DISCORD_FAILURES, failure_cause, failure_status
from .permissions import PERMISSION, Permissions

log = logging.getLogger(__name__)

# Progress edits of the one status message, at most this often.
PROGRESS_EDIT_SECONDS = 1.0


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
        except DISCORD_FAILURES as exc:
            log.warning(
                "event=pull_message_failed status=%s cause=%r",
                failure_status(exc),
                failure_cause(exc),
            )


class PullCommand:
    """``/pull model:<name>`` for admins (ADMIN_USER_IDS or Manage Server)."""

    def __init__(self, services: Services, permissions: Permissions) -> None:
        self.models = services.models
        self.clock = services.clock
        self.permissions = permissions

    def command(self) -> app_commands.Command[Any, ..., None]:
        pull: app_commands.Command[Any, ..., None] = app_commands.Command(
            name="pull",
            description="Download a model into Ollama (admins only)",
            callback=self.pull,
            extras={PERMISSION: self.permissions.admin_refusal},
        )
        return pull

    @app_commands.describe(model="The model to pull, e.g. llama3.2 or qwen3:8b")
    async def pull(self, interaction: discord.Interaction, model: str) -> None:
        model = model.strip()
        # A pull takes minutes: acknowledge within Discord's 3 s, then edit one message.
        await interaction.response.defer(thinking=True)
        log.info("event=pull_command user=%s model=%s", interaction.user.id, model)
        message = PullStatusMessage(interaction, self.clock)
        throttle = EditThrottle(PROGRESS_EDIT_SECONDS, self.clock)

        async def show(tracker: PullTracker) -> None:
            if throttle.ready():
                throttle.mark()
                await message.update(pull_progress(model, tracker.percent, tracker.describe()))

        try:
            tracker = await self.models.pull(model, on_progress=show)
        except OllamaError as exc:
            await message.update(pull_failed(model, exc))
            return
        await message.update(pull_succeeded(model, tracker.total))
