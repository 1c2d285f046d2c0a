"""Every Ollama failure ends in one clear Discord message, a log line with the cause, and an
unchanged history (SimCord + the fake Ollama)."""

from __future__ import annotations

import logging
from typing import Any

import discord
import pytest
from simcord import Env

from bot import OllacordBot
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, setup_channel, stored


async def ask(env: Env, text: str = "hello") -> tuple[Any, list[discord.Message]]:
    channel, alice = setup_channel(env)
    await alice.send(channel, f"{env.bot.user.mention} {text}")
    return channel, bot_messages(env, channel)


def reply_log(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if "event=reply" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


async def test_model_not_pulled_says_which_model_and_how_to_pull_it(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    fake_ollama.remove_model("llama3.2")
    channel, [reply] = await ask(simcord_env)
    assert "`llama3.2` is not available" in reply.content
    assert "ollama pull llama3.2" in reply.content
    assert await stored(simcord_env, channel) == []
    line = reply_log(caplog)
    assert "outcome=error" in line and "ModelNotFound" in line and "not found" in line


@pytest.mark.fake_ollama(legacy_not_found=True)
async def test_model_not_pulled_with_the_pre_0_12_wording(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    fake_ollama.remove_model("llama3.2")
    _, [reply] = await ask(simcord_env)
    assert "ollama pull llama3.2" in reply.content


@pytest.mark.bot_env(OLLAMA_URL="http://127.0.0.1:9")
async def test_ollama_unreachable_names_the_url(
    simcord_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    channel, [reply] = await ask(simcord_env)
    assert "can't reach Ollama at http://127.0.0.1:9" in reply.content
    assert "connection refused" in reply.content
    assert await stored(simcord_env, channel) == []
    assert "OllamaUnavailable" in reply_log(caplog)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(status=400, status_message="invalid think value"),
            "Ollama rejected the request: invalid think value",
        ),
        (
            Reply(status=500, status_message="model runner has unexpectedly stopped"),
            "Ollama failed to answer (HTTP 500): model runner has unexpectedly stopped",
        ),
        (
            Reply(tokens=[], error_after=0, error_message="out of memory"),
            "the model stopped with an error (an error was encountered while running the "
            "model: out of memory)",
        ),
        (Reply(tokens=[], done=False), "Ollama ended the reply early"),
    ],
    ids=["400", "500", "error-line-first", "eof-without-any-text"],
)
async def test_failure_before_any_text_is_one_clear_message(
    simcord_env: Env,
    fake_ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
    reply: Reply,
    expected: str,
) -> None:
    fake_ollama.queue(reply)
    channel, [message] = await ask(simcord_env)
    assert expected in message.content
    assert message.content.startswith("⚠️")
    assert await stored(simcord_env, channel) == []
    assert "outcome=error" in reply_log(caplog)


async def test_busy_ollama_is_retried_before_the_user_is_told(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    assert isinstance(simcord_env.bot, OllacordBot)
    for backend in simcord_env.bot.ollama.backends:  # type: ignore[attr-defined]
        backend.client.busy_retry_delays = (0.01,)
    busy = Reply(
        status=503,
        status_message="server busy, please try again.  maximum pending requests exceeded",
    )
    fake_ollama.queue(busy, Reply(tokens=["made", " it"]))
    _, [reply] = await ask(simcord_env)
    assert reply.content == "made it"


async def test_busy_ollama_after_retries_says_so(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    assert isinstance(simcord_env.bot, OllacordBot)
    for backend in simcord_env.bot.ollama.backends:  # type: ignore[attr-defined]
        backend.client.busy_retry_delays = (0.01,)
    busy = Reply(
        status=503,
        status_message="server busy, please try again.  maximum pending requests exceeded",
    )
    fake_ollama.queue(busy, busy)
    channel, [reply] = await ask(simcord_env)
    assert "Ollama is busy" in reply.content
    assert await stored(simcord_env, channel) == []


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(tokens=["Partial", " answer", " here"], error_after=2),
            "the model stopped with an error",
        ),
        (Reply(tokens=["Partial", " answer", " here"], done=False), "Ollama ended the reply early"),
        (
            Reply(tokens=["Partial", " answer", " here"], drop_after=2),
            "the connection to Ollama was lost",
        ),
        (
            Reply(tokens=["Partial", " answer", " here"], drop_after=2, drop_mid_line=True),
            "the connection to Ollama was lost",
        ),
    ],
    ids=["error-line", "eof-without-done", "connection-dropped", "dropped-mid-line"],
)
async def test_reply_cut_off_mid_stream_keeps_the_text_and_says_so(
    simcord_env: Env,
    fake_ollama: FakeOllama,
    caplog: pytest.LogCaptureFixture,
    reply: Reply,
    reason: str,
) -> None:
    fake_ollama.queue(reply)
    channel, [message] = await ask(simcord_env)
    assert message.content.startswith("Partial answer")
    assert f"(reply cut off: {reason}" in message.content
    assert await stored(simcord_env, channel) == []
    assert "outcome=cut_off" in reply_log(caplog)


async def test_an_empty_reply_is_reported_and_not_stored(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    fake_ollama.queue(Reply(tokens=["  ", "\n"]))
    channel, [message] = await ask(simcord_env)
    assert "empty reply" in message.content
    assert await stored(simcord_env, channel) == []


async def test_after_an_error_the_next_message_works_and_history_is_consistent(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=["half"], drop_after=1))
    await alice.send(channel, f"{mention} first try")
    await alice.send(channel, f"{mention} second try")
    # The failed exchange left nothing behind: the second request carries no history.
    assert [m["content"] for m in fake_ollama.chat_requests[-1]["messages"]] == [
        "Alice: second try"
    ]
    assert len(await stored(simcord_env, channel)) == 2


def test_log_lines_never_contain_the_token(caplog: pytest.LogCaptureFixture) -> None:
    from bot.logging_setup import RedactSecrets

    token = "MTIzNDU2Nzg5.secret.token-value"
    handler = logging.Handler()
    handler.addFilter(RedactSecrets([token]))
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "login with %s failed", (token,), None
    )
    assert handler.filter(record)
    assert token not in record.getMessage()
    assert "[redacted]" in record.getMessage()
