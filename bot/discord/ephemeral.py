"""Private answers to a command or a button press, whatever state the interaction is in."""

from __future__ import annotations

import logging

import discord

from .failures import DISCORD_FAILURES, failure_cause, failure_status

log = logging.getLogger(__name__)


async def tell(interaction: discord.Interaction, text: str) -> None:
    """Answer only the person who used it: the response if none was sent yet (Discord allows
    one, within 3 s), else a follow-up (after a defer). Never raises: this is also the path
    of last resort when something else failed."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except DISCORD_FAILURES as exc:
        log.warning(
            "event=interaction_answer_failed status=%s cause=%r",
            failure_status(exc),
            failure_cause(exc),
        )
