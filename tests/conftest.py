"""Shared fixtures: a fake Ollama on 127.0.0.1 and the real bot under SimCord.

Per-test bot settings go through ``@pytest.mark.bot_env(NAME=value, ...)`` with the same names as
`.env`; the clock through ``@pytest.mark.bot_clock(step=...)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from bot import OllacordBot, Settings
from bot.rate_limits import DiscordLimits
from tests.fake_ollama import FakeOllama


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bot_env(**env): .env-style settings for the bot under test")
    config.addinivalue_line("markers", "bot_clock(step): the stepping clock's step in seconds")
    config.addinivalue_line("markers", "fake_ollama(**kwargs): FakeOllama constructor options")
    config.addinivalue_line("markers", "fake_discord(**kwargs): FakeDiscord constructor options")


class SteppingClock:
    """A clock that moves ``step`` seconds every time it is read.

    SimCord freezes ``time.monotonic`` inside bot code (docs/testing.md#trap-frozen-clock), so
    streaming behaviour is tested with this instead: the sequence of edits is then exact and
    repeatable.
    """

    def __init__(self, step: float = 0.0, start: float = 1000.0) -> None:
        self.step = step
        self.now = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        value = self.now
        self.now += self.step
        return value


# SimCord models no rate limits, and its clock only moves when a test moves it: planning for
# Discord's limits there would only park updates. The scheduler's planning is tested on its own
# (test_discord_scheduler.py) and end to end against the rate-limiting fake Discord.
NO_LIMITS = DiscordLimits(channel_limit=10_000, global_limit=10_000)


def settings_for(fake: FakeOllama, env: Mapping[str, str] | None = None) -> Settings:
    base = {
        "OLLAMA_URL": fake.url,
        "OLLAMA_MODEL": "llama3.2",
        "HISTORY_STORE": "memory://",
        "EDIT_INTERVAL": "1.0",
        "HEALTH_PORT": "0",
        # SimCord runs bot code on a virtual clock that stands still during real network I/O:
        # a read beat would wait on every read. The beat has its own tests, outside SimCord.
        "OLLAMA_READ_BEAT": "0",
    }
    base.update(env or {})
    return Settings.from_env(base)


@pytest.fixture
def fake_ollama(request: pytest.FixtureRequest) -> Iterator[FakeOllama]:
    marker = request.node.get_closest_marker("fake_ollama")
    options: dict[str, Any] = {"models": ("llama3.2",)}
    options.update(marker.kwargs if marker else {})
    with FakeOllama(**options) as fake:
        yield fake


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> SteppingClock:
    marker = request.node.get_closest_marker("bot_clock")
    return SteppingClock(step=marker.kwargs.get("step", 0.0) if marker else 0.0)


@pytest.fixture
def bot_env(request: pytest.FixtureRequest) -> dict[str, str]:
    marker = request.node.get_closest_marker("bot_env")
    return dict(marker.kwargs) if marker else {}


@pytest_asyncio.fixture
async def simcord_bot(
    fake_ollama: FakeOllama, clock: SteppingClock, bot_env: dict[str, str]
) -> AsyncIterator[OllacordBot]:
    bot = OllacordBot(settings_for(fake_ollama, bot_env), clock=clock, discord_limits=NO_LIMITS)
    # While Ollama is unreachable the bot retries in the background every few seconds; under
    # SimCord a sleep shorter than the settle timeout is waited out for real, so retry later
    # than any test lasts (the retry itself is tested without SimCord).
    bot.models.retry_delays = (3600.0,)
    yield bot
    # SimCord never calls bot.close(): release the Ollama session and the store ourselves.
    await bot.close_resources()


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Let the bot run (it shares this event loop) until ``predicate()`` holds.

    Waits with real time in a worker thread: SimCord virtualises the bot's timers, and the
    test must not block the loop the bot runs on.
    """
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.to_thread(time.sleep, 0.01)
    return True
