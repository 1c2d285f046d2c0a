"""Busy servers: fair queueing across channels, limits, and the queue position shown."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest
from simcord import Env

from bot.request_queue import BACKGROUND_PATIENCE, FairQueue
from bot.user_messages import BUSY, TOO_MANY_WAITING
from tests.conftest import until
from tests.fake_ollama import FakeOllama, Reply

SLOW = [f" w{i}" for i in range(20)]


def bot_replies(env: Env, channel: Any) -> dict[int, discord.Message]:
    bot_id = env.bot.user.id
    return {
        m.reference.message_id: m
        for m in channel.history()
        if m.author.id == bot_id and m.reference is not None
    }


def contents_of(env: Env, asked: int, *message_ids: int) -> list[str]:
    """Everything a bot reply showed: created with (as a reply to ``asked``), then each edit
    (of any of its messages: a queue place reposted at the bottom is another message)."""
    shown = []
    for r in env.http_requests:
        if not r.json or "content" not in r.json:
            continue
        created = r.method == "POST" and str(
            (r.json.get("message_reference") or {}).get("message_id")
        ) == str(asked)
        edited = r.method == "PATCH" and any(
            r.path.endswith(f"/messages/{message_id}") for message_id in message_ids
        )
        if created or edited:
            shown.append(r.json["content"])
    return shown


# --- the queue on its own ----------------------------------------------------------------------


async def test_round_robin_across_conversations_and_in_order_within_each() -> None:
    queue = FairQueue(slots=1)
    tickets = [
        queue.enter(conv, user) for conv, user in [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("c", 5)]
    ]
    served = []
    for _ in tickets:
        ticket = next(t for t in tickets if t.granted.done() and not t.finished)
        served.append((ticket.conversation, ticket.user))
        ticket.done()
    assert served == [("a", 1), ("b", 4), ("c", 5), ("a", 2), ("a", 3)]


async def test_positions_are_announced_and_updated_as_the_queue_moves() -> None:
    queue = FairQueue(slots=1)
    seen: dict[int, list[int]] = {2: [], 3: [], 4: []}
    first = queue.enter("a", 1)
    queue.enter("a", 2, seen[2].append)
    queue.enter("b", 3, seen[3].append)
    queue.enter("a", 4, seen[4].append)
    # "a" was just served, so "b" (never served) goes first: 3 is next, then a's replies.
    assert seen == {2: [0, 1], 3: [0], 4: [2]}
    first.done()
    assert seen == {2: [0, 1, 0], 3: [0], 4: [2, 1]}


async def test_a_cancelled_waiter_leaves_without_blocking_others() -> None:
    queue = FairQueue(slots=1)
    first = queue.enter("a", 1)
    second = queue.enter("b", 2)
    third = queue.enter("c", 3)
    waiting = asyncio.create_task(second.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.done()
    assert third.granted.done()
    assert queue.waiting == 0 and queue.active == 1


async def test_slots_limit_concurrency_and_a_channel_never_runs_two_at_once() -> None:
    queue = FairQueue(slots=2)
    a1, a2, b1 = queue.enter("a", 1), queue.enter("a", 2), queue.enter("b", 3)
    assert a1.granted.done() and b1.granted.done() and not a2.granted.done()
    a1.release_slot()  # a's stream ended; its history is not stored yet
    assert not a2.granted.done()
    a1.done()
    assert a2.granted.done()


async def test_background_work_yields_to_replies_but_never_starves_under_steady_load() -> None:
    queue = FairQueue(slots=1, limit=5)
    running = queue.enter("a", 1)
    summary = queue.enter("a", None, background=True)  # a lane of its own, low priority
    served: list[str] = []
    user = 2
    # Steady load: whenever a slot frees, another reply is already waiting.
    replies = []
    for _ in range(6):
        replies.append(queue.enter(f"c{user}", user))
        user += 1
        # Background work is nobody's question: not counted against QUEUE_LIMIT.
        assert queue.waiting == sum(not t.granted.done() for t in replies)
        running.done()
        running = next(t for t in queue._active.values() if not t.finished)
        served.append("summary" if running is summary else f"reply {running.user}")
    assert served.index("summary") == BACKGROUND_PATIENCE  # passed over twice, then served
    assert queue.order() == [t for t in queue.order() if not t.background]


async def test_background_work_takes_a_free_slot_at_once_and_does_not_block_its_conversation() -> (
    None
):
    queue = FairQueue(slots=2)
    summary = queue.enter("a", None, background=True)
    reply = queue.enter("a", 1)
    assert summary.granted.done() and reply.granted.done()  # its own lane: no waiting
    assert not queue.has_pending("a", 0) and queue.pending("a", 1) == 1


# --- through the bot -----------------------------------------------------------------------------


async def test_a_busy_channel_does_not_starve_another(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    busy, quiet = guild.create_text_channel("busy"), guild.create_text_channel("quiet")
    users = [guild.add_member(simcord_env.create_user(f"u{i}")) for i in range(4)]
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=SLOW, token_delay=0.01))
    for user in users[:3]:
        simcord_env.backend.create_message(busy.id, user.id, f"{mention} busy from {user.name}")
    simcord_env.backend.create_message(quiet.id, users[3].id, f"{mention} quiet question")
    await simcord_env.settle()
    order = [r["messages"][-1]["content"] for r in fake_ollama.chat_requests]
    assert order == [
        "u0: busy from u0",
        "u3: quiet question",
        "u1: busy from u1",
        "u2: busy from u2",
    ]


async def test_a_second_question_waits_its_turn_and_a_third_is_not_taken(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=SLOW, token_delay=0.02))
    simcord_env.backend.create_message(channel.id, alice.id, f"{mention} first")
    assert await fake_ollama.wait_for_async(lambda f: f.active == 1)
    second = simcord_env.backend.create_message(channel.id, alice.id, f"{mention} second")
    third = simcord_env.backend.create_message(channel.id, alice.id, f"{mention} third")
    await simcord_env.settle()

    # The second was queued and answered in its turn; the third was not taken, and said so.
    asked = [r["messages"][-1]["content"] for r in fake_ollama.chat_requests]
    assert asked == ["alice: first", "alice: second"]
    reactions = [
        r.path for r in simcord_env.http_requests if r.method == "PUT" and "/reactions/" in r.path
    ]
    assert len(reactions) == 1 and f"/messages/{third.id}/reactions/" in reactions[0]
    assert "⏳" not in reactions[0] and "%E2%8F%B3" not in reactions[0]
    told = [
        m.content for m in channel.history() if m.reference and m.reference.message_id == third.id
    ]
    assert told == [TOO_MANY_WAITING.format(count=2)]
    assert any(m.reference and m.reference.message_id == second.id for m in channel.history())

    # Told once an hour, not for every extra question.
    fake_ollama.queue(Reply(tokens=SLOW, token_delay=0.02))
    simcord_env.backend.create_message(channel.id, alice.id, f"{mention} fourth")
    assert await fake_ollama.wait_for_async(lambda f: f.active == 1)
    simcord_env.backend.create_message(channel.id, alice.id, f"{mention} fifth")
    simcord_env.backend.create_message(channel.id, alice.id, f"{mention} sixth")
    await simcord_env.settle()
    assert sum(m.content == TOO_MANY_WAITING.format(count=2) for m in channel.history()) == 1


@pytest.mark.bot_env(QUEUE_LIMIT="1")
async def test_beyond_the_queue_limit_new_mentions_are_told_to_come_back(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    users = [guild.add_member(simcord_env.create_user(f"u{i}")) for i in range(3)]
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=SLOW, token_delay=0.02))
    asked = []
    for user in users:
        asked.append(simcord_env.backend.create_message(channel.id, user.id, f"{mention} hi").id)
    await simcord_env.settle()
    replies = bot_replies(simcord_env, channel)
    assert replies[asked[2]].content == BUSY
    assert replies[asked[0]].content.startswith("w0") and replies[asked[1]].content.startswith(
        "You said"
    )
    assert len(fake_ollama.chat_requests) == 2


@pytest.mark.bot_clock(step=1.0)
async def test_a_waiting_reply_shows_its_place_updated_as_it_moves(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    users = [guild.add_member(simcord_env.create_user(f"u{i}")) for i in range(3)]
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=SLOW, token_delay=0.02), Reply(tokens=SLOW, token_delay=0.02))
    asked = [
        simcord_env.backend.create_message(channel.id, user.id, f"{mention} q{i}").id
        for i, user in enumerate(users)
    ]
    assert await until(lambda: asked[2] in bot_replies(simcord_env, channel))
    place = bot_replies(simcord_env, channel)[asked[2]]
    await simcord_env.settle()
    third = bot_replies(simcord_env, channel)[asked[2]]
    shown = contents_of(simcord_env, asked[2], place.id, third.id)
    assert shown[0] == "⏳ Queued: 1 ahead of you."
    assert "⏳ Queued: you're next." in shown
    assert third.content == "You said: u2: q2"
