"""The slash commands: ``/reset``, ``/model``, ``/system``, ``/status``, ``/pull``.

Commands are small objects with one shared path for refusals and one for errors. Each names
its permission check in its ``extras`` (a check of :mod:`bot.discord.permissions`), and
:meth:`OllacordTree.interaction_check` applies it before the command runs, telling a refused
user why. :meth:`OllacordTree.on_error` answers every failure ephemerally in plain words and
logs the cause. No command ends in Discord's "This interaction failed".
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands

from ..app import Services
from ..history_store import StoreError
from ..ollama import OllamaError, model_matches
from ..user_messages import (
    INTERNAL_ERROR,
    NO_CHANNEL,
    NO_SYSTEM_PROMPT,
    RESET_DONE,
    RESET_STOPPED,
    STORE_UNAVAILABLE_COMMAND,
    SYSTEM_PROMPT_CLEARED,
    SYSTEM_PROMPT_SET,
    error_message,
    model_chosen,
    model_in_use,
    model_unknown,
    status_lines,
    system_prompt_shown,
)
from .ephemeral import tell
from .intake import conversation_id
from .permissions import PERMISSION, PermissionCheck, Permissions
from .pull_status import PullCommand

log = logging.getLogger(__name__)

AnyCommand = app_commands.Command[Any, ..., None]

# Discord caps autocomplete at 25 choices and a message at 2000 characters.
MAX_CHOICES = 25
MAX_TEXT = 2000


class OllacordTree(app_commands.CommandTree):
    """The command tree with the bot's one refusal path and one error path."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Apply the command's permission check. A refusal is told here and the command does
        not run (returning False skips it without counting as an error). Suggestions while
        typing (autocomplete) change nothing and are not checked."""
        if interaction.type is discord.InteractionType.autocomplete:
            return True
        try:
            refusal = (
                NO_CHANNEL if interaction.channel_id is None else await self._refusal(interaction)
            )
        except Exception:
            # discord.py runs this check outside the command's error handling: a failure here
            # (e.g. looking up a DM author's roles) would otherwise reach nobody.
            log.exception("event=command_failed command=%s stage=check", _name(interaction))
            await tell(interaction, INTERNAL_ERROR)
            return False
        if refusal is None:
            return True
        log.info(
            "event=command_refused command=%s user=%s channel=%s",
            _name(interaction),
            interaction.user.id,
            interaction.channel_id,
        )
        await tell(interaction, refusal)
        return False

    @staticmethod
    async def _refusal(interaction: discord.Interaction) -> str | None:
        command = interaction.command
        node: AnyCommand | app_commands.Group | None = (
            command if isinstance(command, app_commands.Command) else None
        )
        while node is not None:  # a subcommand, then its group
            check: PermissionCheck | None = node.extras.get(PERMISSION)
            if check is not None and (refusal := await check(interaction)) is not None:
                return refusal
            node = node.parent
        return None

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, StoreError):
            # Not a bug: the store is down (Redis stopped, the disk full). One line, the cause.
            log.warning(
                "event=command_failed command=%s channel=%s cause=%r",
                _name(interaction),
                interaction.channel_id,
                str(cause),
            )
            await tell(interaction, STORE_UNAVAILABLE_COMMAND)
            return
        log.error(
            "event=command_failed command=%s user=%s channel=%s",
            _name(interaction),
            interaction.user.id,
            interaction.channel_id,
            exc_info=cause,
        )
        await tell(interaction, INTERNAL_ERROR)


def _name(interaction: discord.Interaction) -> str:
    return interaction.command.qualified_name if interaction.command else "?"


def channel_of(interaction: discord.Interaction) -> str:
    """The conversation a command is about (the tree refuses interactions without a channel)."""
    assert interaction.channel_id is not None
    return conversation_id(interaction.channel_id)


class SystemPromptGroup(
    app_commands.Group,
    name="system",
    description="This channel's system prompt (admins, Manage Channels)",
):
    """``/system set|show|clear``: a channel's own system prompt."""

    def __init__(self, services: Services, permissions: Permissions) -> None:
        super().__init__(extras={PERMISSION: permissions.configure_refusal})
        self.engine = services.engine

    @app_commands.command(name="set", description="Set this channel's system prompt")
    @app_commands.describe(prompt="The instructions the model gets before every message")
    async def set_prompt(self, interaction: discord.Interaction, prompt: str) -> None:
        await self._store(interaction, "set", prompt.strip() or None)

    @app_commands.command(name="show", description="Show this channel's system prompt")
    async def show_prompt(self, interaction: discord.Interaction) -> None:
        state, _, prompt = await self.engine.conversation_settings(channel_of(interaction))
        own = state.system_prompt is not None
        text = system_prompt_shown(prompt, own=own) if prompt else NO_SYSTEM_PROMPT
        await interaction.response.send_message(text[:MAX_TEXT], ephemeral=True)

    @app_commands.command(name="clear", description="Go back to the default system prompt")
    async def clear_prompt(self, interaction: discord.Interaction) -> None:
        await self._store(interaction, "clear", None)

    async def _store(self, interaction: discord.Interaction, action: str, new: str | None) -> None:
        await self.engine.store.update_state(
            channel_of(interaction), lambda s: replace(s, system_prompt=new)
        )
        log.info(
            "event=system_prompt_%s channel=%s user=%s chars=%d",
            action,
            interaction.channel_id,
            interaction.user.id,
            len(new or ""),
        )
        text = SYSTEM_PROMPT_SET if new else SYSTEM_PROMPT_CLEARED
        await interaction.response.send_message(text, ephemeral=True)


class SlashCommands:
    """The top-level commands, bound to the services they use."""

    def __init__(self, services: Services, permissions: Permissions) -> None:
        self.services = services
        self.engine = services.engine
        self.permissions = permissions

    def install(self, tree: app_commands.CommandTree) -> None:
        reset: AnyCommand = app_commands.Command(
            name="reset",
            description="Forget this channel's (or thread's, or DM's) conversation",
            callback=self.reset,
            extras={PERMISSION: self.permissions.reset_refusal},
        )
        model: AnyCommand = app_commands.Command(
            name="model",
            description="Show or change this channel's model",
            callback=self.model,
            extras={PERMISSION: self._model_refusal},
        )
        model.autocomplete("name")(self.model_choices)
        status: AnyCommand = app_commands.Command(
            name="status",
            description="The model and how much context is used",
            callback=self.status,
        )
        for command in (
            reset,
            model,
            SystemPromptGroup(self.services, self.permissions),
            status,
            PullCommand(self.services, self.permissions).command(),
        ):
            tree.add_command(command)

    async def _model_refusal(self, interaction: discord.Interaction) -> str | None:
        """Anyone may see the model; changing it is for those who may configure the channel."""
        if interaction.namespace.name is None:
            return None
        return await self.permissions.configure_refusal(interaction)

    async def reset(self, interaction: discord.Interaction) -> None:
        await self.engine.reset(channel_of(interaction), stop_note=RESET_STOPPED)
        log.info(
            "event=reset_command channel=%s user=%s", interaction.channel_id, interaction.user.id
        )
        await interaction.response.send_message(RESET_DONE, ephemeral=True)

    @app_commands.describe(name="A model Ollama has (or 'default'); leave out to show it")
    async def model(self, interaction: discord.Interaction, name: str | None = None) -> None:
        conversation = channel_of(interaction)
        if name is None:
            _, model, _ = await self.engine.conversation_settings(conversation)
            await interaction.response.send_message(model_in_use(model), ephemeral=True)
            return
        name = name.strip()
        chosen = None if name.lower() == "default" else name
        # Checking the name asks Ollama: acknowledge first (Discord allows 3 s).
        await interaction.response.defer(ephemeral=True, thinking=True)
        if chosen is not None:
            try:
                available = await self.services.ollama.list_models()
            except OllamaError as exc:
                await interaction.followup.send(error_message(exc, model=chosen), ephemeral=True)
                return
            if not any(model_matches(chosen, n) for n in available):
                await interaction.followup.send(model_unknown(chosen), ephemeral=True)
                return
        await self.engine.store.update_state(conversation, lambda s: replace(s, model=chosen))
        log.info(
            "event=model_set channel=%s user=%s model=%s",
            interaction.channel_id,
            interaction.user.id,
            chosen or "default",
        )
        text = model_chosen(chosen, self.services.settings.ollama_model)
        await interaction.followup.send(text, ephemeral=True)

    async def model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Autocomplete: Ollama's models containing what was typed."""
        try:
            names = await self.services.ollama.list_models()
        except OllamaError:
            return []
        typed = current.strip().lower()
        matches = sorted(n for n in names if typed in n.lower())
        return [app_commands.Choice(name=n, value=n) for n in matches[:MAX_CHOICES]]

    async def status(self, interaction: discord.Interaction) -> None:
        conversation = channel_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        state, _, system_prompt = await self.engine.conversation_settings(conversation)
        info = await self.engine.context.status(conversation, state, system_prompt)
        lines = status_lines(
            info, own_system_prompt=state.system_prompt is not None, system_prompt=system_prompt
        )
        if self.permissions.is_admin(interaction):
            lines += ["", self.permissions.policy.describe()]
            servers = await self.services.ollama.describe()
            lines += ["", "**Ollama servers:**", *(f"- {line}" for line in servers)]
        await interaction.followup.send("\n".join(lines)[:MAX_TEXT], ephemeral=True)
