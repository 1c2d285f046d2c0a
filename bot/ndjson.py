"""Incremental NDJSON decoding with our own byte buffer.

Ollama flushes one JSON object per line, but TCP may split a line across reads, merge several
lines into one read, or cut a multibyte UTF-8 character in two. aiohttp's ``readline`` also has
a line-length cap (128 KiB by default) that a large final chunk can exceed. So we split bytes
ourselves and only decode complete lines.
"""

from __future__ import annotations

from typing import Any

import orjson

# The Go client's bufio.Scanner allows lines up to 8,000,000 bytes; so do we.
MAX_LINE_BYTES = 8_000_000


class NdjsonError(ValueError):
    """The byte stream is not valid NDJSON (a line is not a JSON object, or is too long).

    ``parsed`` holds the objects of the lines before the bad one that arrived in the same
    read: they are valid, and a partial answer must not be lost with them."""

    def __init__(self, message: str, parsed: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.parsed: list[dict[str, Any]] = parsed or []


class NdjsonDecoder:
    """Feed raw reads with :meth:`feed`; it yields each complete JSON object.

    Call :meth:`finish` at EOF: a final line without ``\\n`` is decoded then (Ollama's
    ``application/json`` replies have no trailing newline).
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes
        # How far the buffer is known to hold no newline: a long line arriving in many reads
        # is then scanned once, not once per read.
        self._scanned = 0

    @property
    def pending(self) -> bytes:
        """Bytes received after the last newline (a partial line)."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add one read; return the objects of every line it completed, in order."""
        self._buffer += data
        objects: list[dict[str, Any]] = []
        start = 0
        search_from = self._scanned
        while (end := self._buffer.find(b"\n", search_from)) != -1:
            line = bytes(self._buffer[start:end])
            start = search_from = end + 1
            if line.strip():
                try:
                    objects.append(self._decode(line))
                except NdjsonError as exc:
                    del self._buffer[:start]
                    self._scanned = 0
                    exc.parsed = objects
                    raise
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if len(self._buffer) > self._max:
            raise NdjsonError(f"a line is longer than {self._max} bytes", objects)
        return objects

    def finish(self) -> list[dict[str, Any]]:
        """Decode what is left at EOF, if anything."""
        line = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return [self._decode(line)] if line.strip() else []

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any]:
        try:
            obj = orjson.loads(line)  # bytes in, no decode step: the per-token path
        except orjson.JSONDecodeError as exc:  # also invalid UTF-8
            preview = line[:120].decode("utf-8", "replace")
            raise NdjsonError(f"not a JSON line: {preview!r} ({exc})") from None
        if not isinstance(obj, dict):
            raise NdjsonError(f"expected a JSON object per line, got {type(obj).__name__}")
        return obj
