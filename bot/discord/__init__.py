"""The Discord layer: the only package that imports discord.py.

``client`` (events and lifecycle) -> ``intake`` (a message becomes a plain ``Question``) ->
``answers`` (checks with ``permissions``, then the engine streams into a ``reply_target``
through the scheduler). ``commands`` and ``buttons`` are the slash commands and the Stop and
Regenerate buttons.
"""

from .client import OllacordBot, create_bot

__all__ = ["OllacordBot", "create_bot"]
