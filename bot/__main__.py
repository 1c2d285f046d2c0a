"""``python -m bot`` runs the Discord bot; ``python -m bot console`` chats in the terminal.

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 unexpected crash (with a traceback), 2 configuration
error, 3 Discord rejected DISCORD_TOKEN, 4 Discord refused the Message Content intent (the
last two: :mod:`bot.discord.runner`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from dotenv import find_dotenv, load_dotenv

from .exit_codes import EXIT_CONFIG
from .logging_setup import configure_logging
from .settings import ConfigError, Settings
from .user_messages import MISSING_TOKEN

log = logging.getLogger("bot")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # .env (found from the working directory up) fills in what the environment does not set.
    load_dotenv(find_dotenv(usecwd=True))
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    console = args[:1] == ["console"]
    if args and not console:
        print("usage: python -m bot [console]", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(
        settings.log_level,
        json_format=settings.log_format == "json",
        secrets=[settings.discord_token],
        log_file=settings.log_file,
        # The console's terminal belongs to the conversation: only problems interrupt it.
        terminal_level="WARNING" if console else None,
    )
    if console:
        from .console import run_console

        return asyncio.run(run_console(settings))
    if not settings.discord_token:
        print(MISSING_TOKEN, file=sys.stderr)
        return EXIT_CONFIG
    log.info("event=start %s", settings.describe())
    # Imported here: the console never needs discord.py.
    from .discord.runner import run_discord

    return asyncio.run(run_discord(settings))


if __name__ == "__main__":
    sys.exit(main())
