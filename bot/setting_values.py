"""How each setting's text becomes a value. Every error names the variable and the value, so
that a bad `.env` line is found at once."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


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


def backends(name: str, value: str) -> tuple[tuple[str, int], ...]:
    """One URL, or several separated by commas, each optionally with its slots:
    ``http://gpu1:11434#4,http://gpu2:11434#2``. Without ``#``, 0: decided with
    MAX_CONCURRENT (see :meth:`Settings.from_env`)."""
    backends: list[tuple[str, int]] = []
    for entry in (e.strip() for e in value.split(",")):
        url, _, slots = entry.partition("#")
        if not slots:
            backends.append((_parse_url(name, url), 0))
        elif slots.isdigit() and int(slots) >= 1:
            backends.append((_parse_url(name, url), int(slots)))
        else:
            raise ConfigError(
                f"{name}: after # comes how many replies that server makes at once (a number "
                f"from 1), not {slots!r} in {entry!r}"
            )
    if len({url for url, _ in backends}) != len(backends):
        raise ConfigError(f"{name} lists a server twice: {value!r}")
    return tuple(backends)


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


def store(name: str, value: str) -> str:
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


def log_file(name: str, value: str) -> str:
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


def boolean(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


_DURATION_UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")


def keep_alive(name: str, value: str) -> str | float:
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


def options(name: str, value: str) -> Mapping[str, Any]:
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


def text(name: str, value: str) -> str:
    return value


def prompt(name: str, value: str) -> str:
    # `.env` cannot hold real newlines, so "\n" written there is one.
    return value.replace("\\n", "\n")


def number(minimum: float) -> Parser:
    return lambda name, value: _parse_float(name, value, minimum=minimum)


def whole(minimum: int) -> Parser:
    return lambda name, value: _parse_int(name, value, minimum=minimum)


def choice(*choices: str) -> Parser:
    def parse(name: str, value: str) -> str:
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        listed = f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise ConfigError(f"{name} must be {listed}, not {value!r}")

    return parse


def small_ids(name: str, value: str) -> frozenset[int]:
    """Small numbers separated by commas (shard ids)."""
    entries = value.replace(",", " ").split()
    if not entries or not all(entry.isdigit() for entry in entries):
        raise ConfigError(f"{name} must list shard numbers such as 0,1, not {value!r}")
    return frozenset(int(entry) for entry in entries)


def port(name: str, value: str) -> int:
    port = _parse_int(name, value, minimum=0)
    if port > 65535:
        raise ConfigError(f"{name} must be a port number (0 disables), not {value!r}")
    return port


# Every variable, the Settings field it fills, and how its value is read.
