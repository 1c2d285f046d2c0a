"""Stop and Regenerate buttons on replies (SimCord clicks, the fake Ollama)."""

from __future__ import annotations

from typing import Any

import discord
import pytest
from simcord import Env

from bot import OllacordBot
from bot.discord.buttons import controls_view
from bot.history_store import Turn
from bot.reply_text import Controls
from bot.user_messages import (
    BUTTON_EXPIRED,
    NOT_LATEST,
    NOT_YOURS_TO_REGENERATE,
    NOT_YOURS_TO_STOP,
    STOPPED_MARK,
    STOPPED_NOTE,
)
from tests.conftest import NO_LIMITS, SteppingClock, settings_for, until
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_of, setup_channel

LONG = [f" w{i}" for i in range(400)]
# SimCord waits for every running reply before an actor call returns: a stream a test does not
# stop must end within its settle timeout (5 s).
SHORT = [f" s{i}" for i in range(60)]


def labels(message: discord.Message) -> list[str]:
    return [
        child.label  # type: ignore[union-attr]
        for row in message.components
        for child in getattr(row, "children", [])
    ]


def setup(env: Env) -> tuple[Any, Any, Any, Any]:
    """#general with alice, bob, and mod (who may manage messages)."""
    channel, alice = setup_channel(env)
    guild = env.guild
    bob = guild.add_member(env.create_user("bob", global_name="Bob"))
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_messages=True))
    mod = guild.add_member(env.create_user("mod"), roles=[mods])
    return channel, alice, bob, mod


def answer_to(env: Env, channel: Any, asked: int) -> discord.Message:
    bot_id = env.bot.user.id
    return next(
        m
        for m in channel.history()
        if m.author.id == bot_id and m.reference is not None and m.reference.message_id == asked
    )


async def start_long_reply(
    env: Env, fake: FakeOllama, channel: Any, user: Any, tokens: list[str] = LONG
) -> tuple[int, discord.Message]:
    """Ask, and return once the answer's first words are on Discord (still streaming)."""
    fake.queue(Reply(tokens=tokens, token_delay=0.02))
    asked = env.backend.create_message(channel.id, user.id, f"{env.bot.user.mention} talk").id
    first_word = tokens[0].strip()

    def started() -> bool:
        return any(
            m.reference is not None
            and m.reference.message_id == asked
            and m.content.startswith(first_word)
            for m in channel.history()
        )

    assert await until(started)
    return asked, answer_to(env, channel, asked)


async def test_a_streaming_reply_has_a_stop_button_and_a_finished_one_regenerate(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, _, _ = setup(simcord_env)
    asked, streaming = await start_long_reply(simcord_env, fake_ollama, channel, alice, SHORT)
    assert labels(streaming) == ["Stop"]
    await simcord_env.settle()
    assert labels(answer_to(simcord_env, channel, asked)) == ["Regenerate"]


async def test_stop_by_the_asker_keeps_the_text_marks_it_and_stores_it_as_stopped(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, _, _ = setup(simcord_env)
    asked, streaming = await start_long_reply(simcord_env, fake_ollama, channel, alice)

    await alice.click(streaming, label="Stop")
    await simcord_env.settle()

    answer = answer_to(simcord_env, channel, asked)
    assert answer.content.startswith("w0") and answer.content.endswith(STOPPED_NOTE)
    assert "w399" not in answer.content
    assert labels(answer) == ["Regenerate"]
    history = await bot_of(simcord_env).store.load(f"discord:{channel.id}")
    assert history[0] == Turn("user", "Alice: talk")
    assert history[1].content.startswith("w0") and history[1].content.endswith(STOPPED_MARK)
    assert await fake_ollama.wait_for_async(lambda f: f.cancelled == 1)


async def test_someone_else_cannot_stop_a_reply(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    channel, alice, bob, _ = setup(simcord_env)
    asked, streaming = await start_long_reply(simcord_env, fake_ollama, channel, alice, SHORT)
    refused = await bob.click(streaming, label="Stop")
    assert refused.ephemeral and refused.response.content == NOT_YOURS_TO_STOP
    await simcord_env.settle()
    assert answer_to(simcord_env, channel, asked).content.endswith("s59")  # it went on


@pytest.mark.fake_ollama(num_parallel=2)
@pytest.mark.bot_env(MAX_CONCURRENT="2")
async def test_a_moderator_can_stop_a_reply_and_only_that_reply_stops(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, bob, mod = setup(simcord_env)
    other = simcord_env.guild.create_text_channel("other")
    asked, streaming = await start_long_reply(simcord_env, fake_ollama, channel, alice)
    fake_ollama.queue(Reply(tokens=SHORT, token_delay=0.01))  # bob's, streaming meanwhile
    simcord_env.backend.create_message(other.id, bob.id, f"{simcord_env.bot.user.mention} hi")
    assert await fake_ollama.wait_for_async(lambda f: f.active == 2)

    await mod.click(streaming, label="Stop")  # Manage Messages may stop anyone's reply
    await simcord_env.settle()

    assert answer_to(simcord_env, channel, asked).content.endswith(STOPPED_NOTE)
    bob_answer = next(m for m in other.history() if m.author.id == simcord_env.bot.user.id)
    assert bob_answer.content.endswith("s59")  # untouched


async def test_regenerate_replaces_the_last_answer_for_the_asker_only(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, bob, _ = setup(simcord_env)
    fake_ollama.queue(Reply(tokens=["First", " answer"]), Reply(tokens=["Second", " answer"]))
    asked = (await alice.send(channel, f"{simcord_env.bot.user.mention} question")).id
    answer = answer_to(simcord_env, channel, asked)
    assert answer.content == "First answer"

    refused = await bob.click(answer, label="Regenerate")
    assert refused.ephemeral and refused.response.content == NOT_YOURS_TO_REGENERATE
    await alice.click(answer, label="Regenerate")
    await simcord_env.settle()

    regenerated = answer_to(simcord_env, channel, asked)
    assert regenerated.id == answer.id and regenerated.content == "Second answer"
    assert labels(regenerated) == ["Regenerate"]
    # The request did not include the replaced answer; the history holds only the new one.
    assert [m["content"] for m in fake_ollama.chat_requests[-1]["messages"]] == ["Alice: question"]
    history = await bot_of(simcord_env).store.load(f"discord:{channel.id}")
    assert [t.content for t in history] == ["Alice: question", "Second answer"]


async def test_a_split_answer_has_its_buttons_under_its_last_message_and_regenerates_in_place(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, _, _ = setup(simcord_env)
    long_words = [f" word{i}" for i in range(700)]  # about 5,400 characters: three messages
    fake_ollama.queue(Reply(tokens=long_words), Reply(tokens=["Short", " now."]))
    asked = (await alice.send(channel, f"{simcord_env.bot.user.mention} long")).id
    first = bot_messages_in(simcord_env, channel)
    assert len(first) == 3
    # Only the last message carries buttons: the end of the answer was one edit.
    assert [labels(m) for m in first] == [[], [], ["Regenerate"]]

    await alice.click(first[-1], label="Regenerate")
    await simcord_env.settle()
    # The new answer is written over the earlier one's messages; those it no longer needs
    # are removed, so the channel shows one answer, not the new and the rest of the old.
    now = bot_messages_in(simcord_env, channel)
    assert [m.content for m in now] == ["Short now."]
    assert now[0].id == first[0].id and now[0].reference is not None
    assert now[0].reference.message_id == asked
    assert labels(now[0]) == ["Regenerate"]


def bot_messages_in(env: Env, channel: Any) -> list[discord.Message]:
    return sorted(
        (m for m in channel.history() if m.author.id == env.bot.user.id), key=lambda m: m.id
    )


async def test_only_the_latest_answer_keeps_its_regenerate_button(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, _, _ = setup(simcord_env)
    mention = simcord_env.bot.user.mention
    first = (await alice.send(channel, f"{mention} one")).id
    second = (await alice.send(channel, f"{mention} two")).id
    assert labels(answer_to(simcord_env, channel, first)) == []
    assert labels(answer_to(simcord_env, channel, second)) == ["Regenerate"]


async def test_buttons_after_a_restart_still_work_or_say_they_expired(
    simcord_env: Env, fake_ollama: FakeOllama, tmp_path: Any, clock: SteppingClock
) -> None:
    env = {"HISTORY_STORE": f"sqlite:///{tmp_path}/h.db"}
    await bot_of(simcord_env).close_resources()
    await simcord_env.restart_bot(
        OllacordBot(settings_for(fake_ollama, env), clock=clock, discord_limits=NO_LIMITS)
    )
    channel, alice, _, _ = setup(simcord_env)
    mention = simcord_env.bot.user.mention
    first = (await alice.send(channel, f"{mention} one")).id
    old_answer = answer_to(simcord_env, channel, first)
    # A stale Regenerate button: the bot restarts before the next exchange clears it.
    await bot_of(simcord_env).close_resources()
    await simcord_env.restart_bot(
        OllacordBot(settings_for(fake_ollama, env), clock=clock, discord_limits=NO_LIMITS)
    )
    second = (await alice.send(channel, f"{mention} two")).id
    await bot_of(simcord_env).close_resources()
    await simcord_env.restart_bot(
        OllacordBot(settings_for(fake_ollama, env), clock=clock, discord_limits=NO_LIMITS)
    )

    stale_click = await alice.click(old_answer, label="Regenerate")  # not the latest any more
    assert stale_click.ephemeral and stale_click.response.content == NOT_LATEST
    stale = answer_to(simcord_env, channel, first)
    assert stale.content == old_answer.content and labels(stale) == []  # text kept, button gone
    fake_ollama.queue(Reply(tokens=["Fresh", " answer"]))
    latest = answer_to(simcord_env, channel, second)
    await alice.click(latest, label="Regenerate")  # the latest one works after a restart
    await simcord_env.settle()
    assert answer_to(simcord_env, channel, second).content == "Fresh answer"
    await bot_of(simcord_env).close_resources()


async def test_a_stop_button_left_by_an_earlier_run_says_it_expired(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    # A process killed mid-reply leaves its Stop button behind; nothing streams for it now.
    channel, alice, _, _ = setup(simcord_env)
    bot_channel = simcord_env.bot.get_channel(channel.id)
    assert isinstance(bot_channel, discord.TextChannel)
    view = controls_view(Controls.STOP, channel.id, 123456789012345678, alice.id)
    leftover = await bot_channel.send("half an answer", view=view)
    result = await alice.click(leftover, label="Stop")
    assert result.ephemeral and result.response.content == BUTTON_EXPIRED


async def test_a_regenerate_overtaken_by_a_newer_question_leaves_the_channel_working(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice, bob, _ = setup(simcord_env)
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=["First", " answer"]))
    asked = (await alice.send(channel, f"{mention} question")).id
    answer = answer_to(simcord_env, channel, asked)
    # Bob's question is streaming when Alice presses Regenerate: hers waits behind it, and by
    # its turn her answer is no longer the latest, so it is refused.
    bob_asked, _ = await start_long_reply(simcord_env, fake_ollama, channel, bob, SHORT)
    await alice.click(answer, label="Regenerate")
    await simcord_env.settle()

    assert answer_to(simcord_env, channel, asked).content == "First answer"
    assert labels(answer_to(simcord_env, channel, asked)) == []
    assert answer_to(simcord_env, channel, bob_asked).content.endswith("s59")
    # The channel still answers (the refused turn let go of its place).
    fake_ollama.queue(Reply(tokens=["Still", " here"]))
    later = (await alice.send(channel, f"{mention} anyone?")).id
    assert answer_to(simcord_env, channel, later).content == "Still here"
