"""Stop and Regenerate buttons under a reply.

Their state lives in the ``custom_id`` (channel, the question's message id, the asker), and
they are registered as dynamic items, so a press still reaches the bot after a restart: it
then either works or says plainly that the button has expired. A press is handed to the
client's :class:`ReplyControls` (the object that answers on Discord); whatever it raises, the
presser gets a plain ephemeral message, never Discord's "This interaction failed".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol, cast

import discord

from ..reply_text import Controls
from ..user_messages import INTERNAL_ERROR
from .ephemeral import tell

log = logging.getLogger(__name__)

_IDS = r"(?P<channel>\d+):(?P<asked>\d+):(?P<user>\d+)"


@dataclass(frozen=True)
class ButtonPress:
    """Which reply a button belongs to: its channel, the question's message, the asker."""

    channel: int
    asked: int
    asker: int


class ReplyControls(Protocol):
    """What the buttons do (implemented by the Discord layer's answering side)."""

    async def stop(self, interaction: discord.Interaction, press: ButtonPress) -> None: ...

    async def regenerate(self, interaction: discord.Interaction, press: ButtonPress) -> None: ...

    async def reasoning(self, interaction: discord.Interaction, press: ButtonPress) -> None: ...


class HasReplyControls(Protocol):
    reply_controls: ReplyControls


class _ReplyButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"ollacord:base:{_IDS}"
):
    """Shared parts; never sent or registered itself."""

    action = "base"
    label = ""
    emoji = ""

    def __init__(self, channel: int, asked: int, user: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.label,
                emoji=self.emoji,
                style=discord.ButtonStyle.secondary,
                custom_id=f"ollacord:{self.action}:{channel}:{asked}:{user}",
            )
        )
        self.press = ButtonPress(channel, asked, user)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _ReplyButton:
        return cls(int(match["channel"]), int(match["asked"]), int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        controls = cast(HasReplyControls, interaction.client).reply_controls
        try:
            await self.pressed(controls, interaction)
        except Exception:
            # discord.py only logs what a dynamic item raises; the presser would see "This
            # interaction failed". Log the cause and tell them in words instead.
            log.exception(
                "event=button_failed action=%s channel=%s asked=%s user=%s",
                self.action,
                self.press.channel,
                self.press.asked,
                interaction.user.id,
            )
            await tell(interaction, INTERNAL_ERROR)

    async def pressed(self, controls: ReplyControls, interaction: discord.Interaction) -> None:
        """What the button does; the base button is never sent, so it does nothing."""


class StopButton(_ReplyButton, template=rf"ollacord:stop:{_IDS}"):
    action = "stop"
    label = "Stop"
    emoji = "⏹️"

    async def pressed(self, controls: ReplyControls, interaction: discord.Interaction) -> None:
        await controls.stop(interaction, self.press)


class RegenerateButton(_ReplyButton, template=rf"ollacord:regenerate:{_IDS}"):
    action = "regenerate"
    label = "Regenerate"
    emoji = "🔄"

    async def pressed(self, controls: ReplyControls, interaction: discord.Interaction) -> None:
        await controls.regenerate(interaction, self.press)


class ReasoningButton(_ReplyButton, template=rf"ollacord:reasoning:{_IDS}"):
    action = "reasoning"
    label = "Reasoning"
    emoji = "💭"

    async def pressed(self, controls: ReplyControls, interaction: discord.Interaction) -> None:
        await controls.reasoning(interaction, self.press)


def controls_view(controls: Controls, channel: int, asked: int, user: int) -> discord.ui.View:
    """The view for a reply's first message (an empty view removes the buttons)."""
    view = discord.ui.View(timeout=None)
    if controls is Controls.STOP:
        view.add_item(StopButton(channel, asked, user))
    if controls.regenerate:
        view.add_item(RegenerateButton(channel, asked, user))
    if controls.reasoning:
        view.add_item(ReasoningButton(channel, asked, user))
    return view


def shown_controls(message: discord.Message) -> Controls:
    """Which of our buttons a message carries now (read from Discord, e.g. after a restart)."""
    actions = {custom_id.split(":")[1] for custom_id in _custom_ids(message)}
    if "stop" in actions:
        return Controls.STOP
    if "regenerate" in actions:
        return Controls.REGENERATE_REASONING if "reasoning" in actions else Controls.REGENERATE
    return Controls.REASONING if "reasoning" in actions else Controls.NONE


def demoted_view(message: discord.Message) -> discord.ui.View | None:
    """The buttons an answer keeps once it is no longer the latest: only Reasoning (None: no
    buttons at all)."""
    for custom_id in _custom_ids(message):
        match = re.fullmatch(rf"ollacord:reasoning:{_IDS}", custom_id)
        if match:
            ids = int(match["channel"]), int(match["asked"]), int(match["user"])
            return controls_view(Controls.REASONING, *ids)
    return None


def _custom_ids(message: discord.Message) -> list[str]:
    ids = [
        str(getattr(child, "custom_id", None))
        for row in message.components
        for child in getattr(row, "children", ())
    ]
    return [custom_id for custom_id in ids if custom_id.startswith("ollacord:")]
