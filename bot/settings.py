"""Configuration: one frozen object, built once from the environment and validated at start-up."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    history_store: str = DEFAULT_HISTORY_STORE
    edit_interval: float = 1.0
    ollama_keep_alive: str | float | None = None
    ollama_options: Mapping[str, Any] = field(default_factory=dict)
    ollama_think: bool = False
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

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or not value.strip():
                return None
            return value.strip()

        values: dict[str, Any] = {}
        if (token := get("DISCORD_TOKEN")) is not None:
            values["discord_token"] = token
        if (url := get("OLLAMA_URL")) is not None:
            values["ollama_url"] = _parse_url("OLLAMA_URL", url)
        if (model := get("OLLAMA_MODEL")) is not None:
            values["ollama_model"] = model
        if (prompt := env.get("SYSTEM_PROMPT")) is not None and prompt.strip():
            # Keep the prompt as written; `.env` cannot hold real newlines, so "\n" is one.
            values["system_prompt"] = prompt.strip().replace("\\n", "\n")
        if (store := get("HISTORY_STORE")) is not None:
            values["history_store"] = _parse_store("HISTORY_STORE", store)
        if (interval := get("EDIT_INTERVAL")) is not None:
            values["edit_interval"] = _parse_float("EDIT_INTERVAL", interval, minimum=0.0)
        if (keep_alive := get("OLLAMA_KEEP_ALIVE")) is not None:
            values["ollama_keep_alive"] = _parse_keep_alive("OLLAMA_KEEP_ALIVE", keep_alive)
        if (options := get("OLLAMA_OPTIONS")) is not None:
            values["ollama_options"] = _parse_options("OLLAMA_OPTIONS", options)
        if (think := get("OLLAMA_THINK")) is not None:
            values["ollama_think"] = _parse_bool("OLLAMA_THINK", think)
        if (slots := get("MAX_CONCURRENT")) is not None:
            values["max_concurrent"] = _parse_int("MAX_CONCURRENT", slots, minimum=1)
        if (limit := get("QUEUE_LIMIT")) is not None:
            values["queue_limit"] = _parse_int("QUEUE_LIMIT", limit, minimum=1)
        if (limit := get("CONTEXT_TOKENS")) is not None:
            values["context_tokens"] = _parse_int("CONTEXT_TOKENS", limit, minimum=512)
        if (limit := get("MAX_INPUT_CHARS")) is not None:
            values["max_input_chars"] = _parse_int("MAX_INPUT_CHARS", limit, minimum=1)
        if (timeout := get("OLLAMA_CONNECT_TIMEOUT")) is not None:
            values["connect_timeout"] = _parse_float("OLLAMA_CONNECT_TIMEOUT", timeout, minimum=0.1)
        if (timeout := get("OLLAMA_READ_TIMEOUT")) is not None:
            values["read_timeout"] = _parse_float("OLLAMA_READ_TIMEOUT", timeout, minimum=1.0)
        if (intent := get("MESSAGE_CONTENT_INTENT")) is not None:
            values["message_content_intent"] = _parse_bool("MESSAGE_CONTENT_INTENT", intent)
        if (fmt := get("LOG_FORMAT")) is not None:
            if fmt.lower() not in {"text", "json"}:
                raise ConfigError(f"LOG_FORMAT must be text or json, not {fmt!r}")
            values["log_format"] = fmt.lower()
        if (log_file := get("LOG_FILE")) is not None:
            values["log_file"] = _parse_log_file("LOG_FILE", log_file)
        if (auto_pull := get("AUTO_PULL")) is not None:
            values["auto_pull"] = _parse_bool("AUTO_PULL", auto_pull)
        if (host := get("HEALTH_HOST")) is not None:
            values["health_host"] = host
        if (port := get("HEALTH_PORT")) is not None:
            values["health_port"] = _parse_int("HEALTH_PORT", port, minimum=0)
            if values["health_port"] > 65535:
                raise ConfigError(f"HEALTH_PORT must be a port number (0 disables), not {port!r}")
        if (grace := get("SHUTDOWN_GRACE")) is not None:
            values["shutdown_grace"] = _parse_float("SHUTDOWN_GRACE", grace, minimum=0.0)
        for name in (
            "ADMIN_USER_IDS",
            "ALLOWED_CHANNEL_IDS",
            "ALLOWED_ROLE_IDS",
            "ALLOWED_USER_IDS",
            "BLOCKED_USER_IDS",
            "BLOCKED_ROLE_IDS",
        ):
            if (ids := get(name)) is not None:
                values[name.lower()] = parse_id_list(name, ids)
        if (dms := get("ALLOW_DMS")) is not None:
            values["allow_dms"] = _parse_bool("ALLOW_DMS", dms)
        if (reset := get("RESET_REQUIRES_ADMIN")) is not None:
            values["reset_requires_admin"] = _parse_bool("RESET_REQUIRES_ADMIN", reset)
        if (level := get("LOG_LEVEL")) is not None:
            level = level.upper()
            if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
                raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
            values["log_level"] = level
        return cls(**values)

    def describe(self) -> str:
        """A one-line summary for the start-up log; the token is never part of it."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "discord_token"}
        return " ".join(f"{name}={value!r}" for name, value in shown.items())


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
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(
            f"{name} must be an http(s) URL such as http://localhost:11434, not {value!r}"
        )
    return value.rstrip("/")


def _parse_store(name: str, value: str) -> str:
    if value == "memory://" or value.startswith("sqlite:///"):
        if value.startswith("sqlite:///") and len(value) == len("sqlite:///"):
            raise ConfigError(
                f"{name} needs a file path after sqlite:///, e.g. sqlite:///data/history.db"
            )
        return value
    raise ConfigError(f"{name} must be sqlite:///path/to/file.db or memory://, not {value!r}")


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
