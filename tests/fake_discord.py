"""A fake Discord (REST API + gateway) on 127.0.0.1 for running an UNMODIFIED discord.py client.

Why it exists: SimCord (docs/testing.md#simcord) runs the bot in-process against an in-memory
Discord and has no rate-limit model, and it cannot host ``python -m bot`` as a subprocess.
Restarts, kill -9, SIGTERM and rate limits need a Discord that speaks the real wire protocol over
real sockets, so that discord.py's own machinery (``HTTPClient.request``, ``Ratelimit``,
``DiscordWebSocket``, ``ConnectionState`` parsers, the app-command tree) runs exactly as it does in
production.

Why its own thread and event loop: like ``tests/fake_ollama.py``, the server must keep real time
even when the test's loop is virtualised or blocked. It runs in a daemon thread, in a fresh
``contextvars`` context, on an event loop timed by ``time.perf_counter``; rate-limit windows use
the same clock.

Point discord.py at it (``bot/__main__.py`` honours the two env vars)::

    with FakeDiscord() as fake:
        guild = fake.create_guild()
        channel = fake.create_channel(guild, "general")
        alice = fake.create_user("alice")
        env = {"OLLACORD_DISCORD_API": fake.api_url, "OLLACORD_DISCORD_GATEWAY": fake.gateway_url,
               "DISCORD_TOKEN": fake.token}
        ...  # start the bot, then
        assert fake.wait_until_ready()
        fake.user_message(channel, alice, "hello", mention_bot=True)
        assert fake.wait_for(lambda f: len(f.messages(channel)) == 2)

Run it in the foreground with ``python -m tests.fake_discord --port 8080``.

What is modelled, and what is not, is listed in :class:`FakeDiscord`'s docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import math
import re
import secrets
import signal
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from tests.threaded_server import ThreadedServer

__all__ = ["FakeDiscord", "RecordedDispatch", "RecordedRequest"]

JSON = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Constants (values from Discord's developer documentation)
# --------------------------------------------------------------------------------------------

#: discord.py parses a body as JSON only if Content-Type is exactly this (``json_or_text``).
JSON_CT = "application/json"
DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
#: Discord's own error text for a 429 body.
RATE_LIMITED_MESSAGE = "You are being rate limited."

# Gateway opcodes
OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

# Gateway close codes
CLOSE_UNKNOWN_ERROR = 4000
CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
#: "You sent us an invalid shard when identifying." (Discord: Opcodes and Status Codes)
CLOSE_INVALID_SHARD = 4010
#: "The session would have handled too many guilds - you are required to shard your
#: connection in order to connect."
CLOSE_SHARDING_REQUIRED = 4011
CLOSE_INVALID_API_VERSION = 4012
CLOSE_DISALLOWED_INTENTS = 4014

# Intents
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | (1 << 8) | INTENT_MESSAGE_CONTENT
ALL_INTENTS = (1 << 26) - 1

# Message flags and types
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_COMPONENTS_V2 = 1 << 15
MSG_DEFAULT = 0
MSG_REPLY = 19
MSG_CHAT_INPUT_COMMAND = 20

# Channel types
CH_GUILD_TEXT = 0
CH_DM = 1

# Interaction types and callback types
IT_PING = 1
IT_APPLICATION_COMMAND = 2
IT_MESSAGE_COMPONENT = 3
IT_AUTOCOMPLETE = 4
IT_MODAL_SUBMIT = 5
CB_PONG = 1
CB_CHANNEL_MESSAGE = 4
CB_DEFERRED_CHANNEL_MESSAGE = 5
CB_DEFERRED_UPDATE_MESSAGE = 6
CB_UPDATE_MESSAGE = 7
CB_AUTOCOMPLETE_RESULT = 8
CB_MODAL = 9
#: How long a disconnected gateway session stays resumable (Discord publishes no number).
SESSION_RESUME_WINDOW = 120.0
#: Initial response deadline, and how long the token then stays valid for follow-ups.
INTERACTION_TOKEN_LIFETIME = 15 * 60.0

# Permissions
_P = {
    "ADD_REACTIONS": 6,
    "VIEW_CHANNEL": 10,
    "SEND_MESSAGES": 11,
    "EMBED_LINKS": 14,
    "ATTACH_FILES": 15,
    "READ_MESSAGE_HISTORY": 16,
    "MENTION_EVERYONE": 17,
    "USE_EXTERNAL_EMOJIS": 18,
    "CONNECT": 20,
    "SPEAK": 21,
    "CHANGE_NICKNAME": 26,
    "USE_APPLICATION_COMMANDS": 31,
    "CREATE_PUBLIC_THREADS": 35,
    "SEND_MESSAGES_IN_THREADS": 38,
}
EVERYONE_PERMISSIONS = sum(1 << bit for bit in _P.values())
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 51) - 1

_USER_MENTION_RE = re.compile(r"<@!?(\d{1,20})>")
_ROLE_MENTION_RE = re.compile(r"<@&(\d{1,20})>")
_COMMAND_NAME_RE = re.compile(r"^[-_\w]{1,32}$")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _snowflake_time(snowflake: int) -> str:
    """ISO 8601 timestamp of a snowflake, as Discord writes ``timestamp`` fields."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _ceil_ms(seconds: float) -> float:
    """Round *up* to the millisecond: a client that sleeps exactly this long must not be early."""
    return math.ceil(max(seconds, 0.0) * 1000) / 1000


def _bucket_hash(name: str) -> str:
    """An opaque 32-hex-digit bucket id, stable per bucket kind, like Discord's."""
    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` and no charset suffix."""
    all_headers = {"Content-Type": JSON_CT}
    all_headers.update(headers or {})
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        headers=all_headers,
    )


def _form_error(field_path: str, code: str, message: str) -> JSON:
    """The nested ``errors`` object of a 50035 "Invalid Form Body" error."""
    node: JSON = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_path.split(".")):
        node = {part: node}
    return node


class _ApiError(Exception):
    """An error Discord answers with ``{"message": ..., "code": ...}`` (plus ``errors``)."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> JSON:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _invalid_form(field_path: str, code: str, message: str) -> _ApiError:
    return _ApiError(400, 50035, "Invalid Form Body", _form_error(field_path, code, message))


def _unknown_message() -> _ApiError:
    return _ApiError(404, 10008, "Unknown Message")


def _unknown_channel() -> _ApiError:
    return _ApiError(404, 10003, "Unknown Channel")


def _unknown_interaction() -> _ApiError:
    return _ApiError(404, 10062, "Unknown interaction")


def _unknown_webhook() -> _ApiError:
    return _ApiError(404, 10015, "Unknown Webhook")


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One REST call as the fake saw it (429s included).

    ``path`` is relative to ``/api/v10`` and percent-decoded (``/channels/1/messages``);
    ``time`` is ``time.perf_counter()`` at arrival (one clock for every thread, so tests can
    order requests against their own observations); ``status`` is filled in once answered.
    """

    method: str
    path: str
    json: Any
    time: float
    status: int = 0
    query: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    remaining: int | None = None  # the X-RateLimit-Remaining sent with the answer, if any


@dataclass(frozen=True)
class RecordedDispatch:
    """One gateway dispatch (op 0) as the fake emitted it to one session, i.e. to one shard.

    ``shard``/``shard_count`` are the receiving session's (``0``/``1`` for a connection that
    identified without ``shard``). ``guild_id`` is the guild the event is about (None for DMs,
    READY, RESUMED); ``id`` is the payload's own ``id`` (message, interaction, channel, guild)
    when it has one, ``channel_id`` its ``channel_id``. Recorded when emitted: an event for a
    disconnected session is recorded too (it waits in the session's backlog for RESUME), and a
    RESUME's replay is not recorded again. ``time`` is ``time.perf_counter()``.
    """

    event: str
    shard: int
    shard_count: int
    session: str
    seq: int
    guild_id: int | None
    channel_id: int | None
    id: str | None
    time: float


# --------------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------------


@dataclass
class _Bucket:
    """A Discord rate-limit bucket: ``limit`` requests per fixed window opened by the first one."""

    key: str
    hash: str
    limit: int
    window: float
    count: int = 0
    reset_at: float = 0.0

    def take(self, now: float) -> tuple[bool, int, float]:
        """Consume one request: (allowed, remaining, seconds until the window resets)."""
        if now >= self.reset_at:
            self.count = 0
            self.reset_at = now + self.window
        if self.count >= self.limit:
            return False, 0, self.reset_at - now
        self.count += 1
        return True, self.limit - self.count, self.reset_at - now


@dataclass
class _Guild:
    id: int
    name: str
    owner_id: int
    channels: list[int] = field(default_factory=list)
    members: dict[int, str] = field(default_factory=dict)  # user id -> joined_at
    bot_role_id: int = 0


@dataclass
class _Outgoing:
    """A gateway frame queued for one connection; ``sent`` resolves once it is on the socket."""

    payload: JSON | None  # None: close the socket with ``close_code``
    sent: asyncio.Future[None] | None = None
    close_code: int = 1000


@dataclass(eq=False)
class _Connection:
    """One gateway websocket. Frames go through a queue so their order (and the order of the
    zlib stream) is exactly the order in which they were emitted."""

    ws: web.WebSocketResponse
    zlib_stream: bool
    queue: asyncio.Queue[_Outgoing] = field(default_factory=asyncio.Queue)
    compressor: Any = None
    session: _Session | None = None
    closing: bool = False

    def send(self, payload: JSON, sent: asyncio.Future[None] | None = None) -> None:
        if not self.closing:
            self.queue.put_nowait(_Outgoing(payload, sent))
        elif sent is not None and not sent.done():
            sent.set_result(None)

    def close(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait(_Outgoing(None, close_code=code))


@dataclass(eq=False)
class _Session:
    """A gateway session: survives its connection so that RESUME can replay what was missed."""

    id: str
    intents: int
    #: (shard id, shard count) from IDENTIFY; (0, 1) when it sent no ``shard``.
    shard: tuple[int, int] = (0, 1)
    seq: int = 0
    backlog: list[JSON] = field(default_factory=list)
    connection: _Connection | None = None
    #: perf_counter when the connection went away (sessions left unresumed expire).
    detached_at: float | None = None


@dataclass
class _Interaction:
    id: int
    token: str
    type: int
    channel_id: int
    guild_id: int | None
    user_id: int
    name: str
    created: float
    payload: JSON
    source_message_id: int | None = None
    response_type: int | None = None
    response_data: JSON | None = None
    responded_at: float | None = None
    ephemeral: bool = False
    original_id: int | None = None
    edits: list[JSON] = field(default_factory=list)
    followup_ids: list[int] = field(default_factory=list)


_Handler = Callable[["_Call"], Awaitable[tuple[int, Any]]]


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: _Handler
    #: "message" (create), "edit", "delete", "reaction", "route", or "" (no bucket)
    bucket: str = "route"
    auth: bool = True
    global_limit: bool = True


@dataclass
class _Call:
    """What a REST handler gets: the path parameters, the parsed body, the query, the files."""

    params: dict[str, str]
    body: Any
    query: dict[str, str]
    files: list[tuple[str, bytes, str | None]]

    def id(self, name: str) -> int:
        try:
            return int(self.params[name])
        except ValueError:
            raise _ApiError(404, 0, "404: Not Found") from None

    def obj(self) -> JSON:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise _ApiError(400, 50109, "The request body contains invalid JSON.")
        return self.body


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeDiscord(ThreadedServer):
    """A fake Discord on 127.0.0.1: REST under ``/api/v10`` and the gateway at ``/gateway``.

    Modelled (because discord.py or the bot depends on it):

    - Login (``GET /users/@me``, 401 for a wrong token), ``GET /oauth2/applications/@me``,
      ``GET /gateway/bot``.
    - Gateway v10, JSON, ``compress=zlib-stream`` (one zlib stream per connection, each frame
      ending in ``Z_SYNC_FLUSH``; plain text frames otherwise). HELLO, IDENTIFY -> READY then one
      GUILD_CREATE per guild, heartbeat ACKs, RESUME (replays missed events then RESUMED;
      unknown session -> op 9), REQUEST_GUILD_MEMBERS -> GUILD_MEMBERS_CHUNK, close codes 4001-
      4005, 4010/4011 (sharding, below), 4012, 4014 (privileged intent not allowed). A clean
      client close (1000/1001) ends the session, any other close keeps it resumable. Events
      honour intents (GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, GUILD_MEMBERS) and MESSAGE_CONTENT
      (content, embeds, attachments and components blanked except in DMs, mentions of the bot and
      the bot's own messages).
    - Sharding (docs/discord-limits.md#sharding): ``shard_count=N`` is the count Discord requires
      (``GET /gateway/bot`` answers ``shards: N``). IDENTIFY's ``shard: [id, count]`` is checked as
      Discord does: a malformed shard or an id outside ``0..count-1`` closes with 4010 Invalid
      shard; no ``shard`` (or a count below N) when N > 1 closes with 4011 Sharding required; a
      count above N when N > 1 is refused with 4010 too (Discord would accept over-sharding; the
      fake refuses it so a misconfigured shard count fails loudly). With N == 1 any valid
      ``[id, count]`` is accepted. A session gets only its shard's dispatches: a guild's events
      (READY's guild list, GUILD_CREATE, CHANNEL_*, GUILD_MEMBER_ADD, MESSAGE_*, INTERACTION_CREATE)
      go to the sessions with ``(guild_id >> 22) % count == id``, events without a guild (DMs) to
      shard 0. Any number of connections, from one process or several, may be up at once.
      :meth:`create_guild` spreads guilds over the N shards round-robin (or ``shard=k``).
    - Messages: create (replies with ``message_reference``, ``fail_if_not_exists``), edit, delete,
      get, list, reactions, typing, DM channel creation, multipart uploads (``payload_json`` +
      ``files[n]``). Content must be <= 2000 characters (50035) and a message must not end up
      empty (50006, as Discord does); embeds <= 10 and 6000 characters. Only the author may edit
      (50005). Unknown channel/message -> 404 10003/10008. The bot's own messages are dispatched
      back to it (MESSAGE_CREATE/UPDATE/DELETE), as Discord does.
    - Application commands: bulk overwrite, get and single create, global and per guild, with
      name and description validation. Interactions: callbacks 1, 4-9 (with ``with_response``),
      a 3 s deadline for the first response (then 10062), 40060 when acknowledged twice,
      ``@original`` get/edit/delete, follow-ups (the first follow-up after a deferral fills the
      deferred message, as on Discord), follow-up edits, ephemeral messages kept out of channels.
    - Rate limits: per-channel buckets for message create and edit (shared by default), delete,
      reactions (1 per 0.25 s) and a generous bucket for every other route; a global limit across
      all bot-authenticated calls (interaction callbacks and interaction webhooks are exempt, as
      Discord documents). Headers ``X-RateLimit-*`` on each bucketed response; 429s with
      ``retry_after``/``global`` body, ``X-RateLimit-Scope``, ``Retry-After`` and ``Via``.

    Observation: :attr:`requests` (every REST call, 429s included), :attr:`rate_limited` (429s by
    scope), :attr:`server_errors` (tracebacks of crashes in the fake, answered 500),
    :meth:`wait_until_ready` (the *latest* IDENTIFY of each shard, or of one ``shard=k``, got
    READY and its GUILD_CREATEs, so it also works across bot restarts), :attr:`identifies`,
    :attr:`identifies_by_shard`, :attr:`resumes`, :attr:`gateway_connections`,
    :attr:`gateway_close_codes`, :attr:`dispatches` (every dispatch with the shard it went to) and
    :meth:`dispatched_to`, :meth:`shard_of`, :meth:`guilds_on_shard`.

    Options: ``rate_limits=False`` turns off limits *and* headers; ``send_ratelimit_headers=False``
    keeps the limits but hides the ``X-RateLimit-*`` headers, so a client learns of a limit only
    from the 429 itself; ``shared_message_bucket=False`` gives edits their own bucket;
    ``shard_count`` (default 1) and ``max_concurrency`` (reported in ``session_start_limit``).

    Not modelled: permissions (the bot may do anything), allowed_mentions beyond which users end
    up in ``mentions``, threads, voice, presences, stickers, polls, gateway send rate limits and
    identify concurrency (``max_concurrency`` is only reported), heartbeat timeouts (a silent
    client is never dropped; a disconnected session stays resumable for
    ``SESSION_RESUME_WINDOW`` seconds, a number Discord does not publish), the invalid-request
    Cloudflare ban (only counted in :attr:`invalid_requests`), the 2,500-guilds-per-shard rule
    (N is given, not derived from the guild count), attachment downloads.
    """

    def __init__(
        self,
        *,
        message_limit: int = 5,
        message_window: float = 5.0,
        global_limit: int = 50,
        global_window: float = 1.0,
        rate_limits: bool = True,
        send_ratelimit_headers: bool = True,
        shared_message_bucket: bool = True,
        route_limit: int = 50,
        route_window: float = 1.0,
        reaction_limit: int = 1,
        reaction_window: float = 0.25,
        interaction_deadline: float = 3.0,
        heartbeat_interval: float = 41.25,
        message_content_allowed: bool = True,
        shard_count: int = 1,
        max_concurrency: int = 1,
        token: str = "fake-token",
        bot_name: str = "ollacord",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        if shard_count < 1 or max_concurrency < 1:
            raise ValueError("shard_count and max_concurrency must be at least 1")
        self.shard_count = shard_count
        self.max_concurrency = max_concurrency
        self.message_limit = message_limit
        self.message_window = message_window
        self.global_limit = global_limit
        self.global_window = global_window
        self.rate_limits = rate_limits
        self.send_ratelimit_headers = send_ratelimit_headers
        self.shared_message_bucket = shared_message_bucket
        self.route_limit = route_limit
        self.route_window = route_window
        self.reaction_limit = reaction_limit
        self.reaction_window = reaction_window
        self.interaction_deadline = interaction_deadline
        self.heartbeat_interval = heartbeat_interval
        self.message_content_allowed = message_content_allowed
        self.token = token
        self.api_url = ""
        self.gateway_url = ""

        self._lock = threading.RLock()
        self._last_id = 0
        self._requests: list[RecordedRequest] = []
        self._rate_limited: dict[str, int] = {"user": 0, "global": 0, "shared": 0}
        self.invalid_requests = 0
        #: Tracebacks of handler crashes (answered with 500). Tests may assert it stays empty.
        self.server_errors: list[str] = []
        self.gateway_connections = 0
        self.identifies = 0
        self.resumes = 0
        self._identifies_by_shard: dict[int, int] = {}
        #: Per shard id: ordinal of its latest IDENTIFY, and the highest one that is ready.
        self._identified: dict[int, int] = {}
        self._shard_ready_for: dict[int, int] = {}
        self._dispatches: list[RecordedDispatch] = []
        self._close_codes: list[int] = []

        self._users: dict[int, JSON] = {}
        self._guilds: dict[int, _Guild] = {}
        self._channels: dict[int, JSON] = {}
        self._dm_by_user: dict[int, int] = {}
        self._channel_messages: dict[int, list[int]] = {}
        self._messages: dict[int, JSON] = {}
        self._history: dict[int, list[str]] = {}
        self._global_commands: dict[str, JSON] = {}
        self._guild_commands: dict[int, dict[str, JSON]] = {}
        self._interactions: dict[int, _Interaction] = {}
        self._interactions_by_token: dict[str, _Interaction] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._global_count = 0
        self._global_reset_at = 0.0
        self._sessions: dict[str, _Session] = {}
        self._connections: set[_Connection] = set()
        #: Ordinal of the last IDENTIFY whose READY and GUILD_CREATEs are on the wire.
        self._ready_for = 0

        self.application_id = self._new_id()
        self.bot_user: JSON = {
            "id": str(self.application_id),
            "username": bot_name,
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": True,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
            "email": None,
            "bio": "",
            "banner": None,
            "accent_color": None,
        }
        self._users[self.application_id] = self.bot_user
        self._owner_id = self._new_id()
        self._users[self._owner_id] = self._user_object(self._owner_id, "owner", None, bot=False)

        self._transports: set[asyncio.Transport] = set()
        self._routes = self._build_routes()

    # ================================================================ lifecycle

    name = "fake-discord"

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        return app

    def listening(self) -> None:
        self.api_url = f"http://{self.host}:{self.port}/api/v10"
        self.gateway_url = f"ws://{self.host}:{self.port}/gateway"

    async def closing(self) -> None:
        # Websockets get a 1001 close (going away), other connections are cut.
        closing = [conn.ws.close(code=1001) for conn in list(self._connections)]
        if closing:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), timeout=1.0
                )
        for transport in list(self._transports):
            transport.abort()

    # ================================================================ control API: world

    def create_guild(self, name: str = "Test Guild", *, shard: int | None = None) -> int:
        """Create a guild the bot is in (with every known user as a member). Dispatched as
        GUILD_CREATE to its shard's connection if that is up.

        Its id lands on shard ``shard`` (``0..shard_count-1``) or, by default, round-robin: the
        n-th guild created goes to shard ``n % shard_count``, so 10 guilds over 2 shards are 5
        and 5. The id is a valid snowflake whose timestamp part is advanced to the next
        millisecond with the right remainder (see :meth:`_new_guild_id`)."""
        with self._lock:
            if shard is None:
                shard = len(self._guilds) % self.shard_count
            elif not 0 <= shard < self.shard_count:
                raise ValueError(f"shard {shard} is not in 0..{self.shard_count - 1}")
            guild_id = self._new_guild_id(shard)
            guild = _Guild(id=guild_id, name=name, owner_id=self._owner_id)
            guild.bot_role_id = self._new_id()
            for user_id in self._users:
                guild.members[user_id] = _now_iso()
            self._guilds[guild_id] = guild
        self._call_in_loop(lambda: self._emit("GUILD_CREATE", self._guild_create(guild_id)))
        return guild_id

    def create_channel(self, guild_id: int, name: str) -> int:
        """Create a text channel (dispatched as CHANNEL_CREATE if the bot is connected)."""
        with self._lock:
            guild = self._guilds[guild_id]
            channel_id = self._new_id()
            self._channels[channel_id] = {
                "id": str(channel_id),
                "type": CH_GUILD_TEXT,
                "guild_id": str(guild_id),
                "name": name,
                "position": len(guild.channels),
                "permission_overwrites": [],
                "nsfw": False,
                "topic": None,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "parent_id": None,
                "flags": 0,
            }
            guild.channels.append(channel_id)
            self._channel_messages[channel_id] = []
            channel = copy.deepcopy(self._channels[channel_id])
        self._call_in_loop(lambda: self._emit("CHANNEL_CREATE", channel))
        return channel_id

    def delete_channel(self, channel_id: int) -> None:
        """Delete a channel, as a server admin would (CHANNEL_DELETE is dispatched). From then
        on every REST call about it gets 404 10003 Unknown Channel."""
        with self._lock:
            channel = self._channels.pop(channel_id)
            guild_id = channel.get("guild_id")
            if guild_id is not None:
                self._guilds[int(guild_id)].channels.remove(channel_id)
            self._channel_messages.pop(channel_id, None)
        self._call_in_loop(lambda: self._emit("CHANNEL_DELETE", channel))

    def create_user(self, name: str, *, bot: bool = False, global_name: str | None = None) -> int:
        """Create a user and add them to every guild (GUILD_MEMBER_ADD needs the members
        intent, as on Discord)."""
        with self._lock:
            user_id = self._new_id()
            self._users[user_id] = self._user_object(user_id, name, global_name, bot=bot)
            events = []
            for guild in self._guilds.values():
                guild.members[user_id] = _now_iso()
                member = self._member_object(guild, user_id)
                member["guild_id"] = str(guild.id)
                events.append(member)
        for event in events:
            self._call_in_loop(
                functools.partial(
                    self._emit, "GUILD_MEMBER_ADD", event, intent=INTENT_GUILD_MEMBERS
                )
            )
        return user_id

    def wait_until_ready(self, timeout: float = 10, *, shard: int | None = None) -> bool:
        """True once the latest IDENTIFY was answered with READY and every GUILD_CREATE (on the
        wire). After a restart of the bot this waits for the new session, not the old one.

        Per shard: with ``shard=k``, shard k's latest IDENTIFY; by default every shard's, for
        shards ``0..shard_count-1`` and any other shard id a client identified with (a
        connection without ``shard`` counts as shard 0)."""

        def ready(f: FakeDiscord) -> bool:
            with f._lock:
                shards = {shard} if shard is not None else set(range(f.shard_count))
                if shard is None:
                    shards |= set(f._identified)
                return all(
                    0 < f._identified.get(k, 0) <= f._shard_ready_for.get(k, 0) for k in shards
                )

        return self.wait_for(ready, timeout)

    # ================================================================ control API: actors

    def user_message(
        self,
        channel_id: int,
        user_id: int,
        content: str,
        *,
        mention_bot: bool = False,
        reply_to: int | None = None,
    ) -> int:
        """Post a message as a user and dispatch MESSAGE_CREATE; returns its id.

        ``mention_bot`` prefixes ``<@botid> ``. Replying to someone pings them (replied_user), so
        replying to the bot counts as a mention, as on Discord. Blocks until the event is written
        to every connected gateway socket (so the order of actor calls is the order of events).
        """
        if mention_bot:
            content = f"<@{self.application_id}> {content}"
        with self._lock:
            if channel_id not in self._channels:
                raise KeyError(f"unknown channel {channel_id}")
            if user_id not in self._users:
                raise KeyError(f"unknown user {user_id}")
            body: JSON = {"content": content}
            if reply_to is not None:
                body["message_reference"] = {"message_id": str(reply_to)}
            message = self._create_message(channel_id, user_id, body, files=[])
        self._run_in_loop(self._emit_and_wait("MESSAGE_CREATE", self._message_event(message)))
        return int(message["id"])

    def user_dm(self, user_id: int, content: str) -> int:
        """Send the bot a DM from ``user_id`` (opening the DM channel if needed); returns the id."""
        with self._lock:
            channel_id = self._dm_channel(user_id)
            message = self._create_message(channel_id, user_id, {"content": content}, files=[])
        self._run_in_loop(self._emit_and_wait("MESSAGE_CREATE", self._message_event(message)))
        return int(message["id"])

    def dm_channel(self, user_id: int) -> int:
        """The id of the bot's DM channel with ``user_id`` (created if needed)."""
        with self._lock:
            return self._dm_channel(user_id)

    def slash(
        self,
        channel_id: int,
        user_id: int,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        focused: str | None = None,
    ) -> str:
        """Invoke a synced slash command (INTERACTION_CREATE type 2); returns the interaction id.

        ``name`` may hold subcommands (``"model set"``). Option types come from the synced
        definition. ``focused`` names an option to send an autocomplete interaction (type 4)
        instead. Raises ``LookupError`` if no such command was synced (global, or for the
        channel's guild).
        """
        options = dict(options or {})
        with self._lock:
            channel = self._channels.get(channel_id)
            if channel is None:
                raise KeyError(f"unknown channel {channel_id}")
            guild_id = int(channel["guild_id"]) if "guild_id" in channel else None
            parts = name.split()
            command = None
            if guild_id is not None:
                command = self._guild_commands.get(guild_id, {}).get(parts[0])
            if command is None:
                command = self._global_commands.get(parts[0])
            if command is None:
                raise LookupError(f"/{parts[0]} was not synced (call tree.sync())")
            chain: list[JSON] = []
            definitions: list[JSON] = command.get("options") or []
            for part in parts[1:]:
                sub = next((o for o in definitions if o["name"] == part), None)
                if sub is None:
                    raise LookupError(f"/{name}: no subcommand {part!r}")
                chain.append(sub)
                definitions = sub.get("options") or []
            nested: list[JSON] = []
            for key, value in options.items():
                definition = next((o for o in definitions if o["name"] == key), None)
                option: JSON = {
                    "name": key,
                    "type": definition["type"] if definition else 3,
                    "value": value,
                }
                if key == focused:
                    option["focused"] = True
                nested.append(option)
            for sub in reversed(chain):
                nested = [{"name": sub["name"], "type": sub["type"], "options": nested}]
            data: JSON = {
                "id": command["id"],
                "name": parts[0],
                "type": command.get("type", 1),
                "options": nested,
            }
            if "guild_id" in command:
                data["guild_id"] = command["guild_id"]
            kind = IT_AUTOCOMPLETE if focused is not None else IT_APPLICATION_COMMAND
            interaction = self._new_interaction(kind, channel_id, user_id, name, data)
        self._run_in_loop(self._emit_and_wait("INTERACTION_CREATE", interaction.payload))
        return str(interaction.id)

    def click(self, channel_id: int, user_id: int, message_id: int, custom_id: str) -> str:
        """Press a button (INTERACTION_CREATE type 3) on a message; returns the interaction id."""
        with self._lock:
            message = self._messages.get(message_id)
            if message is None or int(message["channel_id"]) != channel_id:
                raise KeyError(f"unknown message {message_id} in channel {channel_id}")
            data: JSON = {"custom_id": custom_id, "component_type": 2}
            interaction = self._new_interaction(
                IT_MESSAGE_COMPONENT, channel_id, user_id, custom_id, data, message_id=message_id
            )
        self._run_in_loop(self._emit_and_wait("INTERACTION_CREATE", interaction.payload))
        return str(interaction.id)

    def interaction_response(self, interaction_id: str | int) -> JSON | None:
        """How the bot answered an interaction, or None if it has not (yet).

        Keys: ``type`` (callback type), ``data`` (callback data), ``ephemeral``, ``message``
        (the original response message now, or None), ``edits`` (bodies of each
        ``PATCH @original``, in order), ``followups`` (follow-up message objects, in order).
        """
        with self._lock:
            interaction = self._interactions.get(int(interaction_id))
            if interaction is None or interaction.response_type is None:
                return None
            original = (
                self._render(self._messages[interaction.original_id])
                if interaction.original_id in self._messages
                else None
            )
            return {
                "type": interaction.response_type,
                "data": copy.deepcopy(interaction.response_data),
                "ephemeral": interaction.ephemeral,
                "message": original,
                "edits": copy.deepcopy(interaction.edits),
                "followups": [
                    self._render(self._messages[i])
                    for i in interaction.followup_ids
                    if i in self._messages
                ],
            }

    def disconnect_gateway(
        self, code: int = CLOSE_UNKNOWN_ERROR, *, shard: int | None = None
    ) -> None:
        """Close every gateway websocket (or those of shard ``shard``) with ``code`` (4000: the
        client should RESUME)."""
        self._call_in_loop(lambda: self._close_all(code, shard), wait=True)

    def invalidate_sessions(self, *, shard: int | None = None) -> None:
        """Send op 9 (not resumable) on every connection (or shard ``shard``'s) and forget
        those sessions."""
        self._call_in_loop(lambda: self._invalidate_all(shard), wait=True)

    def request_reconnect(self, *, shard: int | None = None) -> None:
        """Send op 7 RECONNECT on every connection (or shard ``shard``'s): the client should
        reconnect and RESUME."""

        def reconnect() -> None:
            for conn in self._connections_of(shard):
                conn.send({"op": OP_RECONNECT, "d": None, "s": None, "t": None})

        self._call_in_loop(reconnect, wait=True)

    # ================================================================ control API: observation

    def messages(self, channel_id: int) -> list[JSON]:
        """Current message objects of a channel (deleted and ephemeral excluded), oldest first."""
        with self._lock:
            return [
                self._render(self._messages[i]) for i in self._channel_messages.get(channel_id, [])
            ]

    def message(self, message_id: int) -> JSON | None:
        """One message as it is now (ephemeral ones included), or None if unknown/deleted."""
        with self._lock:
            stored = self._messages.get(message_id)
            return self._render(stored) if stored is not None else None

    def message_history(self, message_id: int) -> list[str]:
        """Every content the message had: at creation, then after each edit, in order."""
        with self._lock:
            return list(self._history.get(message_id, []))

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every REST call received so far (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def rate_limited(self) -> dict[str, int]:
        """429s sent so far, by ``X-RateLimit-Scope`` (``user``, ``global``, ``shared``)."""
        with self._lock:
            return dict(self._rate_limited)

    @property
    def commands(self) -> dict[str, JSON]:
        """Synced global commands by name."""
        with self._lock:
            return copy.deepcopy(self._global_commands)

    def guild_commands(self, guild_id: int) -> dict[str, JSON]:
        with self._lock:
            return copy.deepcopy(self._guild_commands.get(guild_id, {}))

    # ---------------------------------------------------------------- sharding

    def shard_of(self, guild_id: int) -> int:
        """The shard that carries a guild's events: ``(guild_id >> 22) % shard_count``."""
        return (guild_id >> 22) % self.shard_count

    def guilds_on_shard(self, shard: int) -> list[int]:
        """Ids of the guilds on shard ``shard``, in creation order."""
        with self._lock:
            return [g for g in self._guilds if self.shard_of(g) == shard]

    @property
    def identifies_by_shard(self) -> dict[int, int]:
        """Accepted IDENTIFYs per shard id (one without ``shard`` counts as shard 0); refused
        ones (4004, 4010, 4011, ...) are not counted, as in :attr:`identifies`."""
        with self._lock:
            return dict(sorted(self._identifies_by_shard.items()))

    @property
    def dispatches(self) -> list[RecordedDispatch]:
        """Every dispatch emitted so far, one record per receiving session (a snapshot)."""
        with self._lock:
            return list(self._dispatches)

    def dispatched_to(self, event: str, object_id: int | str | None = None) -> list[int]:
        """The shard ids that ``event`` went to, in emission order (one per receiving session),
        optionally only for the payload ``id`` ``object_id`` (e.g. a message or interaction id).
        ``dispatched_to("MESSAGE_CREATE", message_id) == [1]``: exactly one session, on shard 1,
        got it."""
        wanted = None if object_id is None else str(object_id)
        with self._lock:
            return [
                d.shard
                for d in self._dispatches
                if d.event == event and (wanted is None or d.id == wanted)
            ]

    @property
    def gateway_close_codes(self) -> list[int]:
        """Close codes the fake closed gateway sockets with, in order (4010, 4011, 4004, ...;
        not the 1001 of :meth:`stop`)."""
        with self._lock:
            return list(self._close_codes)

    # ================================================================ cross-thread plumbing

    def _in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _loop_alive(self) -> bool:
        return self._loop is not None and not self._loop.is_closed() and self._loop.is_running()

    def _call_in_loop(self, fn: Callable[[], object], *, wait: bool = False) -> None:
        """Run ``fn`` on the fake's loop (gateway state lives there). Before start() there is
        no connection to tell, so nothing needs doing."""
        if self._in_loop_thread():
            fn()
            return
        loop = self._loop
        if loop is None or not self._loop_alive():
            return
        if not wait:
            loop.call_soon_threadsafe(fn)
            return

        async def run() -> None:
            fn()

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(run(), loop).result(5)

    def _run_in_loop(self, coro: Awaitable[None]) -> None:
        """Run a coroutine on the fake's loop and wait for it (from another thread)."""
        loop = self._loop
        if loop is None or not self._loop_alive() or self._in_loop_thread():
            if asyncio.iscoroutine(coro):
                coro.close()
            return

        async def run() -> None:
            await coro

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(run(), loop).result(5)

    # ================================================================ ids and objects

    def _new_id(self) -> int:
        """A real-looking, strictly increasing snowflake (timestamp << 22 | increment)."""
        with self._lock:
            ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            candidate = ms << 22
            self._last_id = max(candidate, self._last_id + 1)
            return self._last_id

    def _new_guild_id(self, shard: int) -> int:
        """A snowflake on shard ``shard``: the next millisecond (past every id made so far, and
        not before now) whose ``% shard_count`` is ``shard``, with a zero increment. Guild ids
        made back to back thus differ in ``>> 22`` and spread over shards deterministically,
        and ids stay strictly increasing (the clock part runs at most ``shard_count`` ms
        ahead per guild)."""
        with self._lock:
            now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            ms = max(now_ms, (self._last_id >> 22) + 1)
            ms += (shard - ms) % self.shard_count
            self._last_id = ms << 22
            return self._last_id

    @staticmethod
    def _user_object(user_id: int, name: str, global_name: str | None, *, bot: bool) -> JSON:
        return {
            "id": str(user_id),
            "username": name,
            "global_name": global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "system": False,
            "public_flags": 0,
        }

    def _public_user(self, user_id: int) -> JSON:
        user = self._users[user_id]
        keys = ("id", "username", "global_name", "discriminator", "avatar", "bot", "public_flags")
        return {k: user[k] for k in keys if k in user}

    def _member_object(self, guild: _Guild, user_id: int, *, with_user: bool = True) -> JSON:
        member: JSON = {
            "roles": [str(guild.bot_role_id)] if user_id == self.application_id else [],
            "nick": None,
            "avatar": None,
            "banner": None,
            "joined_at": guild.members.get(user_id, _now_iso()),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            member["user"] = self._public_user(user_id)
        return member

    def _guild_create(self, guild_id: int) -> JSON:
        with self._lock:
            guild = self._guilds[guild_id]
            roles = [
                {
                    "id": str(guild.id),
                    "name": "@everyone",
                    "color": 0,
                    "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
                    "hoist": False,
                    "icon": None,
                    "unicode_emoji": None,
                    "position": 0,
                    "permissions": str(EVERYONE_PERMISSIONS),
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                },
                {
                    "id": str(guild.bot_role_id),
                    "name": self.bot_user["username"],
                    "color": 0,
                    "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
                    "hoist": False,
                    "icon": None,
                    "unicode_emoji": None,
                    "position": 1,
                    "permissions": str(ADMINISTRATOR),
                    "managed": True,
                    "mentionable": False,
                    "flags": 0,
                    "tags": {"bot_id": str(self.application_id)},
                },
            ]
            return {
                "id": str(guild.id),
                "name": guild.name,
                "icon": None,
                "splash": None,
                "discovery_splash": None,
                "banner": None,
                "description": None,
                "owner_id": str(guild.owner_id),
                "afk_channel_id": None,
                "afk_timeout": 300,
                "verification_level": 0,
                "default_message_notifications": 0,
                "explicit_content_filter": 0,
                "mfa_level": 0,
                "nsfw_level": 0,
                "premium_tier": 0,
                "premium_subscription_count": 0,
                "premium_progress_bar_enabled": False,
                "preferred_locale": "en-US",
                "system_channel_id": None,
                "system_channel_flags": 0,
                "rules_channel_id": None,
                "public_updates_channel_id": None,
                "safety_alerts_channel_id": None,
                "vanity_url_code": None,
                "features": [],
                "application_id": None,
                "max_members": 500000,
                "max_video_channel_users": 25,
                "roles": roles,
                "emojis": [],
                "stickers": [],
                "joined_at": guild.members.get(self.application_id, _now_iso()),
                "large": False,
                "unavailable": False,
                "member_count": len(guild.members),
                "voice_states": [],
                "members": [self._member_object(guild, uid) for uid in guild.members],
                "channels": [copy.deepcopy(self._channels[c]) for c in guild.channels],
                "threads": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "lazy": True,
            }

    def _dm_channel(self, user_id: int) -> int:
        if user_id not in self._users:
            raise _ApiError(
                400,
                50035,
                "Invalid Form Body",
                _form_error(
                    "recipient_id", "NUMBER_TYPE_COERCE", f'Value "{user_id}" is not snowflake.'
                ),
            )
        channel_id = self._dm_by_user.get(user_id)
        if channel_id is None:
            channel_id = self._new_id()
            self._channels[channel_id] = {
                "id": str(channel_id),
                "type": CH_DM,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self._public_user(user_id)],
            }
            self._dm_by_user[user_id] = channel_id
            self._channel_messages[channel_id] = []
        return channel_id

    def _guild_of(self, channel_id: int) -> _Guild | None:
        guild_id = self._channels[channel_id].get("guild_id")
        return self._guilds.get(int(guild_id)) if guild_id is not None else None

    # ================================================================ messages

    def _validate_content(self, body: JSON, *, files: int, existing: JSON | None = None) -> None:
        """Discord's checks on a message body (create, edit, interaction and webhook)."""
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            raise _invalid_form("content", "BASE_TYPE_STRING", "Must be a string.")
        if isinstance(content, str) and len(content) > MAX_CONTENT:
            raise _invalid_form(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
            )
        embeds = body.get("embeds")
        if embeds is not None:
            if not isinstance(embeds, list):
                raise _invalid_form("embeds", "LIST_TYPE_CONVERT", "Only iterables may be used.")
            if len(embeds) > MAX_EMBEDS:
                raise _invalid_form(
                    "embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length."
                )
            total = 0
            for index, embed in enumerate(embeds):
                if not isinstance(embed, dict):
                    raise _invalid_form(
                        f"embeds.{index}", "MODEL_TYPE_CONVERT", "Must be an object."
                    )
                for key, limit in (("title", 256), ("description", 4096)):
                    value = embed.get(key) or ""
                    if len(value) > limit:
                        raise _invalid_form(
                            f"embeds.{index}.{key}",
                            "BASE_TYPE_MAX_LENGTH",
                            f"Must be {limit} or fewer in length.",
                        )
                    total += len(value)
                total += len((embed.get("footer") or {}).get("text") or "")
                total += len((embed.get("author") or {}).get("name") or "")
                for item in embed.get("fields") or []:
                    total += len(item.get("name") or "") + len(item.get("value") or "")
            if total > MAX_EMBED_TOTAL:
                raise _invalid_form(
                    "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
                )

        def present(key: str) -> bool:
            if key in body:
                return bool(body[key])
            return bool(existing.get(key)) if existing is not None else False

        kept_attachments = present("attachments") or files > 0
        if not (
            present("content")
            or present("embeds")
            or kept_attachments
            or present("components")
            or present("sticker_ids")
            or present("poll")
        ):
            raise _ApiError(400, 50006, "Cannot send an empty message")

    def _mentions(self, content: str, allowed: JSON | None, guild: _Guild | None) -> list[int]:
        """Users pinged by ``<@id>`` in ``content`` that ``allowed_mentions`` lets through."""
        found = [int(m) for m in _USER_MENTION_RE.findall(content)]
        found = [u for u in dict.fromkeys(found) if u in self._users]
        if guild is not None:
            found = [u for u in found if u in guild.members]
        if allowed is None:
            return found
        parse = allowed.get("parse") or []
        if "users" in parse:
            return found
        listed = {int(u) for u in allowed.get("users") or []}
        return [u for u in found if u in listed]

    def _attachments(
        self, files: list[tuple[str, bytes, str | None]], channel_id: int
    ) -> list[JSON]:
        result = []
        for name, data, content_type in files:
            attachment_id = self._new_id()
            url = f"http://{self.host}:{self.port}/attachments/{channel_id}/{attachment_id}/{name}"
            item: JSON = {
                "id": str(attachment_id),
                "filename": name,
                "size": len(data),
                "url": url,
                "proxy_url": url,
            }
            if content_type:
                item["content_type"] = content_type
            result.append(item)
        return result

    def _create_message(
        self,
        channel_id: int,
        author_id: int,
        body: JSON,
        *,
        files: list[tuple[str, bytes, str | None]],
        listed: bool = True,
        extra: JSON | None = None,
        validate: bool = True,
    ) -> JSON:
        """Validate and store a message (lock held). ``listed`` False: ephemeral (not in the
        channel). Returns the stored object."""
        channel = self._channels.get(channel_id)
        if channel is None:
            raise _unknown_channel()
        if validate:
            self._validate_content(body, files=len(files))
        content = body.get("content") or ""
        guild = self._guild_of(channel_id)
        allowed = body.get("allowed_mentions")
        mentions = self._mentions(content, allowed, guild)
        message_type = MSG_DEFAULT
        reference: JSON | None = None
        raw_ref = body.get("message_reference")
        if isinstance(raw_ref, dict) and raw_ref.get("message_id") is not None:
            ref_id = int(raw_ref["message_id"])
            ref_channel = int(raw_ref.get("channel_id") or channel_id)
            target = self._messages.get(ref_id)
            if target is None or int(target["channel_id"]) != ref_channel:
                if raw_ref.get("fail_if_not_exists", True):
                    raise _invalid_form(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
            else:
                message_type = MSG_REPLY
                reference = {"type": 0, "channel_id": str(ref_channel), "message_id": str(ref_id)}
                if guild is not None:
                    reference["guild_id"] = str(guild.id)
                replied_user = True if allowed is None else allowed.get("replied_user", False)
                target_author = int(target["author"]["id"])
                if replied_user and target_author != author_id and target_author not in mentions:
                    mentions.append(target_author)
        # Without allowed_mentions everything is parsed; with it, only what "parse" lists.
        parse = ["everyone"] if allowed is None else (allowed.get("parse") or [])
        message_id = self._new_id()
        flags = int(body.get("flags") or 0) & (
            FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_IS_COMPONENTS_V2
        )
        message: JSON = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self._public_user(author_id),
            "content": content,
            "timestamp": _snowflake_time(message_id),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": "everyone" in parse
            and ("@everyone" in content or "@here" in content),
            "mentions": [str(u) for u in mentions],
            "mention_roles": [
                r
                for r in dict.fromkeys(_ROLE_MENTION_RE.findall(content))
                if guild is not None and int(r) == guild.bot_role_id
            ],
            "attachments": self._attachments(files, channel_id),
            "embeds": copy.deepcopy(body.get("embeds") or []),
            "reactions": [],
            "pinned": False,
            "type": message_type,
            "flags": flags,
            "components": copy.deepcopy(body.get("components") or []),
        }
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        if reference is not None:
            message["message_reference"] = reference
        if extra:
            message.update(extra)
        self._messages[message_id] = message
        self._history[message_id] = [content]
        if listed:
            self._channel_messages.setdefault(channel_id, []).append(message_id)
            channel["last_message_id"] = str(message_id)
        return message

    def _edit_message(
        self, message: JSON, body: JSON, files: list[tuple[str, bytes, str | None]]
    ) -> None:
        """Apply an edit body to a stored message (lock held)."""
        self._validate_content(body, files=len(files), existing=message)
        channel_id = int(message["channel_id"])
        if "content" in body:
            message["content"] = body["content"] or ""
            guild = self._guild_of(channel_id)
            mentions = self._mentions(message["content"], body.get("allowed_mentions"), guild)
            message["mentions"] = [str(u) for u in mentions]
        if "embeds" in body:
            message["embeds"] = copy.deepcopy(body["embeds"] or [])
        if "components" in body:
            message["components"] = copy.deepcopy(body["components"] or [])
        if "flags" in body and body["flags"] is not None:
            keep = message["flags"] & (FLAG_EPHEMERAL | FLAG_IS_COMPONENTS_V2)
            message["flags"] = keep | (int(body["flags"]) & FLAG_SUPPRESS_EMBEDS)
        if "attachments" in body:
            # The edit lists the attachments to keep (new uploads appear with placeholder ids).
            kept_ids = {str(a.get("id")) for a in body["attachments"] or []}
            kept = [a for a in message["attachments"] if a["id"] in kept_ids]
        else:
            kept = list(message["attachments"])
        message["attachments"] = kept + self._attachments(files, channel_id)
        message["flags"] &= ~FLAG_LOADING
        message["edited_timestamp"] = _now_iso()
        self._history[int(message["id"])].append(message["content"])

    def _render(self, message: JSON) -> JSON:
        """The message object as REST returns it: mentions expanded, referenced_message added."""
        out = copy.deepcopy(message)
        out["mentions"] = [
            self._public_user(int(u)) for u in message["mentions"] if int(u) in self._users
        ]
        reference = message.get("message_reference")
        if reference is not None and message["type"] == MSG_REPLY:
            target = self._messages.get(int(reference["message_id"]))
            if target is None:
                out["referenced_message"] = None
            else:
                inner = copy.deepcopy(target)
                inner["mentions"] = [
                    self._public_user(int(u)) for u in target["mentions"] if int(u) in self._users
                ]
                out["referenced_message"] = inner
        return out

    def _message_event(self, message: JSON) -> JSON:
        """The MESSAGE_CREATE/UPDATE payload: REST object plus guild_id and member data."""
        with self._lock:
            out = self._render(message)
            guild = self._guild_of(int(message["channel_id"]))
            if guild is not None:
                out["guild_id"] = str(guild.id)
                author_id = int(message["author"]["id"])
                if author_id in guild.members and not message.get("webhook_id"):
                    out["member"] = self._member_object(guild, author_id, with_user=False)
                for mention in out["mentions"]:
                    if int(mention["id"]) in guild.members:
                        mention["member"] = self._member_object(
                            guild, int(mention["id"]), with_user=False
                        )
            return out

    def _stored_message(self, channel_id: int, message_id: int) -> JSON:
        if channel_id not in self._channels:
            raise _unknown_channel()
        message = self._messages.get(message_id)
        if message is None or int(message["channel_id"]) != channel_id:
            raise _unknown_message()
        if message_id not in self._channel_messages.get(channel_id, []):
            raise _unknown_message()  # ephemeral messages are not reachable by channel routes
        return message

    # ================================================================ gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        """One gateway connection: HELLO, then IDENTIFY/RESUME, heartbeats, member requests."""
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True, heartbeat=None)
        await ws.prepare(request)
        version = request.query.get("v", "10")
        compression = request.query.get("compress")
        conn = _Connection(ws=ws, zlib_stream=compression == "zlib-stream")
        if conn.zlib_stream:
            conn.compressor = zlib.compressobj()
        self._connections.add(conn)
        with self._lock:
            self.gateway_connections += 1
        writer = asyncio.create_task(self._writer(conn))
        try:
            if version not in ("9", "10"):
                conn.close(CLOSE_INVALID_API_VERSION)
            elif request.query.get("encoding", "json") != "json":
                conn.close(CLOSE_DECODE_ERROR)
            else:
                interval_ms = int(self.heartbeat_interval * 1000)
                conn.send(
                    {"op": OP_HELLO, "d": {"heartbeat_interval": interval_ms}, "s": None, "t": None}
                )
            async for msg in ws:
                if conn.closing:
                    continue
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        payload = json.loads(msg.data)
                    except ValueError:
                        conn.close(CLOSE_DECODE_ERROR)
                        continue
                    if not isinstance(payload, dict):
                        conn.close(CLOSE_DECODE_ERROR)
                        continue
                    self._on_gateway_payload(conn, payload)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    conn.close(CLOSE_DECODE_ERROR)
                else:
                    break
        finally:
            self._connections.discard(conn)
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                session.detached_at = time.perf_counter()
                if ws.close_code in (1000, 1001) and not conn.closing:
                    # The client closed cleanly: Discord ends the session (no RESUME possible).
                    self._sessions.pop(session.id, None)
            conn.closing = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _writer(self, conn: _Connection) -> None:
        """Send queued frames in order; zlib-stream frames share one compressor per socket."""
        while True:
            item = await conn.queue.get()
            try:
                if item.payload is None:
                    with self._lock:
                        self._close_codes.append(item.close_code)
                    await conn.ws.close(code=item.close_code)
                    return
                text = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False)
                if conn.zlib_stream:
                    data = conn.compressor.compress(text.encode())
                    data += conn.compressor.flush(zlib.Z_SYNC_FLUSH)
                    await conn.ws.send_bytes(data)
                else:
                    await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                conn.closing = True
            finally:
                if item.sent is not None and not item.sent.done():
                    item.sent.set_result(None)

    def _on_gateway_payload(self, conn: _Connection, payload: JSON) -> None:
        op = payload.get("op")
        data = payload.get("d")
        if op == OP_HEARTBEAT:
            conn.send({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == OP_IDENTIFY:
            if conn.session is not None:
                conn.close(CLOSE_ALREADY_AUTHENTICATED)
                return
            self._identify(conn, data if isinstance(data, dict) else {})
        elif op == OP_RESUME:
            if conn.session is not None:
                conn.close(CLOSE_ALREADY_AUTHENTICATED)
                return
            self._resume(conn, data if isinstance(data, dict) else {})
        elif conn.session is None:
            conn.close(CLOSE_NOT_AUTHENTICATED)
        elif op == OP_REQUEST_GUILD_MEMBERS:
            self._member_chunk(conn, data if isinstance(data, dict) else {})
        elif op in (OP_PRESENCE_UPDATE, OP_VOICE_STATE_UPDATE):
            pass
        else:
            conn.close(CLOSE_UNKNOWN_OPCODE)

    def _identify(self, conn: _Connection, data: JSON) -> None:
        if data.get("token") != self.token and data.get("token") != f"Bot {self.token}":
            conn.close(CLOSE_AUTHENTICATION_FAILED)
            return
        intents = int(data.get("intents", 0))
        if intents & ~ALL_INTENTS:
            conn.close(4013)
            return
        if intents & INTENT_MESSAGE_CONTENT and not self.message_content_allowed:
            conn.close(CLOSE_DISALLOWED_INTENTS)
            return
        shard = self._identify_shard(data.get("shard"))
        if isinstance(shard, int):
            conn.close(shard)
            return
        shard_id, shard_count = shard
        with self._lock:
            self.identifies += 1
            ordinal = self.identifies
            self._identifies_by_shard[shard_id] = self._identifies_by_shard.get(shard_id, 0) + 1
            self._identified[shard_id] = ordinal
            session = _Session(id=secrets.token_hex(16), intents=intents, shard=shard)
            self._sessions[session.id] = session
            guild_ids = [g for g in self._guilds if self._on_shard(session, g)]
        session.connection = conn
        conn.session = session
        ready: JSON = {
            "v": 10,
            "user": copy.deepcopy(self.bot_user),
            "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "session_type": "normal",
            "shard": [shard_id, shard_count],
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "user_settings": {},
            "auth": {},
        }
        loop = asyncio.get_running_loop()
        last: asyncio.Future[None] = loop.create_future()
        self._emit_to(session, "READY", ready, sent=last)
        for guild_id in guild_ids:
            if intents & INTENT_GUILDS:
                last = loop.create_future()
                payload = self._for_session(session, "GUILD_CREATE", self._guild_create(guild_id))
                assert payload is not None
                self._emit_to(session, "GUILD_CREATE", payload, sent=last)
        last.add_done_callback(lambda _: self._mark_ready(ordinal, shard_id))

    def _mark_ready(self, ordinal: int, shard_id: int) -> None:
        with self._lock:
            self._ready_for = max(self._ready_for, ordinal)
            self._shard_ready_for[shard_id] = max(self._shard_ready_for.get(shard_id, 0), ordinal)

    def _identify_shard(self, shard: Any) -> tuple[int, int] | int:
        """IDENTIFY's ``shard`` as (id, count), or the close code that refuses it.

        Discord: 4010 Invalid shard ("You sent us an invalid shard when identifying"), 4011
        Sharding required ("The session would have handled too many guilds")."""
        if shard is None:
            return CLOSE_SHARDING_REQUIRED if self.shard_count > 1 else (0, 1)
        if (
            not isinstance(shard, list)
            or len(shard) != 2
            or not all(type(x) is int for x in shard)
            or not 0 <= shard[0] < shard[1]
        ):
            return CLOSE_INVALID_SHARD
        if shard[1] < self.shard_count:
            return CLOSE_SHARDING_REQUIRED  # each session would carry too many guilds
        if self.shard_count > 1 and shard[1] != self.shard_count:
            return CLOSE_INVALID_SHARD  # over-sharding: Discord allows it, the fake refuses it
        return shard[0], shard[1]

    @staticmethod
    def _on_shard(session: _Session, guild_id: int | None) -> bool:
        """Whether a session gets the events of ``guild_id`` (None: no guild, i.e. a DM)."""
        shard_id, shard_count = session.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % shard_count == shard_id

    @staticmethod
    def _event_guild(event: str, data: JSON) -> int | None:
        """The guild an event is about (GUILD_CREATE/UPDATE/DELETE carry it as ``id``)."""
        guild_id = data.get("guild_id")
        if guild_id is None and event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"):
            guild_id = data.get("id")
        return int(guild_id) if guild_id is not None else None

    def _resume(self, conn: _Connection, data: JSON) -> None:
        session = self._sessions.get(str(data.get("session_id")))
        token_ok = data.get("token") in (self.token, f"Bot {self.token}")
        if session is None or not token_ok:
            # Not resumable: the client must IDENTIFY again on a fresh connection.
            conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        with self._lock:
            self.resumes += 1
        old = session.connection
        if old is not None and old is not conn:
            old.close(CLOSE_UNKNOWN_ERROR)
        session.connection = conn
        session.detached_at = None
        conn.session = session
        seq = int(data.get("seq") or 0)
        for frame in session.backlog:
            if frame["s"] > seq:
                conn.send(frame)
        self._emit_to(session, "RESUMED", {})

    def _member_chunk(self, conn: _Connection, data: JSON) -> None:
        guild_id = int(data.get("guild_id", 0))
        with self._lock:
            guild = self._guilds.get(guild_id)
            members = [self._member_object(guild, u) for u in guild.members] if guild else []
        if limit := int(data.get("limit") or 0):
            members = members[:limit]
        query = str(data.get("query") or "")
        if query:
            members = [m for m in members if m["user"]["username"].startswith(query)]
        user_ids = data.get("user_ids")
        if user_ids:
            wanted = {str(u) for u in (user_ids if isinstance(user_ids, list) else [user_ids])}
            members = [m for m in members if m["user"]["id"] in wanted]
        chunk: JSON = {
            "guild_id": str(guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        if conn.session is not None:
            self._emit_to(conn.session, "GUILD_MEMBERS_CHUNK", chunk)

    def _application_flags(self) -> int:
        # GATEWAY_MESSAGE_CONTENT_LIMITED: the intent is enabled in the portal (under 100 guilds).
        return (1 << 19) if self.message_content_allowed else 0

    def _emit_to(
        self, session: _Session, event: str, data: JSON, sent: asyncio.Future[None] | None = None
    ) -> None:
        """Number an event in the session and send it if connected (else it waits for RESUME)."""
        session.seq += 1
        frame: JSON = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        channel_id = data.get("channel_id")
        record = RecordedDispatch(
            event=event,
            shard=session.shard[0],
            shard_count=session.shard[1],
            session=session.id,
            seq=session.seq,
            guild_id=self._event_guild(event, data),
            channel_id=int(channel_id) if channel_id is not None else None,
            id=str(data["id"]) if data.get("id") is not None else None,
            time=time.perf_counter(),
        )
        with self._lock:
            self._dispatches.append(record)
        session.backlog.append(frame)
        if len(session.backlog) > 1000:
            del session.backlog[:-1000]
        if session.connection is not None:
            session.connection.send(frame, sent)
        elif sent is not None and not sent.done():
            sent.set_result(None)

    def _emit(self, event: str, data: JSON, *, intent: int = 0) -> list[asyncio.Future[None]]:
        """Dispatch an event to every session of its guild's shard (shard 0 for DMs) whose
        intents allow it (runs on the fake loop)."""
        futures: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        guild_id = self._event_guild(event, data)
        for session in list(self._sessions.values()):
            if (
                session.detached_at is not None
                and now - session.detached_at > SESSION_RESUME_WINDOW
            ):
                # A bot killed without closing leaves its session behind; Discord drops it too.
                del self._sessions[session.id]
                continue
            if intent and not session.intents & intent:
                continue
            if not self._on_shard(session, guild_id):
                continue
            payload = self._for_session(session, event, data)
            if payload is None:
                continue
            sent: asyncio.Future[None] = loop.create_future()
            self._emit_to(session, event, payload, sent)
            futures.append(sent)
        return futures

    def _for_session(self, session: _Session, event: str, data: JSON) -> JSON | None:
        """Apply intents to a payload: message events need (DIRECT_|GUILD_)MESSAGES, and
        without MESSAGE_CONTENT the content is blanked unless Discord would still show it."""
        if event in ("GUILD_CREATE", "CHANNEL_CREATE") and not session.intents & INTENT_GUILDS:
            return None
        if event == "GUILD_CREATE" and not session.intents & INTENT_GUILD_MEMBERS:
            # Without the members intent Discord only sends the bot's own member.
            bot_id = str(self.application_id)
            trimmed = dict(data)
            trimmed["members"] = [m for m in data["members"] if m["user"]["id"] == bot_id]
            return trimmed
        if not event.startswith("MESSAGE_"):
            return data
        needed = INTENT_GUILD_MESSAGES if "guild_id" in data else INTENT_DIRECT_MESSAGES
        if not session.intents & needed:
            return None
        if event == "MESSAGE_DELETE" or session.intents & INTENT_MESSAGE_CONTENT:
            return data
        bot_id = str(self.application_id)
        visible = (
            "guild_id" not in data
            or data.get("author", {}).get("id") == bot_id
            or any(m.get("id") == bot_id for m in data.get("mentions", []))
        )
        if visible:
            return data
        blanked = dict(data)
        blanked.update(content="", embeds=[], attachments=[], components=[])
        return blanked

    async def _emit_and_wait(self, event: str, data: JSON) -> None:
        futures = self._emit(event, data)
        if futures:
            await asyncio.wait(futures, timeout=5)

    def _connections_of(self, shard: int | None) -> list[_Connection]:
        """Open connections, all of them or those identified (or resumed) on shard ``shard``."""
        return [
            conn
            for conn in list(self._connections)
            if shard is None or (conn.session is not None and conn.session.shard[0] == shard)
        ]

    def _close_all(self, code: int, shard: int | None = None) -> None:
        for conn in self._connections_of(shard):
            conn.close(code)

    def _invalidate_all(self, shard: int | None = None) -> None:
        for conn in self._connections_of(shard):
            conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            conn.session = None
        if shard is None:
            self._sessions.clear()
        else:
            for session in list(self._sessions.values()):
                if session.shard[0] == shard:
                    del self._sessions[session.id]

    # ================================================================ interactions

    def _new_interaction(
        self,
        kind: int,
        channel_id: int,
        user_id: int,
        name: str,
        data: JSON,
        *,
        message_id: int | None = None,
    ) -> _Interaction:
        """Build and register an INTERACTION_CREATE payload (lock held)."""
        if user_id not in self._users:
            raise KeyError(f"unknown user {user_id}")
        interaction_id = self._new_id()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        channel = copy.deepcopy(self._channels[channel_id])
        guild = self._guild_of(channel_id)
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "channel_id": str(channel_id),
            "channel": channel,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "app_permissions": str(ALL_PERMISSIONS),
            "entitlements": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if guild is not None:
            member = self._member_object(guild, user_id)
            member["permissions"] = str(EVERYONE_PERMISSIONS)
            channel["permissions"] = str(EVERYONE_PERMISSIONS)
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member,
                context=0,
                authorizing_integration_owners={"0": str(guild.id)},
            )
        else:
            payload.update(
                user=self._public_user(user_id),
                context=1,
                authorizing_integration_owners={"0": "0"},
            )
        if message_id is not None:
            payload["message"] = self._render(self._messages[message_id])
        interaction = _Interaction(
            id=interaction_id,
            token=token,
            type=kind,
            channel_id=channel_id,
            guild_id=guild.id if guild else None,
            user_id=user_id,
            name=name,
            created=time.perf_counter(),
            payload=payload,
            source_message_id=message_id,
        )
        self._interactions[interaction_id] = interaction
        self._interactions_by_token[token] = interaction
        return interaction

    def _interaction_metadata(self, interaction: _Interaction) -> JSON:
        meta: JSON = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": self._public_user(interaction.user_id),
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        if interaction.type == IT_APPLICATION_COMMAND:
            meta["name"] = interaction.name
            meta["command_type"] = 1
        if interaction.source_message_id is not None:
            meta["interacted_message_id"] = str(interaction.source_message_id)
        return meta

    def _interaction_message(
        self,
        interaction: _Interaction,
        body: JSON,
        files: list[tuple[str, bytes, str | None]],
        *,
        loading: bool,
    ) -> JSON:
        """Create a response or follow-up message authored by the app (lock held)."""
        ephemeral = bool(int(body.get("flags") or 0) & FLAG_EPHEMERAL)
        extra: JSON = {
            "webhook_id": str(self.application_id),
            "application_id": str(self.application_id),
            "interaction_metadata": self._interaction_metadata(interaction),
        }
        # A deferred response is an empty "thinking..." placeholder until edited.
        message = self._create_message(
            interaction.channel_id,
            self.application_id,
            {} if loading else body,
            files=[] if loading else files,
            listed=not ephemeral,
            extra=extra,
            validate=not loading,
        )
        if interaction.type == IT_APPLICATION_COMMAND:
            message["type"] = MSG_CHAT_INPUT_COMMAND
        message["flags"] |= (FLAG_EPHEMERAL if ephemeral else 0) | (FLAG_LOADING if loading else 0)
        return message

    def _interaction_for_token(self, app_id: int, token: str) -> _Interaction:
        if app_id != self.application_id:
            raise _unknown_webhook()
        interaction = self._interactions_by_token.get(token)
        if interaction is None or interaction.responded_at is None:
            raise _unknown_webhook()
        if time.perf_counter() - interaction.created > INTERACTION_TOKEN_LIFETIME:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        return interaction

    # ================================================================ REST

    def _build_routes(self) -> list[_Route]:
        def r(
            method: str,
            path: str,
            handler: _Handler,
            bucket: str = "route",
            *,
            auth: bool = True,
            global_limit: bool = True,
        ) -> _Route:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
            return _Route(method, re.compile(f"^{regex}$"), handler, bucket, auth, global_limit)

        def hook(method: str, path: str, handler: _Handler) -> _Route:
            """Interaction webhooks: token in the path, no bot auth, no global limit."""
            return r(method, path, handler, auth=False, global_limit=False)

        return [
            r("GET", "/users/@me", self._get_me),
            r("GET", "/users/{user_id}", self._get_user),
            r("GET", "/oauth2/applications/@me", self._get_application),
            r("GET", "/applications/@me", self._get_application),
            r("GET", "/gateway", self._get_gateway, auth=False),
            r("GET", "/gateway/bot", self._get_gateway_bot),
            r("POST", "/users/@me/channels", self._create_dm),
            r("GET", "/channels/{channel_id}", self._get_channel),
            r("GET", "/channels/{channel_id}/messages", self._list_messages),
            r("POST", "/channels/{channel_id}/messages", self._post_message, "message"),
            r("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            r("PATCH", "/channels/{channel_id}/messages/{message_id}", self._patch_message, "edit"),
            r(
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}",
                self._delete_message,
                "delete",
            ),
            r("POST", "/channels/{channel_id}/typing", self._typing),
            r(
                "PUT",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._add_reaction,
                "reaction",
            ),
            r(
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._remove_reaction,
                "reaction",
            ),
            r("GET", "/applications/{app_id}/commands", self._get_commands),
            r("PUT", "/applications/{app_id}/commands", self._put_commands),
            r("POST", "/applications/{app_id}/commands", self._post_command),
            r("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands),
            r("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            r("POST", "/applications/{app_id}/guilds/{guild_id}/commands", self._post_command),
            hook("POST", "/interactions/{interaction_id}/{token}/callback", self._callback),
            hook("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_get),
            hook("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_edit),
            hook(
                "DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_delete
            ),
            hook("POST", "/webhooks/{app_id}/{token}", self._followup),
        ]

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        """Every REST call: record, route, authenticate, rate-limit, handle."""
        now = time.perf_counter()
        raw_path = request.rel_url.raw_path
        match = re.match(r"^/api/v\d+(/.*)$", raw_path)
        if match is None:
            return _json_response(404, {"message": "404: Not Found", "code": 0})
        rel = match.group(1)
        try:
            body, files = await self._read_body(request)
            bad_json = False
        except ValueError:
            body, files, bad_json = None, [], True
        rec = RecordedRequest(
            method=request.method,
            path=unquote(rel),
            json=body,
            time=now,
            query=dict(request.query),
            files=[f[0] for f in files],
        )
        with self._lock:
            self._requests.append(rec)
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        try:
            status, payload, headers = await self._handle(request, rel, body, files, bad_json, now)
        finally:
            if transport is not None:
                self._transports.discard(transport)
        rec.status = status
        if "X-RateLimit-Remaining" in headers:
            rec.remaining = int(headers["X-RateLimit-Remaining"])
        with self._lock:
            if status in (401, 403, 429):
                self.invalid_requests += 1
        headers["Via"] = "1.1 google"
        if status == 204 or payload is None:
            return web.Response(status=status, headers=headers)
        return _json_response(status, payload, headers)

    async def _handle(
        self,
        request: web.Request,
        rel: str,
        body: Any,
        files: list[tuple[str, bytes, str | None]],
        bad_json: bool,
        now: float,
    ) -> tuple[int, Any, dict[str, str]]:
        """Route, authenticate, rate-limit, then run the handler: (status, body, headers)."""
        headers: dict[str, str] = {}
        path_matched = False
        route: _Route | None = None
        params: dict[str, str] = {}
        for candidate in self._routes:
            found = candidate.pattern.match(rel)
            if found is None:
                continue
            path_matched = True
            if candidate.method == request.method:
                route = candidate
                params = {k: unquote(v) for k, v in found.groupdict().items()}
                break
        if route is None:
            if path_matched:
                return 405, {"message": "405: Method Not Allowed", "code": 0}, headers
            return 404, {"message": "404: Not Found", "code": 0}, headers
        if route.auth and request.headers.get("Authorization") != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}, headers
        limited = self._rate_limit(route, params, now, headers)
        if limited is not None:
            return 429, limited, headers
        if bad_json:
            return (
                400,
                {"message": "The request body contains invalid JSON.", "code": 50109},
                headers,
            )
        call = _Call(params=params, body=body, query=dict(request.query), files=files)
        try:
            status, payload = await route.handler(call)
        except _ApiError as err:
            status, payload = err.status, err.body()
        except Exception:
            # A bug in the fake (or a body it cannot digest): answer like Discord's 500 and keep
            # the traceback, since discord.py would otherwise just retry with back-off.
            with self._lock:
                self.server_errors.append(traceback.format_exc())
            status, payload = 500, {"message": "500: Internal Server Error", "code": 0}
        return status, payload, headers

    def _rate_limit(
        self, route: _Route, params: dict[str, str], now: float, headers: dict[str, str]
    ) -> JSON | None:
        """Apply the global limit and the route's bucket; fill headers; a 429 body if over."""
        if not self.rate_limits:
            return None
        with self._lock:
            if route.global_limit:
                if now >= self._global_reset_at:
                    self._global_count = 0
                    self._global_reset_at = now + self.global_window
                if self._global_count >= self.global_limit:
                    retry = _ceil_ms(self._global_reset_at - now)
                    self._rate_limited["global"] += 1
                    headers.update(
                        {
                            "X-RateLimit-Global": "true",
                            "X-RateLimit-Scope": "global",
                            "Retry-After": str(max(1, math.ceil(retry))),
                        }
                    )
                    return {"message": RATE_LIMITED_MESSAGE, "retry_after": retry, "global": True}
                self._global_count += 1
            bucket = self._bucket_for(route, params)
            if bucket is None:
                return None
            allowed, remaining, reset_after = bucket.take(now)
            reset_after = _ceil_ms(reset_after)
            if self.send_ratelimit_headers:
                headers.update(
                    {
                        "X-RateLimit-Limit": str(bucket.limit),
                        "X-RateLimit-Remaining": str(remaining),
                        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                        "X-RateLimit-Bucket": bucket.hash,
                    }
                )
            if allowed:
                return None
            self._rate_limited["user"] += 1
            headers.update(
                {"X-RateLimit-Scope": "user", "Retry-After": str(max(1, math.ceil(reset_after)))}
            )
            return {"message": RATE_LIMITED_MESSAGE, "retry_after": reset_after, "global": False}

    def _bucket_for(self, route: _Route, params: dict[str, str]) -> _Bucket | None:
        """Discord computes buckets per route and top-level resource (channel, guild, webhook)."""
        if not route.bucket:
            return None
        major = params.get("channel_id") or params.get("guild_id") or params.get("app_id")
        major = major or params.get("interaction_id") or ""
        if route.bucket in ("message", "edit"):
            kind = "message" if self.shared_message_bucket else route.bucket
            limit, window = self.message_limit, self.message_window
        elif route.bucket == "delete":
            kind, limit, window = "delete", self.message_limit, self.message_window
        elif route.bucket == "reaction":
            kind, limit, window = "reaction", self.reaction_limit, self.reaction_window
        else:
            kind, limit, window = (
                f"{route.method} {route.pattern.pattern}",
                self.route_limit,
                self.route_window,
            )
            if "token" in params:
                major = f"{major}:{params['token']}"
        key = f"{kind}:{major}"
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(key=key, hash=_bucket_hash(kind), limit=limit, window=window)
            self._buckets[key] = bucket
        return bucket

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes, str | None]]]:
        """JSON body, or multipart ``payload_json`` + ``files[n]`` (what discord.py sends)."""
        files: list[tuple[str, bytes, str | None]] = []
        if request.content_type.startswith("multipart/"):
            body: Any = None
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                data = await part.read()
                if part.name == "payload_json":
                    body = json.loads(data)
                elif part.filename is not None:
                    content_type = part.headers.get("Content-Type")
                    files.append((part.filename, bytes(data), content_type))
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), files

    # ---------------------------------------------------------------- users, gateway info

    async def _get_me(self, call: _Call) -> tuple[int, Any]:
        return 200, copy.deepcopy(self.bot_user)

    async def _get_user(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            user_id = call.id("user_id")
            if user_id not in self._users:
                raise _ApiError(404, 10013, "Unknown User")
            return 200, self._public_user(user_id)

    async def _get_application(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            owner = self._public_user(self._owner_id)
            guild_count = len(self._guilds)
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user["username"],
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": owner,
            "team": None,
            "flags": self._application_flags(),
            "bot": copy.deepcopy(self.bot_user),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "install_params": None,
            "integration_types_config": {"0": {}},
            "approximate_guild_count": guild_count,
            "tags": [],
        }

    async def _get_gateway(self, call: _Call) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, call: _Call) -> tuple[int, Any]:
        return 200, {
            "url": self.gateway_url,
            "shards": self.shard_count,
            "session_start_limit": {
                "total": 1000,
                "remaining": max(0, 1000 - self.identifies),
                "reset_after": 86_400_000,
                "max_concurrency": self.max_concurrency,
            },
        }

    async def _create_dm(self, call: _Call) -> tuple[int, Any]:
        body = call.obj()
        try:
            user_id = int(body.get("recipient_id", 0))
        except (TypeError, ValueError):
            raise _invalid_form(
                "recipient_id", "NUMBER_TYPE_COERCE", "Value is not snowflake."
            ) from None
        with self._lock:
            channel_id = self._dm_channel(user_id)
            return 200, copy.deepcopy(self._channels[channel_id])

    # ---------------------------------------------------------------- channels and messages

    async def _get_channel(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            channel = self._channels.get(call.id("channel_id"))
            if channel is None:
                raise _unknown_channel()
            return 200, copy.deepcopy(channel)

    async def _list_messages(self, call: _Call) -> tuple[int, Any]:
        channel_id = call.id("channel_id")
        limit = max(1, min(100, int(call.query.get("limit", "50"))))
        with self._lock:
            if channel_id not in self._channels:
                raise _unknown_channel()
            ids = list(self._channel_messages.get(channel_id, []))
            if "before" in call.query:
                ids = [i for i in ids if i < int(call.query["before"])][-limit:]
            elif "after" in call.query:
                ids = [i for i in ids if i > int(call.query["after"])][:limit]
            elif "around" in call.query:
                around = int(call.query["around"])
                older = [i for i in ids if i <= around][-(limit // 2 + 1) :]
                ids = older + [i for i in ids if i > around][: limit - len(older)]
            else:
                ids = ids[-limit:]
            return 200, [self._render(self._messages[i]) for i in reversed(ids)]

    async def _get_message(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            message = self._stored_message(call.id("channel_id"), call.id("message_id"))
            return 200, self._render(message)

    async def _post_message(self, call: _Call) -> tuple[int, Any]:
        channel_id = call.id("channel_id")
        with self._lock:
            message = self._create_message(
                channel_id, self.application_id, call.obj(), files=call.files
            )
            rendered = self._render(message)
            event = self._message_event(message)
        self._emit("MESSAGE_CREATE", event)
        return 200, rendered

    async def _patch_message(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            message = self._stored_message(call.id("channel_id"), call.id("message_id"))
            if int(message["author"]["id"]) != self.application_id:
                raise _ApiError(403, 50005, "Cannot edit a message authored by another user")
            self._edit_message(message, call.obj(), call.files)
            rendered = self._render(message)
            event = self._message_event(message)
        self._emit("MESSAGE_UPDATE", event)
        return 200, rendered

    async def _delete_message(self, call: _Call) -> tuple[int, Any]:
        channel_id, message_id = call.id("channel_id"), call.id("message_id")
        with self._lock:
            self._stored_message(channel_id, message_id)
            self._delete_stored(channel_id, message_id)
        return 204, None

    def _delete_stored(self, channel_id: int, message_id: int) -> None:
        """Forget a message and dispatch MESSAGE_DELETE (lock held)."""
        self._messages.pop(message_id, None)
        ids = self._channel_messages.get(channel_id, [])
        listed = message_id in ids
        if listed:
            ids.remove(message_id)
            event: JSON = {"id": str(message_id), "channel_id": str(channel_id)}
            guild = self._guild_of(channel_id)
            if guild is not None:
                event["guild_id"] = str(guild.id)
            self._call_in_loop(lambda: self._emit("MESSAGE_DELETE", event))

    async def _typing(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            if call.id("channel_id") not in self._channels:
                raise _unknown_channel()
        return 204, None

    async def _add_reaction(self, call: _Call) -> tuple[int, Any]:
        emoji = call.params["emoji"]
        with self._lock:
            message = self._stored_message(call.id("channel_id"), call.id("message_id"))
            name, _, emoji_id = emoji.partition(":")
            for reaction in message["reactions"]:
                if reaction["emoji"]["name"] == name:
                    if not reaction["me"]:
                        reaction["me"] = True
                        reaction["count"] += 1
                        reaction["count_details"]["normal"] += 1
                    break
            else:
                message["reactions"].append(
                    {
                        "count": 1,
                        "count_details": {"burst": 0, "normal": 1},
                        "me": True,
                        "me_burst": False,
                        "burst_colors": [],
                        "emoji": {"id": emoji_id or None, "name": name},
                    }
                )
        return 204, None

    async def _remove_reaction(self, call: _Call) -> tuple[int, Any]:
        name = call.params["emoji"].partition(":")[0]
        with self._lock:
            message = self._stored_message(call.id("channel_id"), call.id("message_id"))
            for reaction in list(message["reactions"]):
                if reaction["emoji"]["name"] == name and reaction["me"]:
                    reaction["me"] = False
                    reaction["count"] -= 1
                    reaction["count_details"]["normal"] -= 1
                    if reaction["count"] <= 0:
                        message["reactions"].remove(reaction)
        return 204, None

    # ---------------------------------------------------------------- application commands

    def _command_store(self, call: _Call) -> tuple[dict[str, JSON], int | None]:
        if call.id("app_id") != self.application_id:
            raise _ApiError(
                403, 20012, "You are not authorized to perform this action on this application"
            )
        if "guild_id" not in call.params:
            return self._global_commands, None
        guild_id = call.id("guild_id")
        if guild_id not in self._guilds:
            raise _ApiError(404, 10004, "Unknown Guild")
        return self._guild_commands.setdefault(guild_id, {}), guild_id

    def _command_object(
        self, spec: JSON, index: int, guild_id: int | None, old: JSON | None
    ) -> JSON:
        name = spec.get("name")
        kind = int(spec.get("type", 1))
        prefix = f"{index}." if index >= 0 else ""
        if not isinstance(name, str) or not _COMMAND_NAME_RE.match(name):
            raise _invalid_form(
                f"{prefix}name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        description = spec.get("description") or ""
        if kind == 1 and (name != name.lower() or not 1 <= len(description) <= 100):
            raise _invalid_form(
                f"{prefix}description" if name == name.lower() else f"{prefix}name",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        command: JSON = {
            "id": old["id"] if old else str(self._new_id()),
            "application_id": str(self.application_id),
            "version": str(self._new_id()),
            "default_member_permissions": spec.get("default_member_permissions"),
            "type": kind,
            "name": name,
            "name_localizations": spec.get("name_localizations"),
            "description": description,
            "description_localizations": spec.get("description_localizations"),
            "options": copy.deepcopy(spec.get("options") or []),
            "nsfw": bool(spec.get("nsfw", False)),
            "contexts": spec.get("contexts"),
            "integration_types": spec.get("integration_types") or [0],
        }
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        else:
            command["dm_permission"] = spec.get("dm_permission", True)
        return command

    async def _get_commands(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            store, _ = self._command_store(call)
            return 200, copy.deepcopy(list(store.values()))

    async def _put_commands(self, call: _Call) -> tuple[int, Any]:
        specs = call.body if isinstance(call.body, list) else None
        if specs is None:
            raise _invalid_form("_root", "LIST_TYPE_CONVERT", "Only iterables may be used.")
        with self._lock:
            store, guild_id = self._command_store(call)
            if len(specs) > 100:
                raise _invalid_form(
                    "_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length."
                )
            new: dict[str, JSON] = {}
            for index, spec in enumerate(specs):
                command = self._command_object(
                    spec, index, guild_id, store.get(str(spec.get("name")))
                )
                if command["name"] in new:
                    raise _invalid_form(
                        f"{index}.name",
                        "APPLICATION_COMMANDS_DUPLICATE_NAME",
                        "Application command names must be unique",
                    )
                new[command["name"]] = command
            store.clear()
            store.update(new)
            return 200, copy.deepcopy(list(new.values()))

    async def _post_command(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            store, guild_id = self._command_store(call)
            spec = call.obj()
            old = store.get(str(spec.get("name")))
            command = self._command_object(spec, -1, guild_id, old)
            store[command["name"]] = command
            return (200 if old else 201), copy.deepcopy(command)

    # ---------------------------------------------------------------- interaction responses

    async def _callback(self, call: _Call) -> tuple[int, Any]:
        body = call.obj()
        kind = body.get("type")
        raw_data = body.get("data")
        data: JSON = raw_data if isinstance(raw_data, dict) else {}
        events: list[tuple[str, JSON]] = []
        with self._lock:
            interaction = self._interactions.get(call.id("interaction_id"))
            if interaction is None or interaction.token != call.params["token"]:
                raise _unknown_interaction()
            if interaction.response_type is not None:
                raise _ApiError(400, 40060, "Interaction has already been acknowledged.")
            if time.perf_counter() - interaction.created > self.interaction_deadline:
                raise _unknown_interaction()
            allowed = {
                IT_PING: {CB_PONG},
                IT_APPLICATION_COMMAND: {CB_CHANNEL_MESSAGE, CB_DEFERRED_CHANNEL_MESSAGE, CB_MODAL},
                IT_MESSAGE_COMPONENT: {
                    CB_CHANNEL_MESSAGE,
                    CB_DEFERRED_CHANNEL_MESSAGE,
                    CB_DEFERRED_UPDATE_MESSAGE,
                    CB_UPDATE_MESSAGE,
                    CB_MODAL,
                },
                IT_AUTOCOMPLETE: {CB_AUTOCOMPLETE_RESULT},
                IT_MODAL_SUBMIT: {
                    CB_CHANNEL_MESSAGE,
                    CB_DEFERRED_CHANNEL_MESSAGE,
                    CB_DEFERRED_UPDATE_MESSAGE,
                    CB_UPDATE_MESSAGE,
                },
            }[interaction.type]
            if kind not in allowed:
                raise _invalid_form(
                    "type",
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "Value must be one of the valid interaction response types.",
                )
            resource: JSON | None = None
            message: JSON | None = None
            if kind in (CB_CHANNEL_MESSAGE, CB_DEFERRED_CHANNEL_MESSAGE):
                if kind == CB_CHANNEL_MESSAGE:
                    message = self._interaction_message(
                        interaction, data, call.files, loading=False
                    )
                else:
                    message = self._interaction_message(interaction, data, [], loading=True)
                interaction.original_id = int(message["id"])
                interaction.ephemeral = bool(message["flags"] & FLAG_EPHEMERAL)
                resource = {"type": kind, "message": self._render(message)}
                if not interaction.ephemeral:
                    events.append(("MESSAGE_CREATE", self._message_event(message)))
            elif kind == CB_UPDATE_MESSAGE:
                source = self._messages.get(interaction.source_message_id or 0)
                if source is None:
                    raise _unknown_message()
                self._edit_message(source, data, call.files)
                interaction.original_id = int(source["id"])
                resource = {"type": kind, "message": self._render(source)}
                events.append(("MESSAGE_UPDATE", self._message_event(source)))
            elif kind == CB_DEFERRED_UPDATE_MESSAGE:
                interaction.original_id = interaction.source_message_id
            elif kind == CB_AUTOCOMPLETE_RESULT:
                if len(data.get("choices") or []) > 25:
                    raise _invalid_form(
                        "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                    )
                resource = {"type": kind}
            elif kind == CB_MODAL:
                resource = {"type": kind}
            interaction.response_type = int(kind)
            interaction.response_data = copy.deepcopy(data)
            interaction.responded_at = time.perf_counter()
            answer: JSON = {
                "interaction": {
                    "id": str(interaction.id),
                    "type": interaction.type,
                    "activity_instance_id": None,
                    "response_message_id": str(interaction.original_id)
                    if interaction.original_id
                    else None,
                    "response_message_loading": kind == CB_DEFERRED_CHANNEL_MESSAGE,
                    "response_message_ephemeral": interaction.ephemeral,
                }
            }
            if resource is not None:
                answer["resource"] = resource
        for event, payload in events:
            self._emit(event, payload)
        if call.query.get("with_response") in ("1", "true", "True"):
            return 200, answer
        return 204, None

    def _webhook_message(self, interaction: _Interaction, message_ref: str) -> JSON:
        if message_ref == "@original":
            if interaction.original_id is None or interaction.original_id not in self._messages:
                raise _unknown_message()
            return self._messages[interaction.original_id]
        try:
            message_id = int(message_ref)
        except ValueError:
            raise _unknown_message() from None
        if message_id != interaction.original_id and message_id not in interaction.followup_ids:
            raise _unknown_message()
        message = self._messages.get(message_id)
        if message is None:
            raise _unknown_message()
        return message

    async def _webhook_get(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            interaction = self._interaction_for_token(call.id("app_id"), call.params["token"])
            return 200, self._render(self._webhook_message(interaction, call.params["message_id"]))

    async def _webhook_edit(self, call: _Call) -> tuple[int, Any]:
        body = call.obj()
        with self._lock:
            interaction = self._interaction_for_token(call.id("app_id"), call.params["token"])
            message = self._webhook_message(interaction, call.params["message_id"])
            self._edit_message(message, body, call.files)
            if int(message["id"]) == interaction.original_id:
                interaction.edits.append(copy.deepcopy(body))
            rendered = self._render(message)
            listed = int(message["id"]) in self._channel_messages.get(interaction.channel_id, [])
            event = self._message_event(message) if listed else None
        if event is not None:
            self._emit("MESSAGE_UPDATE", event)
        return 200, rendered

    async def _webhook_delete(self, call: _Call) -> tuple[int, Any]:
        with self._lock:
            interaction = self._interaction_for_token(call.id("app_id"), call.params["token"])
            message = self._webhook_message(interaction, call.params["message_id"])
            self._delete_stored(interaction.channel_id, int(message["id"]))
        return 204, None

    async def _followup(self, call: _Call) -> tuple[int, Any]:
        body = call.obj()
        with self._lock:
            interaction = self._interaction_for_token(call.id("app_id"), call.params["token"])
            original = self._messages.get(interaction.original_id or 0)
            if (
                interaction.response_type == CB_DEFERRED_CHANNEL_MESSAGE
                and original is not None
                and original["flags"] & FLAG_LOADING
            ):
                # Discord: the first follow-up after a deferral becomes the deferred message.
                self._edit_message(original, body, call.files)
                message = original
                event_name = "MESSAGE_UPDATE"
            else:
                message = self._interaction_message(interaction, body, call.files, loading=False)
                interaction.followup_ids.append(int(message["id"]))
                event_name = "MESSAGE_CREATE"
            rendered = self._render(message)
            listed = int(message["id"]) in self._channel_messages.get(interaction.channel_id, [])
            event = self._message_event(message) if listed else None
        if event is not None:
            self._emit(event_name, event)
        if call.query.get("wait") in ("1", "true", "True"):
            return 200, rendered
        return 204, None


# --------------------------------------------------------------------------------------------
# Foreground runner
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until SIGINT/SIGTERM (manual and out-of-process runs).

    Creates ``--guilds`` guilds (one by default, spread over ``--shards`` shards) with the given
    channels and users, then prints the URLs, ids and the env lines that point ``python -m bot``
    at it.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.fake_discord", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default="fake-token")
    parser.add_argument("--channel", action="append", help="text channel (repeatable)")
    parser.add_argument("--user", action="append", help="user (repeatable)")
    parser.add_argument("--message-limit", type=int, default=5)
    parser.add_argument("--message-window", type=float, default=5.0)
    parser.add_argument("--global-limit", type=int, default=50)
    parser.add_argument("--no-rate-limits", action="store_true")
    parser.add_argument("--no-ratelimit-headers", action="store_true")
    parser.add_argument("--shards", type=int, default=1, help="shard count Discord requires")
    parser.add_argument("--guilds", type=int, default=1, help="guilds, round-robin over shards")
    args = parser.parse_args(argv)

    fake = FakeDiscord(
        message_limit=args.message_limit,
        message_window=args.message_window,
        global_limit=args.global_limit,
        rate_limits=not args.no_rate_limits,
        send_ratelimit_headers=not args.no_ratelimit_headers,
        shard_count=args.shards,
        token=args.token,
        host=args.host,
        port=args.port,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    fake.start()
    guilds = [fake.create_guild() for _ in range(max(1, args.guilds))]
    channels = {
        guild: {name: fake.create_channel(guild, name) for name in args.channel or ["general"]}
        for guild in guilds
    }
    users = {name: fake.create_user(name) for name in args.user or ["alice"]}
    print(f"fake-discord api {fake.api_url}", flush=True)
    print(f"fake-discord gateway {fake.gateway_url} shards {fake.shard_count}", flush=True)
    for guild in guilds:
        print(
            f"guild {guild} shard {fake.shard_of(guild)} channels {channels[guild]} users {users}",
            flush=True,
        )
    print(f"OLLACORD_DISCORD_API={fake.api_url}", flush=True)
    print(f"OLLACORD_DISCORD_GATEWAY={fake.gateway_url}", flush=True)
    print(f"DISCORD_TOKEN={fake.token}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
