"""Who may talk to the bot, reset a conversation, configure a channel, or press its buttons.

The rules themselves are pure (:mod:`bot.access`); this module gathers the ids they need from
Discord (the channel, its parent and category, the member's roles, a DM author's roles in the
servers shared with the bot) and is the one place every message, command and button asks.
Commands name their check (a ``*_refusal`` method: the sentence to show, or None to go on)
and the command tree applies it before the command runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import discord

from ..access import AccessPolicy, NoticeLimiter, Verdict
from ..clock import Clock
from ..user_messages import (
    DM_BLOCKED,
    DM_NOT_ALLOWED,
    DMS_OFF,
    NOT_ADMIN,
    NOT_CONFIGURATOR,
    NOT_FOR_YOU,
    RESET_REFUSED,
)
from .failures import DISCORD_FAILURES

log = logging.getLogger(__name__)

# A DM author's roles are looked up in the shared servers at most this often.
DM_ROLE_CACHE_SECONDS = 300.0


# The key of a command's (or group's) permission check in its ``extras``.
PERMISSION = "ollacord.permission"

PermissionCheck = Callable[[discord.Interaction], Awaitable[str | None]]
"""Why an interaction is refused (the sentence to show), or None when it may go on."""


@dataclass(frozen=True)
class MessageRefusal:
    """A message that is not answered; ``tell`` is the sentence to send, or None to stay
    silent (a channel the bot does not serve, or a person told less than an hour ago)."""

    tell: str | None


# Where the bot does not answer at all, whoever asks.
CHANNEL_NOT_SERVED = "channel_not_served"
DMS_NOT_SERVED = "dms_not_served"


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


class Permissions:
    """Checks by the bot itself: Discord's command visibility settings are not relied on."""

    def __init__(
        self,
        policy: AccessPolicy,
        clock: Clock,
        guilds: Callable[[], Sequence[discord.Guild]],
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.guilds = guilds
        self.notices = NoticeLimiter(clock)
        self._dm_roles: dict[int, tuple[float, frozenset[int]]] = {}

    # --- talking -----------------------------------------------------------------------------

    async def check_message(self, message: discord.Message) -> MessageRefusal | None:
        """The allow and block lists for a message addressed to the bot. None: answer it."""
        verdict = await self._talk(message.author, message.guild is not None, message.channel)
        if verdict is Verdict.ALLOWED:
            return None
        if verdict == CHANNEL_NOT_SERVED:
            log.debug("event=ignored reason=channel channel=%s", message.channel.id)
            return MessageRefusal(None)  # silence: the bot does not serve this channel
        if verdict == DMS_NOT_SERVED:
            return self._refuse(message, "dm_off", DMS_OFF)
        if message.guild is not None:
            return self._refuse(message, "refused", NOT_FOR_YOU)
        reason = DM_BLOCKED if verdict is Verdict.BLOCKED else DM_NOT_ALLOWED
        return self._refuse(message, "dm_refused", reason)

    async def _talk(self, user: discord.abc.User, in_guild: bool, channel: Any) -> Verdict | str:
        """Whether ``user`` may talk to the bot in ``channel``: the lists' verdict, or why the
        bot does not answer there at all (a channel it does not serve, DMs turned off)."""
        if not in_guild:
            if not self.policy.allow_dms:
                return DMS_NOT_SERVED
            roles = await self._dm_roles_if_needed(user.id)
        else:
            if not self.policy.channel_allowed(channel_scope(channel)):
                return CHANNEL_NOT_SERVED
            roles = frozenset(r.id for r in getattr(user, "roles", ()))
        return self.policy.user_verdict(user.id, roles)

    def _refuse(self, message: discord.Message, kind: str, text: str) -> MessageRefusal:
        log.info(
            "event=access_refused kind=%s channel=%s user=%s",
            kind,
            message.channel.id,
            message.author.id,
        )
        # A refused person is told once an hour, never for every message.
        return MessageRefusal(text if self.notices.should_tell(kind, message.author.id) else None)

    async def _dm_roles_if_needed(self, user: int) -> frozenset[int]:
        return await self.roles_in_shared_guilds(user) if self.policy.needs_roles else frozenset()

    async def roles_in_shared_guilds(self, user: int) -> frozenset[int]:
        """A DM author's roles in the servers the bot shares with them (asked over REST: the
        bot does not need the privileged members intent); cached for a few minutes."""
        cached = self._dm_roles.get(user)
        now = self.clock()
        if cached is not None and now - cached[0] < DM_ROLE_CACHE_SECONDS:
            return cached[1]
        roles: set[int] = set()
        for guild in self.guilds():
            member = guild.get_member(user)
            if member is None:
                try:
                    member = await guild.fetch_member(user)
                except DISCORD_FAILURES:
                    continue
            roles.update(role.id for role in member.roles)
        result = frozenset(roles)
        self._dm_roles[user] = (now, result)
        return result

    # --- commands ----------------------------------------------------------------------------

    def is_admin(self, interaction: discord.Interaction) -> bool:
        """ADMIN_USER_IDS, or Manage Server in the guild the command is used in."""
        if interaction.user.id in self.policy.admin_users:
            return True
        return interaction.guild is not None and interaction.permissions.manage_guild

    def may_configure(self, interaction: discord.Interaction) -> bool:
        """Channel settings: admins, or members with Manage Channels where it is used."""
        if self.is_admin(interaction):
            return True
        return interaction.guild is not None and interaction.permissions.manage_channels

    async def may_reset(self, interaction: discord.Interaction) -> bool:
        """Admins; or, unless RESET_REQUIRES_ADMIN, anyone who may talk to the bot there."""
        if self.is_admin(interaction):
            return True
        if self.policy.reset_requires_admin:
            return False
        verdict = await self._talk(
            interaction.user, interaction.guild is not None, interaction.channel
        )
        return verdict is Verdict.ALLOWED

    async def admin_refusal(self, interaction: discord.Interaction) -> str | None:
        return None if self.is_admin(interaction) else NOT_ADMIN

    async def configure_refusal(self, interaction: discord.Interaction) -> str | None:
        return None if self.may_configure(interaction) else NOT_CONFIGURATOR

    async def reset_refusal(self, interaction: discord.Interaction) -> str | None:
        return None if await self.may_reset(interaction) else RESET_REFUSED

    # --- buttons -----------------------------------------------------------------------------

    @staticmethod
    def may_stop(interaction: discord.Interaction, asker: int) -> bool:
        """Stop: the asker, or a member with Manage Messages."""
        if interaction.user.id == asker:
            return True
        return interaction.guild is not None and interaction.permissions.manage_messages

    @staticmethod
    def may_regenerate(interaction: discord.Interaction, asker: int) -> bool:
        return interaction.user.id == asker
