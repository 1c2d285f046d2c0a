"""Tests of the fake Discord itself, driven by a REAL discord.py client.

Why: the out-of-process tests and the load benchmark trust this fake to be a Discord that
discord.py cannot tell apart from the real one where it matters: login, the zlib-compressed
gateway, the caches built from READY/GUILD_CREATE, app-command sync and interactions, message
limits, and above all rate limits (headers that discord.py obeys pre-emptively, 429s it retries).
So every test runs an unmodified ``discord.Client`` (or ``AutoShardedClient``, for sharding) in
the test's loop against the fake's thread, with only ``Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY`` pointed at 127.0.0.1.

Windows are small (0.5 s) to keep the file fast; no test asserts wall-clock durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands

from tests.fake_discord import DISCORD_EPOCH_MS, FakeDiscord

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ helpers


@dataclass
class World:
    """A started fake with one guild, one channel and one user."""

    fake: FakeDiscord
    guild: int
    channel: int
    alice: int


class RecordingClient(discord.Client):
    """A plain discord.py client with an app-command tree, recording what it receives."""

    def __init__(self, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True  # so discord.py also asks for member chunks (op 8)
        # guild_ready_timeout: on_ready waits this long after the last GUILD_CREATE (2 s default).
        super().__init__(intents=intents, guild_ready_timeout=0.05, **options)
        self.tree = app_commands.CommandTree(self)
        self.received: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.resumed = asyncio.Event()
        self.command_errors: list[BaseException] = []

        @self.tree.command(name="ping", description="Answer privately")
        async def ping(interaction: discord.Interaction, text: str = "") -> None:
            await interaction.response.send_message(f"pong {text}".strip(), ephemeral=True)

        @self.tree.command(name="slow", description="Defer, then edit and follow up")
        async def slow(interaction: discord.Interaction, count: int = 1) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content=f"working x{count}")
            await interaction.followup.send("done")

        @self.tree.error
        async def on_tree_error(
            interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            self.command_errors.append(error)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every non-initial IDENTIFY; not worth it in tests."""

    async def on_message(self, message: discord.Message) -> None:
        await self.received.put(message)

    async def on_resumed(self) -> None:
        self.resumed.set()

    async def next_message(
        self, predicate: Callable[[discord.Message], bool] = lambda m: True
    ) -> discord.Message:
        while True:
            message = await asyncio.wait_for(self.received.get(), timeout=5)
            if predicate(message):
                return message


@dataclass
class Running:
    world: World
    client: RecordingClient
    task: asyncio.Task[None]
    extra: dict[str, Any] = field(default_factory=dict)


def make_world(**options: Any) -> World:
    fake = FakeDiscord(**options).start()
    guild = fake.create_guild("Test Guild")
    channel = fake.create_channel(guild, "general")
    alice = fake.create_user("alice", global_name="Alice")
    return World(fake, guild, channel, alice)


@pytest.fixture
def fake_options() -> dict[str, Any]:
    """Overridden by ``@pytest.mark.parametrize("fake_options", [...], indirect=True)``."""
    return {"message_window": 0.5}


@pytest.fixture
def world(request: pytest.FixtureRequest, fake_options: dict[str, Any]) -> Iterator[World]:
    options = dict(fake_options)
    options.update(getattr(request, "param", {}))
    w = make_world(**options)
    try:
        yield w
        assert w.fake.server_errors == []  # no handler of the fake crashed
    finally:
        w.fake.stop()


@pytest.fixture
def point_discord_py(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", world.fake.api_url)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(world.fake.gateway_url)
    )


@pytest_asyncio.fixture
async def running(world: World, point_discord_py: None) -> AsyncIterator[Running]:
    client = RecordingClient()
    task = asyncio.create_task(client.start(world.fake.token))
    try:
        await asyncio.wait_for(client.wait_until_ready(), timeout=10)
        yield Running(world, client, task)
    finally:
        await client.close()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)


def text_channel(run: Running) -> discord.TextChannel:
    channel = run.client.get_channel(run.world.channel)
    assert isinstance(channel, discord.TextChannel)
    return channel


def paths(fake: FakeDiscord, method: str, suffix: str) -> list[int]:
    return [r.status for r in fake.requests if r.method == method and r.path.endswith(suffix)]


# ------------------------------------------------------------------------------------ login


async def test_login_ready_and_guild_cache(running: Running) -> None:
    fake, client = running.world.fake, running.client
    assert client.user is not None and client.user.id == fake.application_id
    assert client.application_id == fake.application_id
    guild = client.get_guild(running.world.guild)
    assert guild is not None and guild.name == "Test Guild"
    assert [c.name for c in guild.text_channels] == ["general"]
    alice = guild.get_member(running.world.alice)
    assert alice is not None and alice.display_name == "Alice" and not alice.bot
    assert guild.me is not None and guild.me.guild_permissions.administrator
    assert fake.identifies == 1 and fake.gateway_connections == 1
    assert fake.wait_until_ready(0)
    called = [(r.method, r.path, r.status) for r in fake.requests]
    assert ("GET", "/users/@me", 200) in called
    assert ("GET", "/oauth2/applications/@me", 200) in called


async def test_wrong_token_is_a_login_failure(world: World, point_discord_py: None) -> None:
    client = discord.Client(intents=discord.Intents.default())
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("not-the-token")
    finally:
        await client.close()
    assert world.fake.requests[0].status == 401


async def test_gateway_bot_and_json_content_type(world: World) -> None:
    """discord.py only parses JSON when Content-Type is exactly application/json."""
    headers = {"Authorization": f"Bot {world.fake.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{world.fake.api_url}/gateway/bot", headers=headers) as resp,
    ):
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert body["url"] == world.fake.gateway_url and body["shards"] == 1
    assert body["session_start_limit"]["max_concurrency"] == 1


# ------------------------------------------------------------------------------------ messages


async def test_on_message_sees_author_content_and_mentions(running: Running) -> None:
    fake, client, w = running.world.fake, running.client, running.world
    message_id = fake.user_message(w.channel, w.alice, "hello there", mention_bot=True)
    message = await client.next_message()
    assert message.id == message_id
    assert message.content == f"<@{fake.application_id}> hello there"
    assert message.author.id == w.alice and isinstance(message.author, discord.Member)
    assert message.author.display_name == "Alice"
    assert client.user is not None and client.user.mentioned_in(message)
    assert message.guild is not None and message.guild.id == w.guild

    fake.user_message(w.channel, w.alice, "no ping")
    plain = await client.next_message()
    assert plain.content == "no ping" and plain.mentions == []

    dm_id = fake.user_dm(w.alice, "psst")
    dm = await client.next_message()
    assert dm.id == dm_id and isinstance(dm.channel, discord.DMChannel) and dm.guild is None


async def test_reply_with_reference_then_edit(running: Running) -> None:
    fake, client, w = running.world.fake, running.client, running.world
    fake.user_message(w.channel, w.alice, "question", mention_bot=True)
    source = await client.next_message()

    reply = await source.channel.send("thinking", reference=source)
    reply = await reply.edit(content="the answer")
    assert reply.content == "the answer" and reply.edited_at is not None

    stored = fake.messages(w.channel)[-1]
    assert stored["id"] == str(reply.id) and stored["content"] == "the answer"
    assert stored["type"] == 19
    assert stored["message_reference"]["message_id"] == str(source.id)
    assert stored["referenced_message"]["content"] == source.content
    assert fake.message_history(reply.id) == ["thinking", "the answer"]
    # Discord sends the bot its own messages too.
    own = await client.next_message(lambda m: m.id == reply.id)
    assert own.author == client.user and own.reference is not None

    # A reply to the bot's message pings the bot (replied_user).
    fake.user_message(w.channel, w.alice, "follow-up", reply_to=reply.id)
    follow = await client.next_message(lambda m: m.author.id == w.alice)
    assert client.user is not None and client.user.mentioned_in(follow)
    assert follow.reference is not None and follow.reference.message_id == reply.id


async def test_typing_reaction_delete_and_dm(running: Running) -> None:
    fake, client, w = running.world.fake, running.client, running.world
    channel = text_channel(running)
    await channel.typing()
    sent = await channel.send("react to me")
    await sent.add_reaction("👍")
    assert fake.messages(w.channel)[-1]["reactions"][0]["emoji"]["name"] == "👍"
    await sent.delete()
    assert fake.messages(w.channel) == []
    assert paths(fake, "POST", "/typing") == [204]

    upload = await channel.send("see file", file=discord.File(io.BytesIO(b"abc"), "notes.txt"))
    assert upload.attachments[0].filename == "notes.txt" and upload.attachments[0].size == 3
    assert fake.requests[-1].files == ["notes.txt"]

    user = await client.fetch_user(w.alice)
    dm = await user.create_dm()
    await dm.send("hi alice")
    assert fake.messages(fake.dm_channel(w.alice))[-1]["content"] == "hi alice"


async def test_content_limits_are_enforced(running: Running) -> None:
    fake, w = running.world.fake, running.world
    channel = text_channel(running)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.status == 400 and too_long.value.code == 50035
    assert "2000" in too_long.value.text

    ok = await channel.send("x" * 2000)
    with pytest.raises(discord.HTTPException) as edit_too_long:
        await ok.edit(content="y" * 2001)
    assert edit_too_long.value.code == 50035
    with pytest.raises(discord.HTTPException) as empty:
        await ok.edit(content="")
    assert empty.value.code == 50006  # what Discord answers for an empty message
    assert fake.message_history(ok.id) == ["x" * 2000]

    with pytest.raises(discord.NotFound) as unknown:
        await channel.get_partial_message(1234).edit(content="hi")
    assert unknown.value.code == 10008
    with pytest.raises(discord.NotFound) as no_channel:
        await running.client.http.send_message(999, params=_content_params("hi"))
    assert no_channel.value.code == 10003
    assert len(fake.messages(w.channel)) == 1


def _content_params(text: str) -> Any:
    return discord.http.handle_message_parameters(content=text)


# ------------------------------------------------------------------------------------ commands


async def test_slash_commands_round_trip(running: Running) -> None:
    fake, client, w = running.world.fake, running.client, running.world
    with pytest.raises(LookupError):
        fake.slash(w.channel, w.alice, "ping")
    synced = await client.tree.sync()
    assert {c.name for c in synced} == {"ping", "slow"}
    assert fake.commands["ping"]["options"][0]["name"] == "text"

    ping = fake.slash(w.channel, w.alice, "ping", {"text": "yo"})
    assert await fake.wait_for_async(lambda f: f.interaction_response(ping) is not None)
    answer = fake.interaction_response(ping)
    assert answer is not None and answer["type"] == 4 and answer["ephemeral"] is True
    assert answer["message"]["content"] == "pong yo"
    assert fake.messages(w.channel) == []  # ephemeral: nobody else sees it

    slow = fake.slash(w.channel, w.alice, "slow", {"count": 3})
    assert await fake.wait_for_async(
        lambda f: len((f.interaction_response(slow) or {}).get("followups", [])) == 1
    )
    deferred = fake.interaction_response(slow)
    assert deferred is not None and deferred["type"] == 5 and deferred["ephemeral"] is False
    assert deferred["message"]["content"] == "working x3"
    assert [e["content"] for e in deferred["edits"]] == ["working x3"]
    assert [m["content"] for m in deferred["followups"]] == ["done"]
    assert [m["content"] for m in fake.messages(w.channel)] == ["working x3", "done"]
    assert client.command_errors == []


async def test_interaction_acknowledged_twice_is_rejected(running: Running) -> None:
    fake, w = running.world.fake, running.world
    await running.client.tree.sync()
    interaction_id = fake.slash(w.channel, w.alice, "ping")
    assert await fake.wait_for_async(lambda f: f.interaction_response(interaction_id) is not None)
    token = next(
        r.path.split("/")[3]
        for r in fake.requests
        if r.path.startswith(f"/interactions/{interaction_id}/")
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.api_url}/interactions/{interaction_id}/{token}/callback",
            json={"type": 4, "data": {"content": "again"}},
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["code"] == 40060


# ------------------------------------------------------------------------------------ rate limits


async def test_rate_limit_headers_and_429_wire_format(world: World) -> None:
    """Five creates pass with Remaining 4..0; the sixth is a 429 shaped like Discord's."""
    fake = world.fake
    url = f"{fake.api_url}/channels/{world.channel}/messages"
    headers = {"Authorization": f"Bot {fake.token}"}
    remaining: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            async with session.post(url, json={"content": f"m{i}"}, headers=headers) as resp:
                assert resp.status == 200
                remaining.append(resp.headers["X-RateLimit-Remaining"])
                assert resp.headers["X-RateLimit-Limit"] == "5"
                assert float(resp.headers["X-RateLimit-Reset-After"]) <= 0.5
                assert float(resp.headers["X-RateLimit-Reset"]) > time.time() - 1
                bucket = resp.headers["X-RateLimit-Bucket"]
        async with session.post(url, json={"content": "m5"}, headers=headers) as resp:
            assert resp.status == 429
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["Via"] and resp.headers["X-RateLimit-Scope"] == "user"
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.headers["X-RateLimit-Bucket"] == bucket
            body = await resp.json()
        edit_url = f"{url}/{fake.messages(world.channel)[0]['id']}"
        async with session.patch(edit_url, json={"content": "e"}, headers=headers) as resp:
            assert resp.status == 429  # create and edit share the channel's bucket
    assert remaining == ["4", "3", "2", "1", "0"]
    assert body["message"] == "You are being rate limited." and body["global"] is False
    assert 0 < body["retry_after"] <= 0.5
    assert fake.rate_limited["user"] == 2 and len(fake.messages(world.channel)) == 5


async def test_discord_py_waits_on_headers_and_needs_no_429(running: Running) -> None:
    fake, w = running.world.fake, running.world
    message = await text_channel(running).send("v0")
    for i in range(1, 9):
        await message.edit(content=f"v{i}")
    assert fake.message_history(message.id) == [f"v{i}" for i in range(9)]
    # Nine calls through a 5-per-window bucket and not one 429: discord.py read
    # X-RateLimit-Remaining: 0 and slept X-RateLimit-Reset-After on its own.
    assert fake.rate_limited == {"user": 0, "global": 0, "shared": 0}
    assert paths(fake, "PATCH", f"/messages/{message.id}") == [200] * 8
    assert fake.messages(w.channel)[-1]["content"] == "v8"


@pytest.mark.parametrize("world", [{"send_ratelimit_headers": False}], indirect=True)
async def test_without_headers_discord_py_retries_the_429(running: Running) -> None:
    fake = running.world.fake
    message = await text_channel(running).send("v0")
    for i in range(1, 9):
        await message.edit(content=f"v{i}")
    assert fake.rate_limited["user"] >= 1
    assert 429 in paths(fake, "PATCH", f"/messages/{message.id}")
    assert fake.message_history(message.id) == [f"v{i}" for i in range(9)]


@pytest.mark.parametrize(
    "world", [{"global_limit": 5, "global_window": 0.5, "message_limit": 50}], indirect=True
)
async def test_global_limit_429_is_retried(running: Running) -> None:
    fake = running.world.fake
    channel = text_channel(running)
    await asyncio.gather(*(channel.send(f"burst {i}") for i in range(12)))
    assert fake.rate_limited["global"] >= 1
    assert len(fake.messages(running.world.channel)) == 12


# ------------------------------------------------------------------------------------ gateway


async def test_disconnect_resumes_and_replays_missed_events(running: Running) -> None:
    fake, client, w = running.world.fake, running.client, running.world
    fake.disconnect_gateway()
    missed = fake.user_message(w.channel, w.alice, "sent while away")
    await asyncio.wait_for(client.resumed.wait(), timeout=10)
    message = await client.next_message()
    assert message.id == missed
    assert fake.resumes == 1 and fake.identifies == 1 and fake.gateway_connections == 2

    client.resumed.clear()
    fake.request_reconnect()  # op 7: discord.py reconnects and RESUMEs too
    await asyncio.wait_for(client.resumed.wait(), timeout=10)
    assert fake.resumes == 2 and fake.identifies == 1


async def test_invalid_session_makes_the_client_identify_again(running: Running) -> None:
    fake, client, w = running.world.fake, running.client, running.world
    fake.invalidate_sessions()
    assert await fake.wait_for_async(lambda f: f.identifies == 2, timeout=10)
    await asyncio.wait_for(client.wait_until_ready(), timeout=10)
    assert await fake.wait_for_async(lambda f: f.wait_until_ready(0))
    fake.user_message(w.channel, w.alice, "after identify")
    message = await client.next_message()
    assert message.content == "after identify"


@pytest.mark.parametrize("world", [{"message_content_allowed": False}], indirect=True)
async def test_message_content_intent_refused_with_4014(
    world: World, point_discord_py: None
) -> None:
    client = RecordingClient()
    try:
        with pytest.raises(discord.PrivilegedIntentsRequired):
            await asyncio.wait_for(client.start(world.fake.token), timeout=10)
    finally:
        await client.close()


class RawGateway:
    """A hand-rolled gateway client: checks the wire format discord.py relies on."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inflator = zlib.decompressobj()

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        data: bytes = msg.data
        assert data.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH: one frame, one message
        payload: dict[str, Any] = json.loads(self.inflator.decompress(data))
        return payload

    async def dispatch(self, event: str) -> dict[str, Any]:
        while True:
            payload = await self.recv()
            if payload["op"] == 0 and payload["t"] == event:
                return payload


@pytest.mark.parametrize("world", [{"interaction_deadline": 0.1}], indirect=True)
async def test_raw_gateway_zlib_intents_and_interaction_deadline(world: World) -> None:
    fake, w = world.fake, world
    gateway = f"{fake.gateway_url}?v=10&encoding=json&compress=zlib-stream"
    async with aiohttp.ClientSession() as session, session.ws_connect(gateway) as ws:
        raw = RawGateway(ws)
        hello = await raw.recv()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await ws.send_json({"op": 1, "d": None})
        assert (await raw.recv())["op"] == 11
        # GUILDS | GUILD_MESSAGES, without MESSAGE_CONTENT or GUILD_MEMBERS.
        intents = (1 << 0) | (1 << 9)
        await ws.send_json({"op": 2, "d": {"token": fake.token, "intents": intents}})
        ready = await raw.dispatch("READY")
        assert ready["s"] == 1 and ready["d"]["user"]["id"] == str(fake.application_id)
        assert ready["d"]["resume_gateway_url"] == fake.gateway_url
        assert ready["d"]["guilds"] == [{"id": str(w.guild), "unavailable": True}]
        guild = (await raw.dispatch("GUILD_CREATE"))["d"]
        assert [m["user"]["id"] for m in guild["members"]] == [str(fake.application_id)]
        assert all("flags" in m for m in guild["members"])
        assert fake.wait_until_ready(5)

        fake.user_message(w.channel, w.alice, "secret")
        hidden = (await raw.dispatch("MESSAGE_CREATE"))["d"]
        assert hidden["content"] == "" and hidden["author"]["id"] == str(w.alice)
        fake.user_message(w.channel, w.alice, "hey", mention_bot=True)
        shown = (await raw.dispatch("MESSAGE_CREATE"))["d"]
        assert shown["content"].endswith(" hey") and shown["mentions"][0]["member"]["flags"] == 0

        # An interaction not answered within the deadline is gone (10062).
        headers = {"Authorization": f"Bot {fake.token}"}
        commands = f"{fake.api_url}/applications/{fake.application_id}/commands"
        body = [{"name": "late", "description": "never answered in time"}]
        async with session.put(commands, json=body, headers=headers) as resp:
            assert resp.status == 200
        interaction_id = fake.slash(w.channel, w.alice, "late")
        created = (await raw.dispatch("INTERACTION_CREATE"))["d"]
        assert created["id"] == interaction_id and created["member"]["user"]["id"] == str(w.alice)
        await asyncio.sleep(0.15)
        callback = f"{fake.api_url}/interactions/{interaction_id}/{created['token']}/callback"
        async with session.post(callback, json={"type": 5}) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 10062

        await ws.send_json({"op": 2, "d": {"token": fake.token, "intents": intents}})
        await ws.receive(timeout=5)
        assert ws.close_code == 4005  # already authenticated


async def test_stop_closes_gateway_sockets(world: World) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(world.fake.gateway_url) as ws:
        hello = await ws.receive_json(timeout=5)  # no compress=: plain text frames
        assert hello["op"] == 10
        receiving = asyncio.create_task(ws.receive(timeout=5))
        await asyncio.to_thread(world.fake.stop)
        msg = await receiving
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001  # going away


# ------------------------------------------------------------------------------------ sharding


class ShardedRecordingClient(RecordingClient, discord.AutoShardedClient):
    """The same recording client on discord.py's ``AutoShardedClient``: every shard in one client,
    or only ``shard_ids`` (then it stands for one of several bot processes)."""


@dataclass
class ShardedWorld:
    """A started fake with ``shard_count=2``, ten guilds (five per shard) with one channel each,
    and one user; discord.py pointed at it."""

    fake: FakeDiscord
    channels: dict[int, int]  # guild id -> its "general" channel
    alice: int


@pytest.fixture
def sharded(monkeypatch: pytest.MonkeyPatch) -> Iterator[ShardedWorld]:
    fake = FakeDiscord(shard_count=2, message_window=0.5).start()
    try:
        guilds = [fake.create_guild(f"Guild {i}") for i in range(10)]
        channels = {guild: fake.create_channel(guild, "general") for guild in guilds}
        alice = fake.create_user("alice")
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_url)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        yield ShardedWorld(fake, channels, alice)
        assert fake.server_errors == []
    finally:
        fake.stop()


@contextlib.asynccontextmanager
async def connected(client: RecordingClient, token: str) -> AsyncIterator[RecordingClient]:
    """Run ``client`` in the test's loop until it is ready (all its shards), then close it."""
    task = asyncio.create_task(client.start(token))
    try:
        await asyncio.wait_for(client.wait_until_ready(), timeout=10)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)


def test_guild_ids_spread_over_shards() -> None:
    """Round-robin by default, ``shard=k`` on demand; ids stay valid, increasing snowflakes."""
    fake = FakeDiscord(shard_count=2)  # not started: ids and guilds need no server
    guilds = [fake.create_guild() for _ in range(10)]
    assert [fake.shard_of(g) for g in guilds] == [0, 1] * 5
    assert [(g >> 22) % 2 for g in guilds] == [0, 1] * 5
    on_one = [fake.create_guild(shard=1) for _ in range(3)]
    assert all((g >> 22) % 2 == 1 for g in on_one)
    assert fake.guilds_on_shard(1) == guilds[1::2] + on_one
    ids = guilds + on_one + [fake.create_user("bob")]
    assert ids == sorted(set(ids))  # strictly increasing, as snowflakes are
    now_ms = time.time() * 1000
    for snowflake in ids:
        assert 0 < snowflake < 1 << 63
        assert abs((snowflake >> 22) + DISCORD_EPOCH_MS - now_ms) < 10_000
        assert abs(discord.utils.snowflake_time(snowflake).timestamp() * 1000 - now_ms) < 10_000
    with pytest.raises(ValueError):
        fake.create_guild(shard=2)
    single = FakeDiscord()  # the default: one shard, and every guild on it
    assert {single.shard_of(single.create_guild()) for _ in range(3)} == {0}
    with pytest.raises(ValueError):
        FakeDiscord(shard_count=0)


@pytest.mark.parametrize("shard_count", [2, None], ids=["shard_count=2", "from-gateway-bot"])
async def test_auto_sharded_client_runs_both_shards_and_sees_every_guild(
    sharded: ShardedWorld, shard_count: int | None
) -> None:
    """One AutoShardedClient, both shards: with ``shard_count=None`` discord.py asks
    ``GET /gateway/bot`` for the count (and the URL) as in production."""
    fake, w = sharded.fake, sharded
    client = ShardedRecordingClient(shard_count=shard_count)
    async with connected(client, fake.token):
        assert client.shard_count == 2 and sorted(client.shards) == [0, 1]
        assert fake.identifies == 2 and fake.identifies_by_shard == {0: 1, 1: 1}
        assert fake.gateway_connections == 2
        assert fake.wait_until_ready(0)
        assert fake.wait_until_ready(0, shard=0) and fake.wait_until_ready(0, shard=1)
        asked = [r.status for r in fake.requests if r.path == "/gateway/bot"]
        assert asked == ([200] if shard_count is None else [])

        assert {g.id for g in client.guilds} == set(w.channels)
        for guild in client.guilds:
            assert guild.shard_id == fake.shard_of(guild.id)
            assert [c.name for c in guild.text_channels] == ["general"]
        # Each GUILD_CREATE went to its own shard's connection, and only there.
        created = sorted(
            (d.guild_id, d.shard) for d in fake.dispatches if d.event == "GUILD_CREATE"
        )
        assert created == sorted((g, fake.shard_of(g)) for g in w.channels)
        assert fake.dispatched_to("READY") in ([0, 1], [1, 0])

        for shard in (0, 1):
            guild = fake.guilds_on_shard(shard)[-1]
            sent = fake.user_message(w.channels[guild], w.alice, f"on {shard}", mention_bot=True)
            got = await client.next_message()
            assert got.id == sent and got.guild is not None and got.guild.shard_id == shard
            assert fake.dispatched_to("MESSAGE_CREATE", sent) == [shard]
        dm = fake.user_dm(w.alice, "psst")
        got = await client.next_message()
        assert got.id == dm and got.guild is None
        assert fake.dispatched_to("MESSAGE_CREATE", dm) == [0]  # DMs ride on shard 0


async def test_two_clients_each_get_only_their_shard(sharded: ShardedWorld) -> None:
    """Two processes' worth of clients (``shard_ids=[0]`` and ``[1]``): each sees its guilds,
    its messages and its interactions, and nothing of the other's; DMs go to shard 0."""
    fake, w = sharded.fake, sharded
    on0, on1 = fake.guilds_on_shard(0), fake.guilds_on_shard(1)
    assert len(on0) == len(on1) == 5
    first = ShardedRecordingClient(shard_ids=[0], shard_count=2)
    second = ShardedRecordingClient(shard_ids=[1], shard_count=2)
    async with connected(first, fake.token):
        assert fake.wait_until_ready(0, shard=0)
        assert not fake.wait_until_ready(0)  # shard 1 is not up yet
        assert not fake.wait_until_ready(0, shard=1)
        async with connected(second, fake.token):
            assert fake.wait_until_ready(0) and fake.identifies_by_shard == {0: 1, 1: 1}
            assert {g.id for g in first.guilds} == set(on0)
            assert {g.id for g in second.guilds} == set(on1)
            assert first.get_guild(on1[0]) is None and second.get_guild(on0[0]) is None

            # Frames on one socket keep their order: had ``m0`` gone to the second client as
            # well, it would be that client's next message, ahead of ``m1``.
            m0 = fake.user_message(w.channels[on0[0]], w.alice, "zero", mention_bot=True)
            m1 = fake.user_message(w.channels[on1[0]], w.alice, "one", mention_bot=True)
            assert (await first.next_message()).id == m0
            assert (await second.next_message()).id == m1
            assert fake.dispatched_to("MESSAGE_CREATE", m0) == [0]
            assert fake.dispatched_to("MESSAGE_CREATE", m1) == [1]

            dm = fake.user_dm(w.alice, "psst")
            after = fake.user_message(w.channels[on1[1]], w.alice, "later")
            assert (await first.next_message()).id == dm
            assert (await second.next_message()).id == after
            assert fake.dispatched_to("MESSAGE_CREATE", dm) == [0]

            # The bot's own message, sent over REST by the second client, comes back on shard 1.
            channel = second.get_channel(w.channels[on1[0]])
            assert isinstance(channel, discord.TextChannel)
            reply = await channel.send("pong")
            assert (await second.next_message()).id == reply.id
            assert fake.dispatched_to("MESSAGE_CREATE", reply.id) == [1]

            await first.tree.sync()  # global commands: either process may sync them
            for guild, shard in ((on1[2], 1), (on0[2], 0)):
                interaction = fake.slash(w.channels[guild], w.alice, "ping", {"text": str(shard)})
                assert await fake.wait_for_async(
                    lambda f, i=interaction: f.interaction_response(i) is not None
                )
                answer = fake.interaction_response(interaction)
                assert answer is not None and answer["message"]["content"] == f"pong {shard}"
                assert fake.dispatched_to("INTERACTION_CREATE", interaction) == [shard]
            assert first.command_errors == second.command_errors == []

            # One shard's connection drops and resumes; the other's is untouched.
            fake.disconnect_gateway(shard=1)
            missed = fake.user_message(w.channels[on1[3]], w.alice, "while away")
            await asyncio.wait_for(second.resumed.wait(), timeout=10)
            assert (await second.next_message()).id == missed
            assert not first.resumed.is_set() and fake.resumes == 1
            assert fake.gateway_close_codes == [4000] and fake.gateway_connections == 3
            assert first.received.empty() and second.received.empty()


async def test_identify_is_checked_against_the_shard_count(sharded: ShardedWorld) -> None:
    """4011 without ``shard`` (or with too few shards), 4010 for an invalid shard; a valid one
    gets READY with only its shard's guilds."""
    fake = sharded.fake
    missing = object()

    async def identify(shard: Any) -> Any:
        """IDENTIFY on a fresh connection: the close code, or the first dispatch."""
        data: dict[str, Any] = {"token": fake.token, "intents": (1 << 0) | (1 << 9)}
        if shard is not missing:
            data["shard"] = shard
        async with aiohttp.ClientSession() as session, session.ws_connect(fake.gateway_url) as ws:
            assert (await ws.receive_json(timeout=5))["op"] == 10
            await ws.send_json({"op": 2, "d": data})
            msg = await ws.receive(timeout=5)
            return ws.close_code if msg.type is aiohttp.WSMsgType.CLOSE else json.loads(msg.data)

    headers = {"Authorization": f"Bot {fake.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{fake.api_url}/gateway/bot", headers=headers) as resp,
    ):
        body = await resp.json()
    assert body["shards"] == 2 and body["session_start_limit"]["max_concurrency"] == 1

    assert await identify(missing) == 4011  # Sharding required
    assert await identify([0, 1]) == 4011  # one shard would carry every guild
    assert await identify([2, 2]) == 4010  # Invalid shard: id out of range
    assert await identify([-1, 2]) == 4010
    assert await identify([0, 3]) == 4010  # not the shard count this fake requires
    assert await identify("0,2") == 4010
    assert fake.gateway_close_codes == [4011, 4011, 4010, 4010, 4010, 4010]
    assert fake.identifies == 0 and fake.identifies_by_shard == {}

    ready = await identify([1, 2])
    assert ready["t"] == "READY" and ready["d"]["shard"] == [1, 2]
    guilds = fake.guilds_on_shard(1)
    assert ready["d"]["guilds"] == [{"id": str(g), "unavailable": True} for g in guilds]
    assert fake.identifies_by_shard == {1: 1}

    # discord.py's plain (unsharded) Client is refused, and stops with the close code.
    client = RecordingClient()
    try:
        with pytest.raises(discord.ConnectionClosed) as closed:
            await asyncio.wait_for(client.start(fake.token), timeout=10)
        assert closed.value.code == 4011
    finally:
        await client.close()


async def test_unsharded_fake_still_routes_by_the_shard_a_client_asks_for(world: World) -> None:
    """With the default ``shard_count=1`` any valid ``[id, count]`` is accepted (as Discord
    accepts more shards than it requires), and routing follows that connection's count."""
    fake = world.fake
    own = (world.guild >> 22) % 2
    gateway = f"{fake.gateway_url}?v=10&encoding=json"
    async with aiohttp.ClientSession() as session:
        for shard, expected in ((own, [str(world.guild)]), (1 - own, [])):
            async with session.ws_connect(gateway) as ws:
                await ws.receive_json(timeout=5)
                identify = {"token": fake.token, "intents": 1, "shard": [shard, 2]}
                await ws.send_json({"op": 2, "d": identify})
                ready = await ws.receive_json(timeout=5)
                assert ready["t"] == "READY" and ready["d"]["shard"] == [shard, 2]
                assert [g["id"] for g in ready["d"]["guilds"]] == expected
    assert fake.identifies_by_shard == {0: 1, 1: 1} and fake.gateway_close_codes == []


# ------------------------------------------------------------------------------------ foreground


def test_main_runs_in_the_foreground() -> None:
    command = [sys.executable, "-m", "tests.fake_discord", "--port", "0", "--channel", "general"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(6)]
            api = next(line.split("=", 1)[1].strip() for line in lines if "DISCORD_API=" in line)
            assert api.startswith("http://127.0.0.1:") and api.endswith("/api/v10")
            assert any(line.startswith("OLLACORD_DISCORD_GATEWAY=ws://") for line in lines)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0


def test_stop_is_clean_and_idempotent() -> None:
    world = make_world()
    thread = world.fake._thread
    world.fake.stop()
    world.fake.stop()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(aiohttp.ClientError):
        asyncio.run(_get(world.fake.api_url + "/gateway"))
    assert json.loads(json.dumps(world.fake.rate_limited)) == {"user": 0, "global": 0, "shared": 0}


async def _get(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        await resp.read()
