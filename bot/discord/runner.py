"""Running the bot against Discord: start-up retries, fatal refusals, signals, exit codes.

Discord unreachable at start-up (network, DNS, an outage) is retried with backoff, logging one
line per attempt; a refused token (401) or intent (close code 4014) stops the bot with one
plain sentence and an exit code of its own. SIGTERM/SIGINT stop it gracefully at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import aiohttp
import discord
import yarl

from ..app import check_history_store
from ..exit_codes import EXIT_CONFIG, EXIT_INTENTS_REFUSED, EXIT_OK, EXIT_TOKEN_REJECTED
from ..history_store import StoreError
from ..settings import Settings
from ..user_messages import INTENTS_REFUSED, TOKEN_REJECTED
from .client import OllacordBot, create_bot

log = logging.getLogger(__name__)


#: Seconds between start-up attempts while Discord cannot be reached; the last one repeats.
RETRY_DELAYS = (5, 10, 20, 30, 60)
#: Seconds a refused token or intent waits before exiting when no terminal is attached.
FATAL_EXIT_DELAY = 300

FATAL_MESSAGES = {EXIT_TOKEN_REJECTED: TOKEN_REJECTED, EXIT_INTENTS_REFUSED: INTENTS_REFUSED}

#: Gateway close code for a token the gateway does not accept (REST login normally says it first).
CLOSE_AUTHENTICATION_FAILED = 4004


class DiscordUnreachable(Exception):
    """Discord's REST API could not be reached to log in (the bot is closed and built anew)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


def plain_cause(exc: BaseException) -> str:
    """Why Discord could not be reached, in a few words for the log line."""
    if isinstance(exc, discord.HTTPException):
        # A 5xx body is often a whole HTML error page: the status says enough.
        return f"Discord answered HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, discord.ConnectionClosed):
        return f"the gateway closed the connection (code {exc.code})"
    return str(exc) or type(exc).__name__


def _log_unreachable(stage: str, attempt: int, cause: BaseException) -> int:
    """Log the one line for a failed attempt; returns the seconds to wait before the next."""
    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1]
    log.warning(
        "event=discord_unreachable stage=%s attempt=%d cause=%r retry_in=%ds",
        stage,
        attempt,
        plain_cause(cause),
        delay,
    )
    return delay


def _gateway_opened(bot: discord.Client) -> bool:
    # discord.py types ``ws`` as always set, but it is None until a gateway connection opens.
    ws: object = bot.ws
    return ws is not None


class _FirstConnectNoise(logging.Filter):
    """Drops discord.py's "Attempting a reconnect" traceback while no gateway connection has
    opened yet: discord.py does not reconnect then (see :func:`_connect`), which logs the
    attempt in one line instead."""

    def __init__(self, bot: discord.Client) -> None:
        super().__init__()
        self.bot = bot

    def filter(self, record: logging.LogRecord) -> bool:
        reconnect = str(record.msg).startswith("Attempting a reconnect")
        return not reconnect or _gateway_opened(self.bot)


async def _start(bot: discord.Client, token: str) -> None:
    """``bot.start(token)``, except that Discord being unreachable is retried (the gateway)
    or raised as DiscordUnreachable (the login). A refused token or intent is raised as
    discord.py raises it."""
    try:
        await bot.login(token)
    except discord.HTTPException as exc:
        if exc.status < 500:
            raise
        raise DiscordUnreachable(exc) from exc
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        # Not every OSError: a store that cannot be opened is not Discord being away.
        raise DiscordUnreachable(exc) from exc
    await _connect(bot)


async def _connect(bot: discord.Client) -> None:
    """``bot.connect()``, retrying with backoff until the first gateway connection opens.

    Logged in already (commands synced, the model settling): only the connection is retried,
    and /healthz answers meanwhile (gateway disconnected)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            await bot.connect(reconnect=True)
            return
        except AttributeError as exc:
            # discord.py 2.7 (Rapptz/discord.py#10520): when the FIRST gateway connection
            # fails it means to retry, then trips over its own ``self.ws`` being None. The
            # error it meant to retry is the context. Once connected, it reconnects itself.
            if _gateway_opened(bot) or exc.__context__ is None:
                raise
            cause = exc.__context__
        await asyncio.sleep(_log_unreachable("gateway", attempt, cause))


async def _run_once(bot: OllacordBot, token: str, stop: asyncio.Event) -> int:
    """Run one bot until it stops or ``stop`` is set; returns the exit code.

    Raises DiscordUnreachable (after closing the bot) when Discord could not be reached."""
    noise = _FirstConnectNoise(bot)
    logging.getLogger("discord.client").addFilter(noise)
    runner = asyncio.create_task(_start(bot, token))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()  # raises the reason the bot stopped
            return EXIT_OK
        log.info("event=signal action=graceful_shutdown")
        await bot.shutdown()
        return EXIT_OK
    except discord.LoginFailure:
        return EXIT_TOKEN_REJECTED
    except discord.PrivilegedIntentsRequired:
        return EXIT_INTENTS_REFUSED
    except discord.ConnectionClosed as exc:
        if exc.code == CLOSE_AUTHENTICATION_FAILED:
            return EXIT_TOKEN_REJECTED
        raise
    finally:
        logging.getLogger("discord.client").removeFilter(noise)
        stopper.cancel()
        await bot.close()
        if not runner.done():
            runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _signalled_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as a signal came."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _hold_before_fatal_exit(stop: asyncio.Event, code: int) -> None:
    """Without a terminal (Docker, systemd), wait FATAL_EXIT_DELAY before exiting.

    A supervisor restarts an exited bot at once (Docker's ``restart: unless-stopped`` after
    0.1 s, doubling up to 1 min), and every start would be refused again: Discord counts each
    401 towards banning the IP (10,000 invalid requests in 10 minutes). Waiting here caps that
    at one attempt per FATAL_EXIT_DELAY whatever restarts the bot. A signal (docker stop,
    Ctrl-C) ends the wait at once; in a terminal a person is watching, so exit at once.
    """
    if sys.stdin is not None and sys.stdin.isatty():
        return
    log.error(
        "event=fatal exit_code=%d exit_in=%ds why='a restart with this configuration would be "
        "refused again'",
        code,
        FATAL_EXIT_DELAY,
    )
    await _signalled_within(stop, FATAL_EXIT_DELAY)


def _use_test_discord() -> None:
    # Test hooks: point discord.py at a fake Discord on 127.0.0.1 (REST and gateway, see tests/).
    if api := os.environ.get("OLLACORD_DISCORD_API"):
        discord.http.Route.BASE = api
    if gateway := os.environ.get("OLLACORD_DISCORD_GATEWAY"):
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no signal handlers
            loop.add_signal_handler(sig, stop.set)
    return stop


async def run_discord(settings: Settings) -> int:
    """Start the bot, retrying with backoff while Discord cannot be reached; the exit code."""
    try:
        # A store that cannot be used stops the bot here, before it connects to Discord.
        await check_history_store(settings)
    except StoreError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _use_test_discord()
    stop = _stop_on_signals()
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            code = await _run_once(create_bot(settings), settings.discord_token, stop)
        except DiscordUnreachable as exc:
            await _signalled_within(stop, _log_unreachable("login", attempt, exc.cause))
            continue
        if code in FATAL_MESSAGES:
            print(FATAL_MESSAGES[code], file=sys.stderr, flush=True)
            await _hold_before_fatal_exit(stop, code)
        return code
    log.info("event=signal action=exit while=waiting_for_discord")
    return EXIT_OK
