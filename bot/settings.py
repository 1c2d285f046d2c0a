"""Configuration: one frozen object, built once from the environment and validated at start-up."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_OLLAMA_URL = "http://localhost:11434"
DEFAULT_MODEL = "llama3.2"
DEFAULT_HISTORY_STORE = "sqlite:///data/history.db"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the bot. Build it with :meth:`from_env`; field names mirror the variables."""

    discord_token: str = field(default="", repr=False)  # never printed: repr hides it
    ollama_url: str = DEFAULT_OLLAMA_URL
    ollama_model: str = DEFAULT_MODEL
    system_prompt: str = ""
    history_store: str = field(default=DEFAULT_HISTORY_STORE, repr=False)  # may hold a password
    edit_interval: float = 1.0
    ollama_keep_alive: str | float | None = None
    ollama_options: Mapping[str, Any] = field(default_factory=dict)
    thinking: str = "hide"  # THINKING: hide (reason, answer shown, reasoning on request) or off
    max_reply_messages: int = 4
    image_max_side: int = 1024
    max_images: int = 4
    image_history_turns: int = 2
    max_attachment_bytes: int = 10_000_000
    max_text_attachment_chars: int = 20_000
    shard_count: int | None = None  # SHARD_COUNT: run as a sharded bot (None: one connection)
    shard_ids: frozenset[int] = frozenset()  # SHARD_IDS: this process's shards (empty: all)
    context_tokens: int = 8192
    max_concurrent: int = 1
    queue_limit: int = 25
    max_input_chars: int = 8000
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    message_content_intent: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: str = ""  # empty: no log file
    auto_pull: bool = True
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    shutdown_grace: float = 8.0
    admin_user_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    blocked_user_ids: frozenset[int] = frozenset()
    blocked_role_ids: frozenset[int] = frozenset()
    allow_dms: bool = True
    reset_requires_admin: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping with the same names as `.env` (e.g. ``os.environ``).

        Blank values count as unset, so an `.env` copied from `.env.example` with empty
        lines keeps the defaults. The token is not required here: ``python -m bot`` checks it,
        the console mode does not need it.
        """

        values: dict[str, Any] = {}
        for name, (field_name, parse) in _PARSERS.items():
            raw = env.get(name)
            if raw is not None and raw.strip():
                values[field_name] = parse(name, raw.strip())
        if values.get("shard_ids") and values.get("shard_count") is None:
            raise ConfigError("SHARD_IDS needs SHARD_COUNT (how many shards the bot has in all)")
        if any(i >= values.get("shard_count", 0) for i in values.get("shard_ids", ())):
            raise ConfigError(
                f"SHARD_IDS must be below SHARD_COUNT ({values['shard_count']}): shard ids count "
                f"from 0, not {sorted(values['shard_ids'])}"
            )
        legacy = env.get("OLLAMA_THINK", "").strip()
        if legacy and "thinking" not in values:
            # The setting THINKING replaced: true let models reason, false asked them not to.
            values["thinking"] = "hide" if _parse_bool("OLLAMA_THINK", legacy) else "off"
        return cls(**values)

    def think_field(self, model_can_think: bool) -> bool | None:
        """The ``think`` request field: only for models that can think (others refuse it);
        for them, whether to reason first (THINKING=hide) or answer at once (off)."""
        if not model_can_think:
            return None
        return self.thinking != "off"

    def resolve(self, model: str | None, system_prompt: str | None) -> tuple[str, str]:
        """The model and system prompt a conversation uses: its own, else the defaults."""
        return (
            model or self.ollama_model,
            system_prompt if system_prompt is not None else self.system_prompt,
        )

    def describe(self) -> str:
        """A one-line summary for the start-up log; the token is never part of it."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "discord_token"}
        shown["history_store"] = shown_url(self.history_store)  # a Redis password stays hidden
        return " ".join(f"{name}={value!r}" for name, value in shown.items())


def shown_url(url: str) -> str:
    """``url`` fit for logs and error messages: any password replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    # "redis://secret@host" sends "secret" as the password too: hide all of it.
    user = f"{parts.username}:" if parts.password is not None and parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def parse_id_list(name: str, value: str) -> frozenset[int]:
    """Discord ids separated by commas or spaces; a bad entry names the variable and value."""
    ids: set[int] = set()
    for entry in value.replace(",", " ").split():
        if not entry.isdigit() or not 15 <= len(entry) <= 21:
            raise ConfigError(
                f"{name} must list Discord ids (numbers like 123456789012345678) separated by "
                f"commas; {entry!r} is not one"
            )
        ids.add(int(entry))
    return frozenset(ids)


def _parse_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"{name} must be an http(s) URL such as http://localhost:11434, not {value!r}"
        )
    try:
        parts.port  # noqa: B018 (urllib checks the port only when it is read)
    except ValueError:
        raise ConfigError(
            f"{name} has a port that is not a number from 0 to 65535: {value!r} "
            "(e.g. http://localhost:11434)"
        ) from None
    return value.rstrip("/")


def _parse_store(name: str, value: str) -> str:
    forms = (
        "sqlite:///path/to/file.db, redis://[:password@]host:port/db (rediss:// for TLS) "
        "or memory://"
    )
    if value == "memory://" or value.startswith("sqlite:///"):
        if value.startswith("sqlite:///") and len(value) == len("sqlite:///"):
            raise ConfigError(
                f"{name} needs a file path after sqlite:///, e.g. sqlite:///data/history.db"
            )
        return value
    # Never repeat a password in an error message (it ends up in logs): all before the last
    # "@" goes, even when a password holds a "/" that should have been written %2F.
    scheme, sep, rest = value.partition("://")
    _, at, after = rest.rpartition("@")
    shown = f"{scheme}{sep}***@{after}" if at else value
    if scheme not in {"redis", "rediss"} or not sep:
        raise ConfigError(f"{name} must be {forms}, not {shown!r}")
    example = "e.g. redis://:password@localhost:6379/0"
    try:
        parts = urlsplit(value)
        port = parts.port  # None when left out: Redis's 6379
    except ValueError:  # a port that is not a number, a broken [IPv6] address
        parts, port = urlsplit(""), -1
    if not parts.hostname or (port is not None and not 1 <= port <= 65535):
        raise ConfigError(
            f"{name} needs a host and a port from 1 to 65535, {example} (a password's / ? # @ "
            f"written %2F %3F %23 %40): {shown!r}"
        )
    if parts.path not in {"", "/"} and not parts.path[1:].isdigit():
        raise ConfigError(f"{name} must end with a database number, {example}: {shown!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} takes no ?options or #fragment, {example}: {shown!r}")
    return value


def _parse_log_file(name: str, value: str) -> str:
    """A file the bot can append to. Checked now: a bad path found only when logging starts
    would be a traceback instead of an error that names the variable."""
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{name} must be a file path, but {value!r} is a directory")
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(
            f"{name}: the directory {str(directory)!r} does not exist; create it or pick "
            f"another path (got {value!r})"
        )
    target = path if path.exists() else directory
    if not os.access(target, os.W_OK):
        raise ConfigError(f"{name}: {str(target)!r} is not writable by this user (got {value!r})")
    return value


def _parse_float(name: str, value: str, *, minimum: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise ConfigError(f"{name} must be a number >= {minimum:g}, not {value!r}")
    return number


def _parse_int(name: str, value: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, not {value!r}")
    return number


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


_DURATION_UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")


def _parse_keep_alive(name: str, value: str) -> str | float:
    """Ollama reads a JSON number as seconds and a string as a Go duration ("5m", "-1").

    A bare number is sent as a number: the string "300" is a 400 error from Ollama
    ("time: missing unit in duration").
    """
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be seconds or a duration like 5m, not {value!r}")
        return int(number) if number.is_integer() else number
    body = value.lstrip("+-")
    rest = body
    while rest:
        digits = len(rest) - len(rest.lstrip("0123456789."))
        if digits == 0:
            break
        rest = rest[digits:]
        unit = next(
            (u for u in sorted(_DURATION_UNITS, key=len, reverse=True) if rest.startswith(u)), None
        )
        if unit is None:
            break
        rest = rest[len(unit) :]
    if body and not rest:
        return value
    raise ConfigError(
        f"{name} must be seconds (e.g. 300, -1 to keep loaded) or a duration like 5m or 1h30m, "
        f"not {value!r}"
    )


def _parse_options(name: str, value: str) -> Mapping[str, Any]:
    try:
        options = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f'{name} must be a JSON object such as {{"temperature": 0.7}}: {exc}'
        ) from None
    if not isinstance(options, dict):
        raise ConfigError(
            f'{name} must be a JSON object such as {{"temperature": 0.7}}, not {value!r}'
        )
    return options


Parser = Callable[[str, str], Any]
"""Turns a variable's (stripped, non-empty) value into the setting, or raises ConfigError
naming the variable."""


def _text(name: str, value: str) -> str:
    return value


def _prompt(name: str, value: str) -> str:
    # `.env` cannot hold real newlines, so "\n" written there is one.
    return value.replace("\\n", "\n")


def _number(minimum: float) -> Parser:
    return lambda name, value: _parse_float(name, value, minimum=minimum)


def _whole(minimum: int) -> Parser:
    return lambda name, value: _parse_int(name, value, minimum=minimum)


def _choice(*choices: str) -> Parser:
    def parse(name: str, value: str) -> str:
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        listed = f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise ConfigError(f"{name} must be {listed}, not {value!r}")

    return parse


def _small_ids(name: str, value: str) -> frozenset[int]:
    """Small numbers separated by commas (shard ids)."""
    entries = value.replace(",", " ").split()
    if not entries or not all(entry.isdigit() for entry in entries):
        raise ConfigError(f"{name} must list shard numbers such as 0,1, not {value!r}")
    return frozenset(int(entry) for entry in entries)


def _port(name: str, value: str) -> int:
    port = _parse_int(name, value, minimum=0)
    if port > 65535:
        raise ConfigError(f"{name} must be a port number (0 disables), not {value!r}")
    return port


# Every variable, the Settings field it fills, and how its value is read.
_PARSERS: dict[str, tuple[str, Parser]] = {
    "DISCORD_TOKEN": ("discord_token", _text),
    "OLLAMA_URL": ("ollama_url", _parse_url),
    "OLLAMA_MODEL": ("ollama_model", _text),
    "SYSTEM_PROMPT": ("system_prompt", _prompt),
    "HISTORY_STORE": ("history_store", _parse_store),
    "EDIT_INTERVAL": ("edit_interval", _number(0.0)),
    "OLLAMA_KEEP_ALIVE": ("ollama_keep_alive", _parse_keep_alive),
    "OLLAMA_OPTIONS": ("ollama_options", _parse_options),
    "THINKING": ("thinking", _choice("hide", "off")),
    "MAX_REPLY_MESSAGES": ("max_reply_messages", _whole(1)),
    "IMAGE_MAX_SIDE": ("image_max_side", _whole(64)),
    "MAX_IMAGES": ("max_images", _whole(0)),
    "IMAGE_HISTORY_TURNS": ("image_history_turns", _whole(0)),
    "MAX_ATTACHMENT_BYTES": ("max_attachment_bytes", _whole(1)),
    "MAX_TEXT_ATTACHMENT_CHARS": ("max_text_attachment_chars", _whole(0)),
    "MAX_CONCURRENT": ("max_concurrent", _whole(1)),
    "QUEUE_LIMIT": ("queue_limit", _whole(1)),
    "CONTEXT_TOKENS": ("context_tokens", _whole(512)),
    "MAX_INPUT_CHARS": ("max_input_chars", _whole(1)),
    "OLLAMA_CONNECT_TIMEOUT": ("connect_timeout", _number(0.1)),
    "OLLAMA_READ_TIMEOUT": ("read_timeout", _number(1.0)),
    "MESSAGE_CONTENT_INTENT": ("message_content_intent", _parse_bool),
    "LOG_FORMAT": ("log_format", _choice("text", "json")),
    "LOG_FILE": ("log_file", _parse_log_file),
    "AUTO_PULL": ("auto_pull", _parse_bool),
    "HEALTH_HOST": ("health_host", _text),
    "HEALTH_PORT": ("health_port", _port),
    "SHUTDOWN_GRACE": ("shutdown_grace", _number(0.0)),
    **{
        name: (name.lower(), parse_id_list)
        for name in (
            "ADMIN_USER_IDS",
            "ALLOWED_CHANNEL_IDS",
            "ALLOWED_ROLE_IDS",
            "ALLOWED_USER_IDS",
            "BLOCKED_USER_IDS",
            "BLOCKED_ROLE_IDS",
        )
    },
    "ALLOW_DMS": ("allow_dms", _parse_bool),
    "RESET_REQUIRES_ADMIN": ("reset_requires_admin", _parse_bool),
    "LOG_LEVEL": ("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    "SHARD_COUNT": ("shard_count", _whole(1)),
    "SHARD_IDS": ("shard_ids", _small_ids),
}
