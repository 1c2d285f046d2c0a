"""/healthz, /metrics and JSON logs."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import aiohttp
from simcord import Env

from bot import OllacordBot
from bot.logging_setup import JsonFormatter
from tests.conftest import settings_for
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import free_port


async def test_healthz_is_503_until_the_gateway_connects_and_metrics_are_served(
    fake_ollama: FakeOllama,
) -> None:
    port = free_port()
    bot = OllacordBot(
        settings_for(fake_ollama, {"HEALTH_PORT": str(port), "HEALTH_HOST": "127.0.0.1"})
    )
    assert bot.services.health is not None
    await bot.services.health.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 503
                body = await response.json()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                metrics = await response.text()
    finally:
        await bot.close_resources()
    assert body["status"] == "unhealthy"
    assert body["gateway"] == "disconnected"
    assert body["store"] == "ok"
    assert body["ollama"]["model"] == "llama3.2"
    assert "ollacord_replies_total" in metrics


def test_health_port_zero_disables_the_server(fake_ollama: FakeOllama) -> None:
    assert OllacordBot(settings_for(fake_ollama, {"HEALTH_PORT": "0"})).services.health is None


async def test_metrics_count_a_reply_its_tokens_and_discord_updates(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel = simcord_env.create_guild().create_text_channel("general")
    alice = simcord_env.guild.add_member(simcord_env.create_user("alice"))
    fake_ollama.queue(Reply(tokens=["one", " two", " three"]))
    await alice.send(channel, f"{simcord_env.bot.user.mention} count")
    fake_ollama.remove_model("llama3.2")
    await alice.send(channel, f"{simcord_env.bot.user.mention} again")

    bot = simcord_env.bot
    assert isinstance(bot, OllacordBot)
    text = bot.metrics.render().decode()
    assert 'ollacord_replies_total{outcome="ok"} 1.0' in text
    assert 'ollacord_replies_total{outcome="error"} 1.0' in text
    assert "ollacord_tokens_streamed_total 3.0" in text
    assert 'ollacord_ollama_errors_total{kind="model_not_found"} 1.0' in text
    assert 'ollacord_discord_updates_total{kind="send"} 2.0' in text
    assert "ollacord_time_to_first_token_seconds_count 1.0" in text
    assert "ollacord_reply_duration_seconds_count 1.0" in text
    assert "ollacord_requests_waiting 0.0" in text


def test_json_logs_lift_key_value_fields() -> None:
    record = logging.LogRecord(
        "bot.conversation",
        logging.WARNING,
        __file__,
        1,
        "event=reply conversation=%s outcome=%s cause=%r",
        ("discord:1", "error", "model 'x' not found"),
        None,
    )
    entry: dict[str, Any] = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "reply"
    assert entry["outcome"] == "error"
    assert entry["conversation"] == "discord:1"
    assert entry["level"] == "WARNING"
    assert entry["message"].startswith("event=reply")


async def test_a_taken_health_port_is_logged_and_the_bot_goes_on(
    fake_ollama: FakeOllama, caplog: Any
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = OllacordBot(
            settings_for(fake_ollama, {"HEALTH_PORT": str(port), "HEALTH_HOST": "127.0.0.1"})
        )
        bot.tree.sync = _no_sync  # type: ignore[method-assign]  # no Discord here
        await bot.setup_hook()
        await bot.close_resources()
    assert bot.services.health is None
    assert any("event=health_failed" in r.getMessage() for r in caplog.records)


async def _no_sync() -> list[Any]:
    return []
