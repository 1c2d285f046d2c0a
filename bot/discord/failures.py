"""Discord failing a request: an HTTP error, or no whole answer at all.

discord.py retries 5xx answers, 429s and connection resets (by errno), but a server that
closes the connection before answering (a dropped keep-alive connection, a proxy restarting)
or in the middle of its answer comes through as aiohttp's error, and a request that outlives
discord.py's timeout as a TimeoutError. For the bot all are the same kind of failure: that
request did not work, try again later or leave it, and log why."""

from __future__ import annotations

import aiohttp
import discord

#: What every Discord call of the bot expects it might fail with.
DISCORD_FAILURES: tuple[type[Exception], ...] = (
    discord.HTTPException,
    aiohttp.ClientError,  # ClientConnectionError, ClientPayloadError (a body cut short)
    ConnectionError,
    TimeoutError,
)


def failure_status(exc: Exception) -> int | None:
    """The HTTP status of a failure, None when Discord never answered."""
    return exc.status if isinstance(exc, discord.HTTPException) else None


def failure_code(exc: Exception) -> int | None:
    """Discord's JSON error code (10008 Unknown Message...), None when it never answered."""
    return exc.code if isinstance(exc, discord.HTTPException) else None


def failure_cause(exc: Exception) -> str:
    """What went wrong, for the log: Discord's message, or the connection's error."""
    if isinstance(exc, discord.HTTPException):
        return exc.text
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
