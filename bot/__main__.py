"""``python -m bot`` runs the Discord bot; ``python -m bot console`` chats in the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import discord
import yarl
from dotenv import find_dotenv, load_dotenv

from .discord import create_bot
from .logging_setup import configure_logging
from .settings import ConfigError, Settings

log = logging.getLogger("bot")

MISSING_TOKEN = """\
DISCORD_TOKEN is not set.

Get one at https://discord.com/developers/applications: create an application, open "Bot",
press "Reset Token" and copy it. Then put it in .env (copy .env.example to .env):

    DISCORD_TOKEN=your-token-here

See README.md, "Discord application setup". (`python -m bot console` needs no token.)
"""


async def run_discord(settings: Settings) -> int:
    # Test hooks: point discord.py at a fake Discord on 127.0.0.1 (REST and gateway, see tests/).
    if api := os.environ.get("OLLACORD_DISCORD_API"):
        discord.http.Route.BASE = api
    if gateway := os.environ.get("OLLACORD_DISCORD_GATEWAY"):
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    bot = create_bot(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no signal handlers
            loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(bot.start(settings.discord_token))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()  # raises the reason the bot stopped
            return 0
        log.info("event=signal action=graceful_shutdown")
        await bot.shutdown()
        return 0
    except discord.LoginFailure:
        print(
            "Discord rejected DISCORD_TOKEN (401 Unauthorized). Reset the token in the developer "
            "portal (Bot -> Reset Token) and put the new one in .env.",
            file=sys.stderr,
        )
        return 1
    except discord.PrivilegedIntentsRequired:
        print(
            "Discord refused the Message Content intent. Enable it in the developer portal "
            "(Bot -> Privileged Gateway Intents -> Message Content Intent), or set "
            "MESSAGE_CONTENT_INTENT=false (mentions and DMs still work without it).",
            file=sys.stderr,
        )
        return 1
    finally:
        stopper.cancel()
        await bot.close()
        if not runner.done():
            runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # .env (found from the working directory up) fills in what the environment does not set.
    load_dotenv(find_dotenv(usecwd=True))
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level,
        json_format=settings.log_format == "json",
        secrets=[settings.discord_token],
    )
    if args[:1] == ["console"]:
        from .console import run_console

        return asyncio.run(run_console(settings))
    if args:
        print("usage: python -m bot [console]", file=sys.stderr)
        return 2
    if not settings.discord_token:
        print(MISSING_TOKEN, file=sys.stderr)
        return 2
    log.info("event=start %s", settings.describe())
    return asyncio.run(run_discord(settings))


if __name__ == "__main__":
    sys.exit(main())
