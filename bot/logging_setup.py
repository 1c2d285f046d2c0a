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


def configure_logging(
    level: str = "INFO", *, json_format: bool = False, secrets: Iterable[str] = ()
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_format
        else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py is chatty at INFO about gateway internals; keep its warnings and errors.
    logging.getLogger("discord").setLevel(max(logging.getLevelName(level), logging.INFO))
