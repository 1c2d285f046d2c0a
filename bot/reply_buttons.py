"""Stop and Regenerate buttons under a reply.

Their state lives in the ``custom_id`` (channel, the question's message id, the asker), and
they are registered as dynamic items, so a click still reaches the bot after a restart: it
then either works or says plainly that the button has expired.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from .reply_writer import Controls

if TYPE_CHECKING:
    from .discord_bot import OllacordBot

_IDS = r"(?P<channel>\d+):(?P<asked>\d+):(?P<user>\d+)"


class _ReplyButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"ollacord:base:{_IDS}"
):
    """Shared parts; never sent or registered itself."""

    action = ""

    def __init__(self, channel: int, asked: int, user: int, button: discord.ui.Button[Any]) -> None:
        super().__init__(button)
        self.channel = channel
        self.asked = asked
        self.user = user

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _ReplyButton:
        return cls(int(match["channel"]), int(match["asked"]), int(match["user"]))  # type: ignore[call-arg]

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: OllacordBot = interaction.client  # type: ignore[assignment]
        await bot.reply_button(interaction, self.action, self.channel, self.asked, self.user)


def _button(action: str, label: str, emoji: str, channel: int, asked: int, user: int) -> Any:
    return discord.ui.Button(
        label=label,
        emoji=emoji,
        style=discord.ButtonStyle.secondary,
        custom_id=f"ollacord:{action}:{channel}:{asked}:{user}",
    )


class StopButton(_ReplyButton, template=rf"ollacord:stop:{_IDS}"):
    action = "stop"

    def __init__(self, channel: int, asked: int, user: int) -> None:
        super().__init__(channel, asked, user, _button("stop", "Stop", "⏹️", channel, asked, user))


class RegenerateButton(_ReplyButton, template=rf"ollacord:regenerate:{_IDS}"):
    action = "regenerate"

    def __init__(self, channel: int, asked: int, user: int) -> None:
        button = _button("regenerate", "Regenerate", "🔄", channel, asked, user)
        super().__init__(channel, asked, user, button)


def controls_view(controls: Controls, channel: int, asked: int, user: int) -> discord.ui.View:
    """The view for a reply's first message (an empty view removes the buttons)."""
    view = discord.ui.View(timeout=None)
    if controls is Controls.STOP:
        view.add_item(StopButton(channel, asked, user))
    elif controls is Controls.REGENERATE:
        view.add_item(RegenerateButton(channel, asked, user))
    return view
