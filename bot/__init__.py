"""ollacord: a Discord bot that streams replies from your own Ollama server.

Public entry points: ``Settings`` (configuration) and ``create_bot`` (the discord.Client).
The Discord layer is imported only when asked for, so that importing a pure module such as
``bot.splitter`` does not import discord.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ConfigError, Settings

if TYPE_CHECKING:
    from .discord import OllacordBot, create_bot

__all__ = ["ConfigError", "OllacordBot", "Settings", "create_bot"]


def __getattr__(name: str) -> Any:
    if name in {"OllacordBot", "create_bot"}:
        from . import discord as discord_layer

        return getattr(discord_layer, name)
    raise AttributeError(f"module 'bot' has no attribute {name!r}")
