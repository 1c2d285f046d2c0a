"""The Redis history store (``HISTORY_STORE=redis://[:password@]host:port/db``, ``rediss://``
for TLS). Several bot processes can share one; what else they share there (budgets, leases,
slots) is in bot/redis_coordination.py, on a client made by :func:`redis_client`.

Key layout (every key under ``ollacord:``; give each bot its own database number)::

    ollacord:turn-id               string   the last turn id given (INCR): global, increasing,
                                            never reused, like SQLite's AUTOINCREMENT
    ollacord:turns:<conversation>  zset     one member per turn, scored by its id; the member
                                            is "<id>:<JSON {role, content, ref, at}>"
    ollacord:state:<conversation>  hash     summary, summary_upto, window_start, model,
                                            system_prompt, epoch, summary_at, updated_at;
                                            a missing field has its default (model and
                                            system_prompt: None, epoch: 0)
    ollacord:done:<random id>      string   what a write returned, kept 10 minutes: a write
                                            sent again (its reply was lost) is not made twice
    ollacord:open-replies          hash     conversation -> the Discord message its reply is
                                            being written into (see set_open_reply)

Atomicity, across processes: ``append``, ``replace`` and ``clear`` are each one Lua script, which
Redis runs with nothing in between. The append/replace script reads the epoch first and writes
nothing (returning nil) if it changed; Redis does not roll back a script that fails half-way,
so every check comes before the first write. ``update_state`` runs ``change`` in Python, so it
is optimistic: WATCH the state hash, read it, MULTI, write, EXEC; when another client wrote
the hash in between (a clear, another update), EXEC fails with WatchError and the whole step
runs again on the new state. ``change`` may therefore run more than once; it never writes the
epoch, which only the clear script moves.

A dropped connection or a timeout is retried (a restarted server leaves dead connections in the
pool). A retried script may have run already, its reply lost: each call carries a random id,
and a script that finds its id done returns what it returned then, writing nothing.

Durability is the server's: run it with ``appendonly yes`` (``appendfsync always`` keeps every
acknowledged write across a crash; ``everysec``, Redis's default, may lose the last second).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    InvalidResponse,
    RedisError,
    ResponseError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from .history_store import ConversationState, StateChange, StoredImage, StoreError, Turn, changed
from .settings import shown_url

log = logging.getLogger(__name__)

PREFIX = "ollacord:"
COUNTER = f"{PREFIX}turn-id"
OPEN_REPLIES = f"{PREFIX}open-replies"
CONNECT_TIMEOUT = 5.0

# KEYS: state, turns, counter, done. ARGV: epoch ('' = no check), how many ids to remove, those
# ids, then one JSON payload per new turn. Returns the new ids, or nil when the epoch moved.
_REPLACE = """
local done = redis.call('GET', KEYS[4])
if done then
    return cjson.decode(done)
end
local epoch = ARGV[1]
if epoch ~= '' and tonumber(epoch) ~= tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') then
    return false
end
local removes = tonumber(ARGV[2])
for i = 3, removes + 2 do
    redis.call('ZREMRANGEBYSCORE', KEYS[2], ARGV[i], ARGV[i])
end
local ids = {}
for i = removes + 3, #ARGV do
    local id = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[2], id, id .. ':' .. ARGV[i])
    ids[#ids + 1] = id
end
redis.call('SET', KEYS[4], cjson.encode(ids), 'EX', 600)
return ids
"""

# KEYS: state, turns, done. ARGV: now. Forgets the turns and every state field but the settings
# and the epoch (as history_store.cleared does), then bumps the epoch and returns it.
_CLEAR = """
local done = redis.call('GET', KEYS[3])
if done then
    return tonumber(done)
end
redis.call('DEL', KEYS[2])
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    if name ~= 'model' and name ~= 'system_prompt' and name ~= 'epoch' then
        redis.call('HDEL', KEYS[1], name)
    end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('SET', KEYS[3], epoch, 'EX', 600)
return epoch
"""


def redis_client(url: str, retry: Retry | None = None) -> Redis:
    """A client with ollacord's connection options (the history store's and the shared
    coordination's): timeouts, RESP2, retries on a dropped connection, its name."""
    # RESP2: what every Redis speaks (RESP3 needs 6.0 or newer).
    return Redis.from_url(
        url,
        decode_responses=True,
        protocol=2,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=10.0,
        health_check_interval=30,
        # A dropped connection (a Redis restart, a failover) is tried again twice, quickly:
        # when Redis is down, every store call would otherwise cost the user ~0.7 s of waits.
        retry=retry or Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],  # redis-py 5 needs both
        client_name="ollacord",
    )


class RedisHistoryStore:
    """A history store in Redis, shared by every process pointed at the same database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._password = urlsplit(url).password or urlsplit(url).username
        self._tls = url.startswith("rediss://")
        self._redis = redis_client(url)
        self._replace_script = self._redis.register_script(_REPLACE)
        self._clear_script = self._redis.register_script(_CLEAR)

    @staticmethod
    def _keys(conversation: str) -> tuple[str, str]:
        return f"{PREFIX}state:{conversation}", f"{PREFIX}turns:{conversation}"

    @staticmethod
    def _done() -> str:
        """A new key for one write's result (see the module docstring)."""
        return f"{PREFIX}done:{uuid.uuid4().hex}"

    async def open(self) -> None:
        # A client of its own, without retries: a wrong setting fails at once.
        check = redis_client(self.url, Retry(NoBackoff(), 0))
        try:
            await check.ping()
            await self._warn_if_not_durable(check)
        except (RedisError, OSError) as exc:
            raise StoreError(self._explain(exc)) from exc
        finally:
            await check.aclose()

    def _explain(self, exc: BaseException) -> str:
        where = f"HISTORY_STORE points at {shown_url(self.url)}"
        causes = _chain(exc)
        # redis-py's "Error 111 connecting to host:port. ..." says less than the socket's own.
        cause = str(next((e for e in causes if isinstance(e, OSError)), exc)).rstrip(".")
        if self._password:
            cause = cause.replace(self._password, "***")
        if any(isinstance(e, AuthenticationError) for e in causes) and not self._password:
            return (
                f"{where}, which asks for a password ({cause}): put it in the URL, as "
                "redis://:password@host:port/db."
            )
        if any(isinstance(e, AuthenticationError) for e in causes):
            return (
                f"{where}, which does not accept the password given ({cause}): put the "
                "server's password in the URL, as redis://:password@host:port/db."
            )
        if isinstance(exc, ResponseError) and "db index" in cause.lower():
            return (
                f"{where}, but that server has no such database number ({cause}): pick one "
                "from 0 to 15 (more only if the server sets 'databases')."
            )
        if any(isinstance(e, ConnectionRefusedError) for e in causes):
            return (
                f"{where}, which refused the connection: is redis-server running and listening "
                "on that host and port?"
            )
        if any(isinstance(e, RedisTimeoutError | TimeoutError) for e in causes):
            tls = ", and that the server speaks TLS (else use redis://)" if self._tls else ""
            return (
                f"{where}, which did not answer within {CONNECT_TIMEOUT:g} s: check the host, "
                f"the port and any firewall in between{tls}."
            )
        if any(isinstance(e, socket.gaierror) for e in causes):
            return f"{where}, whose host name cannot be resolved ({cause})."
        if any(isinstance(e, ssl.SSLError) for e in causes):
            return (
                f"{where}, where TLS fails ({cause}): use redis:// for a server without TLS, "
                "rediss:// only for one that has it (with a certificate this host trusts)."
            )
        if isinstance(exc, InvalidResponse):
            return f"{where}, where something other than Redis answers ({cause}): check the port."
        return f"{where}, which cannot be used ({cause})."

    async def _warn_if_not_durable(self, client: Redis) -> None:
        """Log when the server does not write an append-only file: its last writes would
        then be lost in a crash. Servers that refuse CONFIG (managed ones) are not checked."""
        try:
            answer = await client.config_get("appendonly")
        except ResponseError:
            return
        if answer.get("appendonly") == "no":
            log.warning(
                "event=history_store_not_durable store=%s cause='appendonly is off: a crash "
                "loses the writes since the last snapshot' fix='appendonly yes'",
                shown_url(self.url),
            )

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        return await self._load(conversation, after, "+inf")

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        return await self._load(conversation, after, upto)

    async def _load(self, conversation: str, after: int, upto: int | str) -> list[Turn]:
        _, turns = self._keys(conversation)
        with self._failing():
            members = await self._redis.zrangebyscore(turns, f"({after}", upto)
        return [_turn(member) for member in members]

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """Redis unreachable (or refusing) while the bot runs: a StoreError, whose sentence
        the engine shows and logs, rather than redis-py's exception."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreError(self._explain(exc)) from exc

    async def append(
        self, conversation: str, turns: Sequence[Turn], *, epoch: int | None = None
    ) -> list[Turn] | None:
        return await self.replace(conversation, (), turns, epoch=epoch)

    async def replace(
        self,
        conversation: str,
        remove: Sequence[int],
        turns: Sequence[Turn],
        *,
        epoch: int | None = None,
    ) -> list[Turn] | None:
        # Every payload is built before the script runs: a turn that cannot be stored fails
        # here, with nothing written.
        now = time.time()
        payloads = [_payload(turn, now) for turn in turns]
        args = ["" if epoch is None else epoch, len(remove), *remove, *payloads]
        keys = [*self._keys(conversation), COUNTER, self._done()]
        with self._failing():
            ids = await self._replace_script(keys=keys, args=args)
        if ids is None:
            return None  # reset since the reply started: its exchange is not kept
        return [replace(turn, id=int(id)) for turn, id in zip(turns, ids, strict=True)]

    async def clear(self, conversation: str) -> int:
        keys = [*self._keys(conversation), self._done()]
        with self._failing():
            return int(await self._clear_script(keys=keys, args=[time.time()]))

    async def get_state(self, conversation: str) -> ConversationState:
        state, _ = self._keys(conversation)
        with self._failing():
            return _state(await self._redis.hgetall(state))

    async def update_state(self, conversation: str, change: StateChange) -> ConversationState:
        key, _ = self._keys(conversation)
        with self._failing():
            return await self._update_state(key, change)

    async def _update_state(self, key: str, change: StateChange) -> ConversationState:
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:  # each WatchError means another writer succeeded: no livelock
                try:
                    await pipe.watch(key)
                    current = _state(await pipe.hgetall(key))
                    state = changed(current, change)
                    if state is current:
                        return current  # nothing to write (leaving the block unwatches)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    fields, unset = _fields(state)
                    pipe.hset(key, mapping=fields)
                    if unset:
                        pipe.hdel(key, *unset)
                    await pipe.execute()
                    return state
                except WatchError:
                    continue

    async def set_open_reply(self, conversation: str, message_id: int | None) -> None:
        with self._failing():
            if message_id is None:
                await self._redis.hdel(OPEN_REPLIES, conversation)
            else:
                await self._redis.hset(OPEN_REPLIES, conversation, message_id)

    async def open_replies(self) -> dict[str, int]:
        with self._failing():
            found = await self._redis.hgetall(OPEN_REPLIES)
        return {str(conversation): int(message_id) for conversation, message_id in found.items()}

    async def ping(self) -> None:
        with self._failing():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (redis-py wraps the socket's)."""
    causes: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in causes:
        causes.append(current)
        current = current.__cause__ or current.__context__
    return causes


def _payload(turn: Turn, now: float) -> str:
    if not isinstance(turn.role, str) or not isinstance(turn.content, str):
        raise TypeError(f"a turn's role and content must be text, not {turn!r}")
    body: dict[str, Any] = {"role": turn.role, "content": turn.content, "ref": turn.ref, "at": now}
    if turn.reasoning:
        body["reasoning"] = turn.reasoning
    if turn.images:  # kept in the turn's own entry: written and removed with it
        body["images"] = [[image.filename, image.base64] for image in turn.images]
    return json.dumps(body, ensure_ascii=False)


def _turn(member: object) -> Turn:
    id, _, payload = str(member).partition(":")
    body = json.loads(payload)
    images = tuple(StoredImage(name, data) for name, data in body.get("images", ()))
    return Turn(
        body["role"], body["content"], int(id), body.get("ref"), body.get("reasoning", ""), images
    )


def _state(fields: Mapping[Any, Any]) -> ConversationState:
    return ConversationState(
        summary=fields.get("summary", ""),
        summary_upto=int(fields.get("summary_upto", 0)),
        window_start=int(fields.get("window_start", 0)),
        model=fields.get("model"),
        system_prompt=fields.get("system_prompt"),
        epoch=int(fields.get("epoch", 0)),
        summary_at=float(fields.get("summary_at", 0.0)),
    )


def _fields(state: ConversationState) -> tuple[dict[FieldT, EncodableT], list[str]]:
    """The hash fields to set for ``state`` and those to delete (settings that are None).
    The epoch is not among them: only the clear script writes it."""
    fields: dict[FieldT, EncodableT] = {
        "summary": state.summary,
        "summary_upto": state.summary_upto,
        "window_start": state.window_start,
        "summary_at": repr(state.summary_at),
        "updated_at": repr(time.time()),
    }
    unset = []
    for name, value in (("model", state.model), ("system_prompt", state.system_prompt)):
        if value is None:
            unset.append(name)
        else:
            fields[name] = value
    return fields, unset
