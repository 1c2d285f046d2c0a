"""Whatever raises inside a slash command or a button press, the person gets a plain private
answer and the log gets the cause; never Discord's "This interaction failed".

The faults are real: the SQLite history file loses a table under the running bot (a damaged or
hand-edited database), so the store raises where the command or button first touches it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
import pytest_asyncio
from simcord import Env

from bot import OllacordBot
from bot.user_messages import INTERNAL_ERROR, STORE_UNAVAILABLE_COMMAND
from tests.conftest import NO_LIMITS, SteppingClock, settings_for
from tests.fake_ollama import FakeOllama, Reply


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.db"


@pytest_asyncio.fixture
async def simcord_bot(
    fake_ollama: FakeOllama, clock: SteppingClock, db_path: Path
) -> AsyncIterator[OllacordBot]:
    settings = settings_for(fake_ollama, {"HISTORY_STORE": f"sqlite:///{db_path}"})
    bot = OllacordBot(settings, clock=clock, discord_limits=NO_LIMITS)
    bot.models.retry_delays = (3600.0,)
    yield bot
    await bot.close_resources()


def damage(db_path: Path, table: str) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute(f"DROP TABLE {table}")


async def test_a_command_whose_store_fails_answers_privately_in_plain_words(
    simcord_env: Env, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(simcord_env.create_user("ada"), roles=[admins])
    damage(db_path, "conversations")

    result = await admin.slash(channel, "system set", prompt="Be brief.")

    # A store that fails is not a bug of the bot: its own sentence, a warning with the cause.
    assert result.ephemeral
    assert result.response.content == STORE_UNAVAILABLE_COMMAND
    [error] = simcord_env.errors  # the tree's error hook saw it (and the test expects it)
    assert "no such table" in str(getattr(error, "original", error))
    [line] = [
        r for r in caplog.records if "event=command_failed command=system set" in r.getMessage()
    ]
    assert "no such table" in line.getMessage() and line.exc_info is None


async def test_a_button_that_raises_answers_privately_in_plain_words(
    simcord_env: Env, fake_ollama: FakeOllama, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    fake_ollama.queue(Reply(tokens=["An", " answer"]))
    await alice.send(channel, f"{simcord_env.bot.user.mention} question")
    [answer] = [m for m in channel.history() if m.author.id == simcord_env.bot.user.id]
    damage(db_path, "turns")

    result = await alice.click(answer, label="Regenerate")

    assert result.ephemeral
    assert result.response.content == INTERNAL_ERROR
    assert any(
        "event=button_failed action=regenerate" in r.getMessage() and r.exc_info
        for r in caplog.records
    )
