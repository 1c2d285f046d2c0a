"""Helpers shared by several test files (fixtures, the stepping clock and ``until`` are in
conftest.py). A helper used by one file only stays in that file."""

from __future__ import annotations

import socket
from typing import Any

import discord
from simcord import Env

from bot import OllacordBot
from bot.history_store import Turn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bot_of(env: Env) -> OllacordBot:
    """The bot under test, typed as our own."""
    assert isinstance(env.bot, OllacordBot)
    return env.bot


def setup_channel(
    env: Env, *, global_name: str | None = "Alice", permissions: discord.Permissions | None = None
) -> tuple[Any, Any]:
    """A new guild's #general and its member alice (with a "Mods" role given ``permissions``)."""
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    roles = []
    if permissions is not None:
        roles.append(guild.create_role("Mods", permissions=permissions))
    alice = guild.add_member(env.create_user("alice", global_name=global_name), roles=roles)
    return channel, alice


def bot_messages(env: Env, channel: Any) -> list[discord.Message]:
    """The bot's messages in ``channel``, oldest first."""
    assert env.bot.user is not None
    return [m for m in channel.history() if m.author.id == env.bot.user.id]


def bot_texts(env: Env, channel: Any) -> list[str]:
    """What the bot's messages in ``channel`` say, oldest first."""
    return [m.content for m in bot_messages(env, channel)]


async def stored(env: Env, channel: Any) -> list[Turn]:
    """The turns the bot keeps in its history for ``channel``'s conversation."""
    return await bot_of(env).store.load(f"discord:{channel.id}")


def final_text(result: Any) -> str:
    """What the user finally sees of a command (after a defer, the follow-up fills it)."""
    return str(result.followups[-1].content if result.followups else result.response.content)
