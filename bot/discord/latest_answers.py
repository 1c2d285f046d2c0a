"""Each channel's latest answer: the only one that can be regenerated, so the only one with a
Regenerate button, and the messages a regenerated answer is written over."""

from __future__ import annotations

import logging

import discord

from ..rate_limits import CURRENT_PRIORITY, Priority
from .buttons import demoted_view
from .failures import DISCORD_FAILURES, failure_cause

log = logging.getLogger(__name__)


class LatestAnswers:
    """Per channel, the messages of the latest answer this process wrote (its buttons are
    under the last one)."""

    def __init__(self) -> None:
        self._answers: dict[int, list[discord.Message]] = {}

    def messages_of(self, channel: int, pressed: discord.Message) -> list[discord.Message]:
        """The messages of the answer whose button was pressed: all of them if this process
        wrote it, else (after a restart) the one with the button."""
        answer = self._answers.get(channel, [])
        return answer if answer and answer[-1].id == pressed.id else [pressed]

    async def became(self, channel: int, answer: list[discord.Message]) -> None:
        """``answer`` is now the channel's latest: the previous one loses its Regenerate
        button (after a restart, an old button says so when pressed)."""
        previous = self._answers.get(channel)
        if answer:
            self._answers[channel] = answer
        if not previous or (answer and previous[-1].id == answer[-1].id):
            return
        token = CURRENT_PRIORITY.set(Priority.STATUS)
        try:
            await previous[-1].edit(view=demoted_view(previous[-1]))
        except DISCORD_FAILURES as exc:
            log.info(
                "event=remove_button_failed message=%s cause=%r",
                previous[-1].id,
                failure_cause(exc),
            )
        finally:
            CURRENT_PRIORITY.reset(token)
