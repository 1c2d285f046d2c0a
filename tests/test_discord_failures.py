"""Discord failing an update for now never ends the reply or loses history; Discord refusing
a reply for good (a deleted channel, a missing permission) stops it at once: Ollama's stream is
cancelled, nothing more is sent, nothing is stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import pytest
from simcord import Env

from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, bot_texts, setup_channel, stored

TOKENS = [f" t{i}" for i in range(30)]


@pytest.mark.bot_clock(step=1.0)
@pytest.mark.parametrize(
    ("status", "code"),
    [(500, 0), (400, 50035)],
    ids=["server-error", "invalid-form"],
)
async def test_a_failing_edit_is_logged_and_the_reply_goes_on(
    simcord_env: Env,
    fake_ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: int,
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    fake_ollama.queue(Reply(tokens=TOKENS, token_delay=0.01))
    simcord_env.inject_error("PATCH", "/channels/*/messages/*", status=status, code=code, times=1)

    await alice.send(channel, f"{simcord_env.bot.user.mention} go")

    assert len(await stored(simcord_env, channel)) == 2  # the history is complete
    failures = [
        r.getMessage() for r in caplog.records if "event=discord_edit_failed" in r.getMessage()
    ]
    assert failures and f"status={status}" in failures[0]
    assert bot_texts(simcord_env, channel) == ["".join(TOKENS).strip()]


@pytest.mark.bot_clock(step=1.0)
async def test_a_reply_deleted_mid_stream_continues_in_a_new_message(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    fake_ollama.queue(Reply(tokens=TOKENS, token_delay=0.01))
    simcord_env.inject_error(
        "PATCH",
        "/channels/*/messages/*",
        status=404,
        code=10008,
        message="Unknown Message",
        times=1,
    )
    await alice.send(channel, f"{simcord_env.bot.user.mention} go")
    texts = bot_texts(simcord_env, channel)
    assert texts[-1] == "".join(TOKENS).strip()
    assert len(await stored(simcord_env, channel)) == 2


async def test_an_answer_nobody_could_see_is_not_stored_and_the_asker_sees_a_reaction(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    fake_ollama.queue(Reply(tokens=TOKENS, token_delay=0.01))
    # No Send Messages in this channel: every message the bot posts is refused.
    simcord_env.inject_error("POST", "/channels/*/messages", status=403, code=50013, times=None)
    question = await alice.send(channel, f"{simcord_env.bot.user.mention} go")
    assert await fake_ollama.wait_for_async(lambda f: f.active == 0)

    assert await stored(simcord_env, channel) == []
    posts = [
        r for r in simcord_env.http_requests if r.method == "POST" and r.path.endswith("/messages")
    ]
    assert len(posts) == 1  # refused once: not tried again for every token
    assert fake_ollama.cancelled == 1  # the answer stopped being generated
    reactions = [r.path for r in simcord_env.http_requests if "/reactions/" in r.path]
    assert len(reactions) == 1 and f"/messages/{question.id}/reactions/" in reactions[0]
    fixes = [r.getMessage() for r in caplog.records if "event=missing_permission" in r.getMessage()]
    assert len(fixes) == 1 and "Send Messages" in fixes[0]

    # A second question in the same channel: the fix is not logged again.
    fake_ollama.queue(Reply(tokens=TOKENS, token_delay=0.01))
    await alice.send(channel, f"{simcord_env.bot.user.mention} again")
    assert sum("event=missing_permission" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.bot_clock(step=1.0)
@pytest.mark.parametrize(
    ("status", "code", "why"),
    [
        (404, 10003, "Unknown Channel"),
        (403, 50001, "Missing Access"),
        (403, 50013, "Missing Permissions"),
        (400, 50083, "Thread is archived"),
    ],
)
async def test_a_refusal_for_good_mid_stream_stops_the_reply(
    simcord_env: Env,
    fake_ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: int,
    why: str,
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    long = [f" w{i}" for i in range(400)]
    fake_ollama.queue(Reply(tokens=long, token_delay=0.01))
    # The channel goes away (or the bot loses access) after the first message was posted.
    simcord_env.inject_error(
        "PATCH", "/channels/*/messages/*", status=status, code=code, message=why, times=None
    )
    await alice.send(channel, f"{simcord_env.bot.user.mention} talk for long")
    assert await fake_ollama.wait_for_async(lambda f: f.active == 0)

    patches = [r for r in simcord_env.http_requests if r.method == "PATCH"]
    assert len(patches) == 1  # the refused edit, then nothing more
    assert fake_ollama.cancelled == 1  # Ollama stopped generating: the slot is free
    assert fake_ollama.chat_requests[-1] and len(bot_texts(simcord_env, channel)) == 1
    assert await stored(simcord_env, channel) == []
    lines = [r.getMessage() for r in caplog.records if "outcome=undeliverable" in r.getMessage()]
    assert len(lines) == 1 and str(code) in lines[0]


def drop_connections(
    env: Env,
    when: Callable[[discord.http.Route], bool],
    times: int,
    error: Callable[[], Exception] = aiohttp.ServerDisconnectedError,
) -> list[tuple[str, Any]]:
    """Discord closing the connection before it answers (a dropped keep-alive connection; by
    default) or in the middle of its answer: discord.py's HTTP client raises aiohttp's error,
    as it does against the real API. Returns the requests that were dropped (route, and the
    nonce of a message create)."""
    http = env.bot.http
    original = http.request
    dropped: list[tuple[str, Any]] = []

    async def request(route: discord.http.Route, **kwargs: Any) -> Any:
        if len(dropped) < times and when(route):
            nonce = (kwargs.get("json") or {}).get("nonce")
            dropped.append((f"{route.method} {route.url}", nonce))
            raise error()
        return await original(route, **kwargs)

    http.request = request  # type: ignore[method-assign]
    return dropped


def _body_cut() -> Exception:
    return aiohttp.ClientPayloadError("Response payload is not completed")


@pytest.mark.bot_clock(step=1.0)
@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    "error",
    [aiohttp.ServerDisconnectedError, _body_cut, TimeoutError],
    ids=["disconnected", "body-cut", "timeout"],
)
async def test_a_dropped_connection_is_a_failure_for_now_and_the_reply_goes_on(
    simcord_env: Env,
    fake_ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
    method: str,
    error: Callable[[], Exception],
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    fake_ollama.queue(Reply(tokens=TOKENS, token_delay=0.01))
    dropped = drop_connections(
        simcord_env, lambda route: route.method == method and "/messages" in route.url, 1, error
    )

    await alice.send(channel, f"{simcord_env.bot.user.mention} go")

    assert len(dropped) == 1
    assert bot_texts(simcord_env, channel) == ["".join(TOKENS).strip()]
    assert len(await stored(simcord_env, channel)) == 2  # the history is complete
    creates = [
        r.json["nonce"]
        for r in simcord_env.http_requests
        if r.method == "POST" and r.path.endswith("/messages")
    ]
    if method == "POST":  # tried again with the same nonce: Discord would not post it twice
        assert creates == [dropped[0][1]] and creates[0]
    failures = [r.getMessage() for r in caplog.records if "_failed" in r.getMessage()]
    assert len(failures) == 1 and type(error()).__name__ in failures[0]
    assert not [r for r in caplog.records if r.name == "discord.client"]  # no traceback


@pytest.mark.bot_clock(step=1.0)
async def test_a_dropped_connection_when_taking_the_old_regenerate_button_away_is_only_logged(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    fake_ollama.queue(Reply(tokens=["first"]))
    await alice.send(channel, f"{simcord_env.bot.user.mention} one")
    [first] = bot_messages(simcord_env, channel)
    dropped = drop_connections(
        simcord_env, lambda route: route.method == "PATCH" and str(first.id) in route.url, 1
    )
    fake_ollama.queue(Reply(tokens=["second"]))

    await alice.send(channel, f"{simcord_env.bot.user.mention} two")

    assert len(dropped) == 1  # the edit that takes the first answer's button away
    assert bot_texts(simcord_env, channel) == ["first", "second"]
    assert len(await stored(simcord_env, channel)) == 4
    lines = [r.getMessage() for r in caplog.records if "remove_button_failed" in r.getMessage()]
    assert len(lines) == 1 and "ServerDisconnectedError" in lines[0]
    assert not [r for r in caplog.records if r.name == "discord.client"]  # no traceback
