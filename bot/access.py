"""Who may talk to the bot, where, and who may change it: pure rules, decided from ids.

The Discord layer collects the ids (the channel, its parent and category, the author's roles)
and asks here; nothing in this module does I/O, so every rule is tested directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .clock import Clock
from .settings import Settings

NOTICE_PERIOD = 3600.0  # a refused person is told at most once an hour


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    BLOCKED = "blocked"  # on a block list: blocks always win
    NOT_ALLOWED = "not_allowed"  # allow lists are set and the user is on none of them


@dataclass(frozen=True)
class AccessPolicy:
    """The allow and block lists of `.env`. Empty allow lists mean everyone, everywhere."""

    allowed_channels: frozenset[int] = frozenset()
    allowed_roles: frozenset[int] = frozenset()
    allowed_users: frozenset[int] = frozenset()
    blocked_users: frozenset[int] = frozenset()
    blocked_roles: frozenset[int] = frozenset()
    admin_users: frozenset[int] = frozenset()
    allow_dms: bool = True
    reset_requires_admin: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            allowed_channels=settings.allowed_channel_ids,
            allowed_roles=settings.allowed_role_ids,
            allowed_users=settings.allowed_user_ids,
            blocked_users=settings.blocked_user_ids,
            blocked_roles=settings.blocked_role_ids,
            admin_users=settings.admin_user_ids,
            allow_dms=settings.allow_dms,
            reset_requires_admin=settings.reset_requires_admin,
        )

    @property
    def needs_roles(self) -> bool:
        """Whether a verdict can depend on the user's roles."""
        return bool(self.allowed_roles or self.blocked_roles)

    def channel_allowed(self, ids: Iterable[int | None]) -> bool:
        """``ids``: the channel, and for a thread its parent, and the category above. A thread
        follows its parent channel; a listed category allows every channel in it."""
        if not self.allowed_channels:
            return True
        return any(i in self.allowed_channels for i in ids if i is not None)

    def user_verdict(self, user: int, roles: Iterable[int]) -> Verdict:
        role_set = set(roles)
        if user in self.blocked_users or role_set & self.blocked_roles:
            return Verdict.BLOCKED
        if not self.allowed_users and not self.allowed_roles:
            return Verdict.ALLOWED
        if user in self.allowed_users or role_set & self.allowed_roles:
            return Verdict.ALLOWED
        return Verdict.NOT_ALLOWED

    def describe(self) -> str:
        """For /status (admins only): the lists in force."""

        def ids(values: frozenset[int], empty: str) -> str:
            return ", ".join(str(v) for v in sorted(values)) or empty

        return "\n".join(
            [
                f"**Allowed channels/categories:** {ids(self.allowed_channels, 'all')}",
                f"**Allowed roles:** {ids(self.allowed_roles, 'everyone')}",
                f"**Allowed users:** {ids(self.allowed_users, 'everyone')}",
                f"**Blocked users:** {ids(self.blocked_users, 'none')}",
                f"**Blocked roles:** {ids(self.blocked_roles, 'none')}",
                f"**Admins:** {ids(self.admin_users, 'members with Manage Server')}",
                f"**DMs:** {'answered' if self.allow_dms else 'off'}; "
                f"**/reset:** {'admins only' if self.reset_requires_admin else 'anyone allowed'}",
            ]
        )


class NoticeLimiter:
    """Refusals are told once per person per hour (per kind), never for every message."""

    def __init__(self, clock: Clock, period: float = NOTICE_PERIOD) -> None:
        self.clock = clock
        self.period = period
        self._last: dict[tuple[str, int], float] = {}

    def should_tell(self, kind: str, user: int) -> bool:
        now = self.clock()
        last = self._last.get((kind, user))
        if last is not None and now - last < self.period:
            return False
        self._last[(kind, user)] = now
        if len(self._last) > 10_000:  # forget the oldest: a bounded memory for big servers
            cutoff = now - self.period
            self._last = {k: t for k, t in self._last.items() if t >= cutoff}
        return True
