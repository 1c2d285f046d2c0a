"""Discord refusing an update never ends the reply loop or loses history."""

from __future__ import annotations

import pytest
from simcord import Env

from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_texts, setup_channel, stored

TOKENS = [f" t{i}" for i in range(30)]


@pytest.mark.bot_clock(step=1.0)
@pytest.mark.parametrize(
    ("status", "code"),
    [(500, 0), (400, 50035), (403, 50013)],
    ids=["server-error", "invalid-form", "missing-permissions"],
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
    if code != 50013:  # missing permissions: the bot stops trying to edit that reply
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


async def test_when_the_first_send_fails_the_history_is_still_kept(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    channel, alice = setup_channel(simcord_env, global_name=None)
    simcord_env.inject_error("POST", "/channels/*/messages", status=403, code=50013, times=None)
    await alice.send(channel, f"{simcord_env.bot.user.mention} go")
    assert len(await stored(simcord_env, channel)) == 2
    assert any("event=discord_send_failed" in r.getMessage() for r in caplog.records)
