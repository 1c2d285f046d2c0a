"""ollacord: a Discord bot that streams replies from your own Ollama server.

Public entry points: ``Settings`` (configuration) and ``create_bot`` (the discord.Client).
"""

from .discord_bot import OllacordBot, create_bot
from .settings import ConfigError, Settings

__all__ = ["ConfigError", "OllacordBot", "Settings", "create_bot"]
