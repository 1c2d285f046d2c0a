"""Graceful shutdown inside the bot: replies in flight finish or end with a visible note."""

from __future__ import annotations

import asyncio

from simcord import Env

from bot.background import cancel_and_wait
from bot.user_messages import RESTART_NOTE, RESTARTING
from tests.conftest import until
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_of


async def test_shutdown_interrupts_long_replies_and_queued_ones_with_a_note(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    mention = simcord_env.bot.user.mention
    await alice.send(channel, f"{mention} a finished exchange")
    fake_ollama.queue(Reply(tokens=[f" w{i}" for i in range(500)], token_delay=0.02))
    long_one = simcord_env.backend.create_message(channel.id, alice.id, f"{mention} long one")
    queued = simcord_env.backend.create_message(channel.id, bob.id, f"{mention} queued behind it")
    bot_id = simcord_env.bot.user.id

    def answers() -> dict[int, str]:
        return {
            m.reference.message_id: m.content
            for m in channel.history()
            if m.author.id == bot_id and m.reference is not None
        }

    # Wait for the long reply's first words on Discord (not only for Ollama to start).
    assert await until(lambda: answers().get(long_one.id, "").startswith("w0"))

    await bot_of(simcord_env).engine.shutdown(grace=0.2, stop_note=RESTART_NOTE)
    await simcord_env.settle()

    replies = answers()
    assert replies[long_one.id].startswith("w0") and replies[long_one.id].endswith(RESTART_NOTE)
    assert replies[queued.id] == RESTART_NOTE  # the queued message is told too
    # Only the completed exchange is in the history.
    history = await bot_of(simcord_env).store.load(f"discord:{channel.id}")
    assert [t.content for t in history] == [
        "alice: a finished exchange",
        "You said: alice: a finished exchange",
    ]
    assert await fake_ollama.wait_for_async(lambda f: f.cancelled == 1)


async def test_replies_that_finish_within_the_grace_period_complete(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    fake_ollama.queue(Reply(tokens=["quick", " answer"], token_delay=0.05))
    simcord_env.backend.create_message(channel.id, alice.id, f"{simcord_env.bot.user.mention} hi")
    assert await fake_ollama.wait_for_async(lambda f: f.active == 1)

    await bot_of(simcord_env).engine.shutdown(grace=5.0, stop_note=RESTART_NOTE)
    await simcord_env.settle()

    assert channel.last_message.content == "quick answer"
    assert len(await bot_of(simcord_env).store.load(f"discord:{channel.id}")) == 2


async def test_no_new_mentions_are_taken_while_shutting_down(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    await bot_of(simcord_env).engine.shutdown(grace=0, stop_note=RESTART_NOTE)
    await alice.send(channel, f"{simcord_env.bot.user.mention} are you there?")
    assert channel.last_message.content == RESTARTING
    assert fake_ollama.chat_requests == []


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    """Python 3.11's wait_for (redis-py's socket timeouts) can drop a cancellation that comes
    as its inner call completes: a task waited for once would then be waited for forever."""
    cancellations = 0

    async def stubborn() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations == 3:
                    raise
                # dropped, as wait_for does when the inner call finished meanwhile

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), timeout=5)
    assert task.cancelled() and cancellations == 3
