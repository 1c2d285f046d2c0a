"""Log lines as ``time level logger event=... key=value``; secrets never reach the output."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable


class RedactSecrets(logging.Filter):
    """Replace any secret (the Discord token) in a record's final text with ``[redacted]``.

    discord.py does not log the token, but an exception text or a URL might carry it: this is
    the last line of defence, applied to every handler's output.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for secret in self.secrets:
            cleaned = cleaned.replace(secret, "[redacted]")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            for secret in self.secrets:
                text = text.replace(secret, "[redacted]")
            record.exc_text, record.exc_info = text, None
        return True


_FIELD = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")


def parse_fields(message: str) -> dict[str, str]:
    """The ``key=value`` pairs of a log message (quoted values unquoted)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(message):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``LOG_FORMAT=json``), with the message's key=value fields
    lifted to the top level so log tools can filter on them."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in parse_fields(message).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class DropVoiceWarnings(logging.Filter):
    """Drop discord.py's "PyNaCl/davey is not installed, voice will NOT be supported" warnings.

    The bot never joins voice channels, so the missing voice libraries are expected: the
    warning only makes people think something is broken.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


#: The handlers the last configure_logging installed: closed when it is called again.
_installed: list[logging.Handler] = []


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name.upper()]


def configure_logging(
    level: str = "INFO",
    *,
    json_format: bool = False,
    secrets: Iterable[str] = (),
    log_file: str = "",
    terminal_level: str | None = None,
) -> None:
    """Log to stderr at ``level`` (or ``terminal_level`` if that is higher: the console chat
    keeps the terminal for the conversation) and, with ``log_file``, everything at ``level``
    to that file as well. Every handler redacts the secrets."""
    formatter: logging.Formatter = (
        JsonFormatter()
        if json_format
        else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    redact = RedactSecrets(secrets)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(max(_level(level), _level(terminal_level or level)))
    handlers: list[logging.Handler] = [terminal]
    if log_file:
        # Appended to, never truncated: a restart must not erase why the last run ended.
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redact)
    for old in _installed:
        old.close()
    _installed[:] = handlers
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    # discord.py is chatty at INFO about gateway internals; keep its warnings and errors.
    logging.getLogger("discord").setLevel(max(_level(level), logging.INFO))
    client_log = logging.getLogger("discord.client")
    for old_filter in [f for f in client_log.filters if isinstance(f, DropVoiceWarnings)]:
        client_log.removeFilter(old_filter)
    client_log.addFilter(DropVoiceWarnings())
