"""A faithful fake Ollama HTTP server for tests (see docs/ollama-protocol.md and
docs/testing.md#fake-ollama).

Why it exists: no real Ollama server can run on the test machines, yet the bot's client code must
be exercised against the real wire protocol (NDJSON framing, Go JSON escaping, headers held back
during model load, mid-stream errors, abrupt drops...). Mocks at the Python level would hide
exactly the bugs we care about, so this fake speaks real HTTP on 127.0.0.1.

Why its own thread and event loop: SimCord virtualises time on the test's event loop (and patches
``time.monotonic`` for code running in the bot's scope). A fake sharing that loop would see its
sleeps frozen or skipped. So the server runs in a daemon thread, in a fresh ``contextvars``
context, on an event loop whose clock is ``time.perf_counter`` (which SimCord does not touch).

Typical use::

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.queue(Reply(tokens=["Hi", " there"]))
        ...  # point the client at fake.url
        assert fake.chat_requests[0]["messages"][-1]["content"] == "hello"

Run it in the foreground with ``python -m tests.fake_ollama --port 11434 --model llama3.2``.

Simplifications are listed in :class:`FakeOllama`'s docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import math
import random
import re
import signal
import string
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from aiohttp import web
from PIL import Image

from tests.threaded_server import ThreadedServer

__all__ = [
    "IMAGE_TOKENS",
    "FakeOllama",
    "GoDurationError",
    "ImageInfo",
    "RecordedRequest",
    "Reply",
    "go_json",
    "go_time_local",
    "go_time_utc",
    "parse_go_duration",
]

# --------------------------------------------------------------------------------------------
# Wire constants
# --------------------------------------------------------------------------------------------

#: gin's ``c.JSON`` content type: normal replies and validation errors.
JSON_CT = "application/json; charset=utf-8"
#: ``streamResponse`` sets this explicitly for an error raised before the first event
#: (docs/ollama-protocol.md#errors).
JSON_CT_NO_CHARSET = "application/json"
NDJSON_CT = "application/x-ndjson"
#: gin's router errors (404/405) use a bare ``text/plain``.
ROUTER_CT = "text/plain"
#: ``c.String`` (the ``/`` liveness probe).
TEXT_CT = "text/plain; charset=utf-8"

#: Go's ``math.MaxInt64`` nanoseconds: what a negative ``keep_alive`` becomes ("forever").
FOREVER_NS = 2**63 - 1
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * 1_000_000_000  # OLLAMA_KEEP_ALIVE default "5m"
#: net/http sends Content-Length only when the whole body fits its 2048-byte chunking buffer.
_GO_CHUNKING_BUFFER = 2048

QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_ERROR_PREFIX = "an error was encountered while running the model: "
PULL_MISSING_MESSAGE = "pull model manifest: file does not exist"
# Images (docs/ollama-protocol.md#images). The runner's completion handler answers 500
# "Failed to create new sequence: <err>" and NewSequence wraps inputs()'s error in
# "failed to process inputs: <err>" (runner/ollamarunner/runner.go); the server keeps that
# status (llm/server.go returns an api.StatusError).
IMAGE_ERROR_PREFIX = "Failed to create new sequence: failed to process inputs: "
#: model.ErrNoVisionModel (model/model.go): a multimodal architecture without its vision weights.
NO_VISION_DATA_MESSAGE = "this model is missing data required for image input"
#: chatPrompt (server/prompt.go), for the mllama family (llama3.2-vision), per message.
MLLAMA_ONE_IMAGE_MESSAGE = "this model only supports one image while more than one image requested"

# Synthetic costs added to the reported metrics so that numbers look like a real GPU
# (tokens/second around 50) without making the tests actually wait.
_PROMPT_EVAL_NS_PER_TOKEN = 250_000
_EVAL_NS_PER_TOKEN = 20_000_000

#: Prompt tokens one image costs on a vision model: Gemma 3's 256 image tokens per image
#: (``mm_tokens_per_image``; Ollama's gemma3 PostTokenize wraps them in 4 more). Other models
#: differ (qwen2.5vl grows with the resolution); the fake uses this one flat count everywhere
#: (truncation to num_ctx, prompt_eval_count, the prompt cache).
IMAGE_TOKENS = 256
#: The decoders Ollama's runner registers for Go's ``image.Decode`` (model/model.go imports
#: image/jpeg, image/png, x/image/bmp, x/image/tiff and x/image/webp; not image/gif): Go's
#: format name and the magic it sniffs (``?`` matches any byte).
_GO_IMAGE_MAGIC = (
    ("jpeg", b"\xff\xd8"),
    ("png", b"\x89PNG\r\n\x1a\n"),
    ("bmp", b"BM????\x00\x00\x00\x00"),
    ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"),
    ("webp", b"RIFF????WEBPVP8"),
)
#: The Pillow plugins for those formats.
_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")

#: The documented toy tokeniser: words and single punctuation marks.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
#: Default responder's split: each token keeps its leading whitespace.
_WORDISH_RE = re.compile(r"\s*\S+")

# --------------------------------------------------------------------------------------------
# Go encoding helpers
# --------------------------------------------------------------------------------------------

# Go's encoding/json escapes these for HTML safety (SetEscapeHTML defaults to true).
_GO_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_SURROGATES = re.compile("[\ud800-\udfff]")


def _go_numbers(value: Any) -> Any:
    """Turn integral floats into ints, as Go's float64 encoder prints ``2`` rather than ``2.0``."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value


def go_json(value: Any) -> bytes:
    """Encode like Go's ``json.Marshal``: compact, ``<>&`` and U+2028/9 escaped, raw UTF-8.

    Dict insertion order is kept, so callers build dicts in Go struct field order. Lone
    surrogates (which Go would see as invalid UTF-8) become U+FFFD.
    """
    text = json.dumps(_go_numbers(value), ensure_ascii=False, separators=(",", ":"))
    text = _SURROGATES.sub("\ufffd", text.translate(_GO_ESCAPES))
    return text.encode("utf-8")


def go_time_utc(ns: int | None = None) -> str:
    """``time.Now().UTC()`` in RFC3339Nano: ``Z`` suffix, trailing fractional zeros dropped."""
    if ns is None:
        ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def go_time_local(ns: int) -> str:
    """A local time in RFC3339Nano with its UTC offset (``Z`` when the offset is zero), as Go
    prints ``modified_at`` and ``expires_at``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    local = datetime.fromtimestamp(seconds).astimezone()
    digits = f"{frac:09d}".rstrip("0")
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{digits}" if digits else "")
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    if minutes == 0:
        return text + "Z"
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def _go_quote(value: str) -> str:
    """Go's ``%q`` for the printable strings we echo (model names)."""
    return json.dumps(value, ensure_ascii=False)


class GoDurationError(ValueError):
    """A ``time.ParseDuration`` failure; ``str()`` is Go's exact message."""


def _time_quote(value: str) -> str:
    """The ``time`` package's private ``quote``: non-ASCII and control bytes as ``\\xNN``."""
    out = ['"']
    for ch in value:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    out.append('"')
    return "".join(out)


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``: returns nanoseconds or raises :class:`GoDurationError`.

    Ported step by step so that ``"300"`` gives ``time: missing unit in duration "300"`` and
    ``"abc"`` gives ``time: invalid duration "abc"``, exactly as the server answers.
    """
    orig = text
    invalid = GoDurationError("time: invalid duration " + _time_quote(orig))
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or _is_digit(s[0])):
            raise invalid
        i = 0
        while i < len(s) and _is_digit(s[i]):
            i += 1
        pre = i > 0
        whole = int(s[:i]) if pre else 0
        if whole > 2**63:
            raise invalid
        s = s[i:]
        frac, scale, post = 0, 1.0, False
        if s and s[0] == ".":
            s = s[1:]
            j = 0
            while j < len(s) and _is_digit(s[j]):
                j += 1
            post = j > 0
            if post:
                frac, scale = int(s[:j]), float(10**j)
            s = s[j:]
        if not pre and not post:
            raise invalid
        k = 0
        while k < len(s) and not (s[k] == "." or _is_digit(s[k])):
            k += 1
        if k == 0:
            raise GoDurationError("time: missing unit in duration " + _time_quote(orig))
        unit_name, s = s[:k], s[k:]
        unit = _DURATION_UNITS.get(unit_name)
        if unit is None:
            raise GoDurationError(
                f"time: unknown unit {_time_quote(unit_name)} in duration {_time_quote(orig)}"
            )
        if whole > 2**63 // unit:
            raise invalid
        value = whole * unit
        if frac > 0:
            value += int(float(frac) * (float(unit) / scale))
            if value > 2**63:
                raise invalid
        total += value
        if total > 2**63:
            raise invalid
    if neg:
        return -total
    if total > 2**63 - 1:
        raise invalid
    return total


# --------------------------------------------------------------------------------------------
# Go-flavoured JSON request decoding
# --------------------------------------------------------------------------------------------


class _HTTPError(Exception):
    """An ``{"error": message}`` reply; raised anywhere in a handler."""

    def __init__(self, status: int, message: str, content_type: str = JSON_CT) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.content_type = content_type


class _TypeMismatch(Exception):
    """A Go ``UnmarshalTypeError``: remembered, decoding continues, the first one is reported."""


class _GoSyntaxError(ValueError):
    pass


def _go_quote_char(ch: str) -> str:
    """encoding/json's ``quoteChar`` for the (first byte of the) offending character."""
    byte = ch.encode("utf-8", "surrogatepass")[0] if ch else 0
    c = chr(byte)
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    specials = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    specials.update({"\v": "\\v", "\\": "\\\\"})
    if c in specials:
        return f"'{specials[c]}'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if byte < 0x80 or (c.isprintable() and byte not in (0xA0, 0xAD)):
        return f"'{c}'"
    return f"'\\u{byte:04x}'"


def _innermost_container(doc: str, pos: int) -> str:
    """``{`` or ``[``: the container open at ``pos`` (Go words its ``,`` errors by it)."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else "{"


def _go_syntax_message(doc: str, err: json.JSONDecodeError) -> str:
    """Map Python's JSON error to the text of Go's ``SyntaxError`` (the common cases)."""
    pos, msg = err.pos, err.msg
    if pos >= len(doc) or msg.startswith("Unterminated string"):
        return "unexpected EOF"
    if msg.startswith("Invalid \\uXXXX"):
        k = pos + 2
        while k < len(doc) and doc[k] in string.hexdigits and k < pos + 6:
            k += 1
        if k >= len(doc):
            return "unexpected EOF"
        return f"invalid character {_go_quote_char(doc[k])} in \\u hexadecimal character escape"
    if msg.startswith("Invalid \\escape"):
        if pos + 1 >= len(doc):
            return "unexpected EOF"
        return f"invalid character {_go_quote_char(doc[pos + 1])} in string escape code"
    char = _go_quote_char(doc[pos])
    if msg.startswith("Expecting value") and doc[pos] in "ntf":
        literal = {"n": "null", "t": "true", "f": "false"}[doc[pos]]
        for k, expected in enumerate(literal):
            if pos + k >= len(doc):
                return "unexpected EOF"
            if doc[pos + k] != expected:
                got, want = _go_quote_char(doc[pos + k]), _go_quote_char(expected)
                return f"invalid character {got} in literal {literal} (expecting {want})"
    if msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {char} after object key"
    if msg.startswith("Expecting ','"):
        where = (
            "object key:value pair" if _innermost_container(doc, pos) == "{" else "array element"
        )
        return f"invalid character {char} after {where}"
    return f"invalid character {char} looking for beginning of value"


def _reject_constant(name: str) -> Any:
    """Go rejects the NaN/Infinity literals that Python's json accepts."""
    if name == "-Infinity":
        raise _GoSyntaxError("invalid character 'I' in numeric literal")
    raise _GoSyntaxError(f"invalid character '{name[0]}' looking for beginning of value")


def _go_decode(body: bytes) -> Any:
    """gin ``ShouldBindJSON``: decode the first JSON value, ignore trailing bytes.

    An empty (or all-whitespace) body is ``io.EOF``, which the handlers report as
    ``missing request body``; invalid UTF-8 is read as U+FFFD like Go does.
    """
    doc = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not doc:
        raise _HTTPError(400, "missing request body")
    try:
        value, _ = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(doc)
    except json.JSONDecodeError as err:
        raise _HTTPError(400, _go_syntax_message(doc, err)) from None
    except _GoSyntaxError as err:
        raise _HTTPError(400, str(err)) from None
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _mismatch(value: Any, where: str, go_type: str) -> _TypeMismatch:
    kind = _json_kind(value)
    if kind == "number" and go_type == "int" and isinstance(value, float):
        kind = f"number {value!r}"
    return _TypeMismatch(
        f"json: cannot unmarshal {kind} into Go struct field {where} of type {go_type}"
    )


def _fold_fields(obj: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """encoding/json matches keys exactly or case-insensitively; the last duplicate wins."""
    known = set(names)
    folded = {n.lower(): n for n in known}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        canon = key if key in known else folded.get(key.lower())
        if canon is not None:
            out.pop(canon, None)
            out[canon] = value
    return out


def _want(value: Any, kind: type | tuple[type, ...], where: str, go_type: str) -> Any:
    """Type-check one field; JSON ``null`` leaves Go's zero value (returned as ``None``)."""
    if value is None:
        return None
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
    if go_type == "int" and isinstance(value, float):
        ok = False
    if not ok:
        raise _mismatch(value, where, go_type)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_B64_ALPHABET = set(string.ascii_letters + string.digits + "+/")


def _base64_error(text: str) -> str | None:
    """Approximate ``base64.StdEncoding`` validation: ``illegal base64 data at input byte N``."""
    data = text.replace("\r", "").replace("\n", "")
    stripped = data.rstrip("=")
    for i, ch in enumerate(stripped):
        if ch not in _B64_ALPHABET:
            return f"illegal base64 data at input byte {i}"
    if len(data) % 4:
        return f"illegal base64 data at input byte {len(data) - len(data) % 4}"
    if len(data) - len(stripped) > 2:
        return f"illegal base64 data at input byte {len(stripped)}"
    return None


def _decode_object(body: bytes, names: Iterable[str], go_type: str) -> dict[str, Any]:
    """Decode a small request struct (show, pull); field types are not checked further."""
    raw = _go_decode(body)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _HTTPError(
            400, f"json: cannot unmarshal {_json_kind(raw)} into Go value of type {go_type}"
        )
    return _fold_fields(raw, names)


_MESSAGE_FIELDS = (
    "role",
    "content",
    "thinking",
    "images",
    "tool_calls",
    "tool_name",
    "tool_call_id",
)
_STRING_MESSAGE_FIELDS = ("role", "content", "thinking", "tool_name", "tool_call_id")


def _decode_message(raw: Any, errors: list[str]) -> dict[str, Any]:
    if raw is None:
        return {"role": "", "content": ""}
    if not isinstance(raw, dict):
        errors.append(str(_mismatch(raw, "ChatRequest.messages", "api.Message")))
        return {"role": "", "content": ""}
    fields = _fold_fields(raw, _MESSAGE_FIELDS)
    msg: dict[str, Any] = {"role": "", "content": ""}
    for name, value in fields.items():
        try:
            if name in _STRING_MESSAGE_FIELDS:
                msg[name] = _want(value, str, f"Message.messages.{name}", "string") or ""
            elif name == "images":
                images = _want(value, list, "Message.messages.images", "[]api.ImageData") or []
                for image in images:
                    if image is None:
                        continue
                    if not isinstance(image, str):
                        raise _mismatch(image, "Message.messages.images", "api.ImageData")
                    problem = _base64_error(image)
                    if problem:
                        errors.append(problem)
                msg[name] = images
            else:
                msg[name] = value
        except _TypeMismatch as err:
            errors.append(str(err))
    msg["role"] = msg["role"].lower()
    return msg


_THINK_LEVELS = ("high", "medium", "low", "max")


def _decode_think(value: Any) -> bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in _THINK_LEVELS:
            raise _HTTPError(
                400,
                f"invalid think value: {_go_quote(value)} "
                '(must be "high", "medium", "low", "max", true, or false)',
            )
        return value
    raise _HTTPError(
        400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def _decode_keep_alive(value: Any) -> int | None:
    """``api.Duration.UnmarshalJSON``: seconds as a number, or a Go duration string."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _HTTPError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return FOREVER_NS if value < 0 else int(value * 1_000_000_000)
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except GoDurationError as err:
            raise _HTTPError(400, str(err)) from None
        return FOREVER_NS if ns < 0 else ns
    go_type = "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"
    raise _HTTPError(400, f"Unsupported type: '{go_type}'")


_CHAT_FIELDS = (
    "model",
    "messages",
    "stream",
    "format",
    "keep_alive",
    "tools",
    "options",
    "think",
    "truncate",
    "shift",
    "logprobs",
    "top_logprobs",
    "_debug_render_only",
)


def _decode_chat(body: bytes) -> dict[str, Any]:
    """Decode a ChatRequest with Go's error texts; unknown fields are ignored
    (docs/ollama-protocol.md#chat-request)."""
    raw = _go_decode(body)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _HTTPError(
            400, f"json: cannot unmarshal {_json_kind(raw)} into Go value of type api.ChatRequest"
        )
    errors: list[str] = []
    out: dict[str, Any] = {}
    for name, value in _fold_fields(raw, _CHAT_FIELDS).items():
        where = f"ChatRequest.{name}"
        try:
            if name == "model":
                out[name] = _want(value, str, where, "string") or ""
            elif name == "messages":
                items = _want(value, list, where, "[]api.Message") or []
                out[name] = [_decode_message(m, errors) for m in items]
            elif name in ("stream", "truncate", "shift", "logprobs", "_debug_render_only"):
                out[name] = _want(value, bool, where, "bool")
            elif name == "top_logprobs":
                out[name] = _want(value, int, where, "int") or 0
            elif name == "options":
                out[name] = _want(value, dict, where, "map[string]interface {}") or {}
            elif name == "tools":
                tools = _want(value, list, where, "api.Tools") or []
                for tool in tools:
                    if tool is not None and not isinstance(tool, dict):
                        raise _mismatch(tool, where, "api.Tool")
                out[name] = tools
            elif name == "keep_alive":
                out[name] = _decode_keep_alive(value)
            elif name == "think":
                out[name] = _decode_think(value)
            else:  # format: json.RawMessage takes anything
                out[name] = value
        except _TypeMismatch as err:
            errors.append(str(err))
    if errors:
        raise _HTTPError(400, errors[0])
    return out


_INT_OPTIONS = frozenset(
    {
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "draft_num_predict",
    }
)
_FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    }
)


def _check_options(options: dict[str, Any]) -> None:
    """``api.Options.FromMap``: unknown keys ignored, a wrong type is a 500
    (docs/ollama-protocol.md#chat-request)."""
    for key, value in options.items():
        if value is None:
            continue
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _INT_OPTIONS and not numeric:
            raise _HTTPError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and not numeric:
            raise _HTTPError(500, f'option "{key}" must be of type float32')
        if key == "use_mmap" and not isinstance(value, bool):
            raise _HTTPError(500, f'option "{key}" must be of type boolean')
        if key == "stop":
            if not isinstance(value, list):
                raise _HTTPError(500, f'option "{key}" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise _HTTPError(500, f'option "{key}" must be of an array of strings')


def _count_tokens(message: dict[str, Any], *, vision: bool = True) -> int:
    """The documented toy tokeniser, over a message's role, images and content."""
    return len(_message_tokens(message, vision=vision))


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A prompt's token count as the fake counts it on a vision model (for benchmarks comparing
    strategies): each image costs :data:`IMAGE_TOKENS`."""
    return sum(_count_tokens(m) for m in messages)


def _message_tokens(message: dict[str, Any], *, vision: bool = True) -> list[str]:
    """How the fake tokenises a message: every run of word characters (``\\w+``) is one token
    and every other non-space character is one token, over the role then the content. Spaces
    are free. Real tokenisers differ (BPE), but this one has the properties that matter here:
    the count grows with the text, and equal text gives equal tokens (so prefixes match).

    On a vision model each image adds :data:`IMAGE_TOKENS` tokens between the role and the
    content (Ollama puts a message's images before its text), named after the image's bytes:
    the same image again matches the prompt cache, another one does not. A model without
    vision drops the images (docs/ollama-protocol.md#images), so they cost nothing."""
    tokens = _TOKEN_RE.findall(str(message.get("role", "")))
    if vision:
        for image in message.get("images") or ():
            tokens += [_image_token(image)] * IMAGE_TOKENS
    return tokens + _TOKEN_RE.findall(str(message.get("content", "")))


def _image_token(image: Any) -> str:
    data = str(image or "").replace("\r", "").replace("\n", "")
    return f"<image {hashlib.sha256(data.encode()).hexdigest()[:16]}>"


class ImageInfo(NamedTuple):
    """An image a vision model saw: its pixel size and Go's name of its format."""

    width: int
    height: int
    format: str  # "jpeg", "png", "bmp", "tiff" or "webp"


def _go_image_format(raw: bytes) -> str | None:
    """``image.Decode``'s sniffing: the registered format whose magic the bytes start with."""
    for name, magic in _GO_IMAGE_MAGIC:
        head = raw[: len(magic)]
        if len(head) < len(magic):
            continue
        if all(m in (b, 0x3F) for m, b in zip(magic, head, strict=True)):  # 0x3F: "?"
            return name
    return None


def _decode_image(image: str | None) -> ImageInfo | str:
    """What Ollama's runner does with one image of a vision model: Go's ``image.Decode`` over
    the base64-decoded bytes (already validated). Returns the image's size, or Go's error text:
    ``image: unknown format`` when no registered decoder's magic matches, and (the fake's
    simplification) ``unexpected EOF``, what a truncated file gives, when decoding fails."""
    raw = base64.b64decode(str(image or "").replace("\r", "").replace("\n", ""))
    go_format = _go_image_format(raw)
    if go_format is None:
        return "image: unknown format"
    try:
        with Image.open(io.BytesIO(raw), formats=_PILLOW_FORMATS) as img:
            img.load()
            return ImageInfo(img.width, img.height, go_format)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        return "unexpected EOF"


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PromptStats:
    """What one generation's prompt cost: the fake's view of Ollama's KV prompt cache."""

    model: str
    requested: int  # prompt tokens as sent, before any truncation
    total: int  # prompt tokens after context-overflow truncation
    cached: int  # leading tokens shared with the previous prompt on the same model
    evaluated: int  # total - cached (at least 1, as llama.cpp always evaluates the last token)
    # old messages were dropped silently to fit num_ctx (docs/ollama-protocol.md#context)
    truncated: bool
    num_ctx: int
    last_message: str = ""  # the content of the prompt's last message (to tell prompts apart)


# --------------------------------------------------------------------------------------------
# Model names
# --------------------------------------------------------------------------------------------

_DEFAULT_HOST = "registry.ollama.ai"
_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:]{0,349}")


@dataclass(frozen=True)
class _Name:
    """A parsed ``[host/][namespace/]model[:tag]``; ``:latest`` and the library are implied."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """Case-insensitive identity, as ``getExistingName`` compares names."""
        return self.full.lower()

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """``DisplayShortest``: always tagged, host/namespace dropped when default."""
        if self.host.lower() == _DEFAULT_HOST:
            if self.namespace.lower() == "library":
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return self.full


def _parse_name(raw: str) -> _Name | None:
    text = raw.strip().split("@", 1)[0]
    if not text:
        return None
    head, _, last = text.rpartition("/")
    model, sep, tag = last.partition(":")
    if not sep:
        tag = "latest"
    parts = head.split("/") if head else []
    if len(parts) > 2:
        return None
    host, namespace = _DEFAULT_HOST, "library"
    if len(parts) == 1:
        namespace = parts[0]
    elif len(parts) == 2:
        host, namespace = parts
    if not all(_PART_RE.fullmatch(p) for p in (namespace, model, tag)):
        return None
    if not _HOST_RE.fullmatch(host):
        return None
    return _Name(host, namespace, model, tag)


@dataclass
class _Model:
    name: _Name
    modified_ns: int
    thinking: bool = False
    tools: bool = True
    embedding: bool = False
    vision: bool = False
    # A multimodal architecture shipped without its vision weights (gemma3:1b): no "vision"
    # capability, and images fail in the runner (docs/ollama-protocol.md#images).
    no_vision_data: bool = False

    @property
    def mllama(self) -> bool:
        """llama3.2-vision's family: one image per message (server/prompt.go)."""
        return self.vision and self.name.model.lower().startswith("llama3.2-vision")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.key.encode()).hexdigest()

    @property
    def size(self) -> int:
        if self.name.key == f"{_DEFAULT_HOST}/library/llama3.2:latest":
            return 2_019_393_189
        return 1_000_000_000 + int(self.digest[:8], 16) % 4_000_000_000

    def details(self) -> dict[str, Any]:
        family = "bert" if self.embedding else ("qwen3" if "qwen" in self.name.model else "llama")
        if self.mllama:
            family = "mllama"
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }

    def capabilities(self) -> list[str]:
        """In the order of ``Model.Capabilities`` (server/images.go): what the GGUF says
        (completion or embedding, then vision), then what the template says (tools, then
        thinking). Projector-based models (llava) list vision after tools instead."""
        if self.embedding:
            return ["embedding"]
        caps = ["completion"]
        if self.vision:
            caps.append("vision")
        if self.tools:
            caps.append("tools")
        if self.thinking:
            caps.append("thinking")
        return caps


@dataclass
class _Loaded:
    expires_ns: int
    context_length: int


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """Script for one /api/chat response; queued replies are consumed FIFO by chat requests that
    pass validation (load/unload requests with no messages do not consume one)."""

    tokens: list[str] | None = None
    """Content deltas; ``None`` -> the default responder (``"You said: <last user message>"``,
    followed by ``" (and I see N images)"`` when a vision model saw images)."""
    thinking: list[str] | None = None
    """Thinking deltas sent first (``content:""``), only if the request's ``think`` is not
    ``false``. ``None`` -> a default thought on thinking models, nothing on others."""
    done: bool = True
    """``False`` -> the stream ends cleanly after the tokens with no done line (repeat abort)."""
    done_reason: str = "stop"
    final_content: str = ""
    """Content carried on the final ``done:true`` chunk."""
    error_after: int | None = None
    """After this many content tokens, send the runner error line (status stays 200) and end
    cleanly. ``0`` makes it the first line, as servers before the status-preserving
    ``streamResponse`` reported early runner errors; use ``status`` for a current server's real
    HTTP error before the first event. With ``stream:false`` any error is a 500 ``c.JSON``."""
    error_message: str = "unexpected EOF"
    drop_after: int | None = None
    """After this many content tokens, abruptly close the TCP connection (no chunked end)."""
    drop_mid_line: bool = False
    """With ``drop_after``: first write half of the next line's bytes, then drop."""
    hang_after: int | None = None
    """After this many content tokens, go silent with the connection open (a stuck runner)."""
    status: int | None = None
    """Error before the first event: this status, ``{"error": status_message}``."""
    status_message: str = ""
    load_delay: float = 0.0
    """Seconds before headers are sent (cold model load); ``load_duration`` reflects it."""
    token_delay: float = 0.0
    """Seconds between token lines."""
    hang: bool = False
    """Accept the request and never send anything (until the client leaves or the server stops)."""
    write_size: int | None = None
    """Write each line in pieces of this many bytes, each its own write+drain (splits UTF-8)."""
    tool_calls: list[dict[str, Any]] | None = None
    """Complete tool calls, on a ``done:false`` chunk before the final one. Either
    ``{"function": {"name", "arguments"}}`` or the shorthand ``{"name", "arguments"}``; ``id``
    and ``function.index`` are filled in."""
    # Extensions beyond the brief (all optional):
    prompt_eval_delay: float = 0.0
    """Seconds of prompt evaluation after the load, also before headers
    (docs/ollama-protocol.md#stream)."""
    tool_calls_on_final: bool = False
    """Put ``tool_calls`` on the final ``done:true`` chunk instead (native-template path)."""
    # What a proxy in front of Ollama, or a broken one, sends (not Ollama's own behaviour):
    error_body: bytes | None = None
    """With ``status``: this raw body (e.g. a proxy's HTML page) instead of ``{"error"}``."""
    error_content_type: str = "text/html"
    garbage_after: int | None = None
    """After this many content chunks, a line that is not JSON, in the SAME write as every
    line before it (one network read for the client), then the end of the response."""
    mixed_transition: bool = False
    """Carry the last thinking delta and the first content delta in one chunk."""


@dataclass
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any | None
    query: str = ""
    events: list[tuple[str, float]] = field(default_factory=list)
    """Server-side milestones ``(name, time.perf_counter())``: ``received``, ``admitted``,
    ``slot``, ``loaded``, ``first_byte``, ``end``, ``cancelled``, ``dropped``. perf_counter is
    one clock for every thread, so tests can order client observations against these."""
    tokens_sent: int = 0
    """Streamed lines with non-empty ``content`` written so far (benchmarks count tokens)."""
    last_token_at: float | None = None
    """``time.perf_counter()`` once the last such line was written (and drained)."""

    def event_time(self, name: str) -> float | None:
        return next((t for n, t in self.events if n == name), None)


# --------------------------------------------------------------------------------------------
# Internal event stream of one chat generation
# --------------------------------------------------------------------------------------------


@dataclass
class _Line:
    obj: dict[str, Any]


@dataclass
class _Error:
    status: int
    message: str
    line: bool = False
    """Always an NDJSON line, even as the first event (scripted ``error_after``)."""


@dataclass
class _Drop:
    partial: bytes


@dataclass
class _Hang:
    pass


@dataclass
class _Garbage:
    data: bytes


_Event = _Line | _Error | _Drop | _Hang | _Garbage
_Handler = Callable[[web.Request, RecordedRequest], Awaitable[web.StreamResponse]]


@dataclass
class _Chat:
    """Per-request state of one admitted /api/chat."""

    request: web.Request
    rec: RecordedRequest
    model_raw: str
    entry: _Model
    messages: list[dict[str, Any]]
    reply: Reply
    scripted: bool
    stream: bool
    think: bool | str | None
    fmt: Any
    options: dict[str, Any]
    keep_alive_ns: int | None
    logprobs: bool
    top_logprobs: int
    num_ctx: int
    t0: int
    prompt_tokens: int = 0
    context_error: str | None = None
    kept: list[int] = field(default_factory=list)
    """Indices, in the request's messages, of those left after truncation to num_ctx."""
    seen_images: list[list[ImageInfo]] = field(default_factory=list)
    """Per message of the request: the images the model saw."""
    image_error: str | None = None
    """The runner could not take the images: a 500 before the first event."""
    prompt_error: str | None = None
    """chatPrompt failed (after the load): a 500 ``c.JSON``."""
    cold_extra_ns: int = 0
    prompt_real_ns: int = 0
    gen_start_ns: int = 0
    dropped: bool = False
    cancel_counted: bool = False


_METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def _chat_obj(
    model: str,
    created_at: str,
    message: dict[str, Any],
    done: bool,
    done_reason: str | None = None,
    logprobs: list[Any] | None = None,
    metrics: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ChatResponse in Go field order, with ``omitempty`` applied."""
    obj: dict[str, Any] = {
        "model": model,
        "created_at": created_at,
        "message": message,
        "done": done,
    }
    if done_reason:
        obj["done_reason"] = done_reason
    if logprobs:
        obj["logprobs"] = logprobs
    for key in _METRIC_KEYS:
        value = (metrics or {}).get(key, 0)
        if value:
            obj[key] = value
    return obj


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeOllama(ThreadedServer):
    """A fake Ollama server on 127.0.0.1, running in its own thread and event loop.

    Behaviours follow docs/ollama-protocol.md. Simplifications (on purpose):

    - A single model catalogue with fixed details; ``thinking_models``, ``vision_models`` and
      ``no_vision_data_models`` are added to it.
    - Images (docs/ollama-protocol.md#images), as Ollama's new engine treats them: a vision
      model decodes each image of the messages kept after truncation (JPEG, PNG, BMP, TIFF,
      WebP; anything else is a 500 ``image: unknown format``) and records its size in
      ``received_images``; each costs :data:`IMAGE_TOKENS` prompt tokens. A text model drops
      images silently; a ``no_vision_data_models`` model fails with 500. Every decode failure
      past a recognised header reads ``unexpected EOF``.
    - Prompt tokens are counted with ``re.findall(r"\\w+|[^\\w\\s]")`` over each message's role
      and content (no template). Durations are measured plus synthetic per-token costs, and a
      cold load adds ``cold_load_duration`` seconds to ``load_duration`` without sleeping.
    - ``num_parallel`` slots per model; ``max_queue`` bounds requests waiting for a slot.
      Load-only requests (no messages) skip both.
    - ``cancelled`` counts admitted chat requests whose client went away while queued, loading
      or generating. Server shutdown and scripted drops are not counted.
    - aiohttp adds a ``Server`` header that Go does not send.
    """

    def __init__(
        self,
        *,
        models: Iterable[str] = ("llama3.2",),
        thinking_models: Iterable[str] = (),
        vision_models: Iterable[str] = (),
        no_vision_data_models: Iterable[str] = (),
        legacy_not_found: bool = False,
        num_parallel: int = 1,
        max_queue: int = 512,
        version: str = "0.12.6",
        pullable: Iterable[str] = ("llama3.2", "qwen3", "mistral"),
        no_tools_models: Iterable[str] = (),
        embedding_models: Iterable[str] = (),
        cold_load_delay: float = 0.0,
        cold_load_duration: float = 1.0,
        pull_delay: float = 0.0,
        context_length: int = 4096,
        trained_context_length: int = 131072,
        prompt_eval_includes_cached: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.legacy_not_found = legacy_not_found
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.version = version
        self.pullable: set[str] = set(pullable)
        self.cold_load_delay = cold_load_delay
        self.cold_load_duration = cold_load_duration
        self.pull_delay = pull_delay
        self.context_length = context_length
        # /api/show's "<arch>.context_length": what the model was trained for.
        self.trained_context_length = trained_context_length
        # Ollama's prompt cache: by default prompt_eval_count counts only the tokens evaluated
        # after the longest common prefix with the previous prompt on that model (what a
        # client sees from a warm llama.cpp runner); True reports cached + evaluated instead.
        self.prompt_eval_includes_cached = prompt_eval_includes_cached
        self.prompt_stats: list[PromptStats] = []
        # Optional: answers a chat request from its messages when no Reply is queued: a text,
        # a Reply (to script errors for some requests only), or None for "You said: ...".
        self.responder: Callable[[list[dict[str, Any]]], str | Reply | None] | None = None
        self._prompt_cache: dict[str, list[str]] = {}
        self.url = ""

        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.active = 0
        self.waiting = 0

        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._chat_requests: list[dict[str, Any]] = []
        self._received_images: list[list[list[ImageInfo]]] = []
        thinking_models, vision_models = tuple(thinking_models), tuple(vision_models)
        no_vision_data_models = tuple(no_vision_data_models)
        self._thinking = {n.key for n in map(_parse_name, thinking_models) if n}
        self._vision = {n.key for n in map(_parse_name, vision_models) if n}
        self._no_vision_data = {n.key for n in map(_parse_name, no_vision_data_models) if n}
        self._no_tools = {n.key for n in map(_parse_name, no_tools_models) if n}
        self._embedding = {n.key for n in map(_parse_name, embedding_models) if n}
        self._models: dict[str, _Model] = {}
        for name in (
            *models,
            *thinking_models,
            *vision_models,
            *no_vision_data_models,
            *embedding_models,
        ):
            self.add_model(name)
        self._loaded: dict[str, _Loaded] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._rng = random.Random(0)

        self._transports: set[asyncio.Transport] = set()
        self._routes: dict[str, dict[str, _Handler]] = {
            "/": {"GET": self._root, "HEAD": self._root},
            "/api/version": {"GET": self._version, "HEAD": self._version},
            "/api/tags": {"GET": self._tags, "HEAD": self._tags},
            "/api/ps": {"GET": self._ps},
            "/api/show": {"POST": self._show},
            "/api/pull": {"POST": self._pull},
            "/api/chat": {"POST": self._chat},
        }

    # ---------------------------------------------------------------- public API

    name = "fake-ollama"

    def queue(self, *replies: Reply) -> None:
        """Script the next chat responses (thread-safe)."""
        with self._lock:
            self._replies.extend(replies)

    def add_model(self, name: str) -> None:
        """Make a model available ("pulled"); capabilities come from the constructor's sets."""
        parsed = _parse_name(name)
        if parsed is None:
            raise ValueError(f"invalid model name: {name!r}")
        with self._lock:
            if parsed.key in self._models:
                return
            self._models[parsed.key] = _Model(
                name=parsed,
                modified_ns=time.time_ns(),
                thinking=parsed.key in self._thinking,
                tools=parsed.key not in self._no_tools,
                embedding=parsed.key in self._embedding,
                vision=parsed.key in self._vision,
                no_vision_data=parsed.key in self._no_vision_data,
            )

    def remove_model(self, name: str) -> None:
        """Delete a model (requests for it then get 404)."""
        parsed = _parse_name(name)
        if parsed is None:
            return
        with self._lock:
            self._models.pop(parsed.key, None)
            self._loaded.pop(parsed.key, None)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of POST /api/chat requests that passed validation and got a generation slot."""
        with self._lock:
            return list(self._chat_requests)

    @property
    def received_images(self) -> list[list[list[ImageInfo]]]:
        """Parallel to :attr:`chat_requests`: per request, per message as sent, the images the
        model saw, as ``ImageInfo(width, height, format)`` (equal to plain tuples such as
        ``(64, 32, "png")``). Empty for a text model (it drops images), for messages dropped to
        fit num_ctx, and for every message of a request whose images failed."""
        with self._lock:
            return [[list(images) for images in request] for request in self._received_images]

    @property
    def pending_replies(self) -> int:
        with self._lock:
            return len(self._replies)

    def loaded_models(self) -> list[str]:
        """Short names of the models currently loaded (not expired)."""
        now = time.time_ns()
        with self._lock:
            return [
                self._models[k].name.short
                for k, v in self._loaded.items()
                if v.expires_ns > now and k in self._models
            ]

    # ---------------------------------------------------------------- thread and loop

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    def listening(self) -> None:
        self.url = f"http://{self.host}:{self.port}"

    async def closing(self) -> None:
        # Like a server restart: open connections are cut, hung handlers are cancelled.
        for transport in list(self._transports):
            transport.abort()

    # ---------------------------------------------------------------- dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """One route for everything, so 404/405 carry gin's exact text/plain bodies."""
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            json=parsed,
            query=request.query_string,
            events=[("received", time.perf_counter())],
        )
        self.requests.append(rec)
        route = self._routes.get(request.path)
        if route is None:
            return _plain(404, "404 page not found", ROUTER_CT)
        handler = route.get(request.method)
        if handler is None:
            return _plain(405, "405 method not allowed", ROUTER_CT)
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        try:
            return await handler(request, rec)
        except _HTTPError as err:
            return await _send_json(request, err.status, {"error": err.message}, err.content_type)
        finally:
            if transport is not None:
                self._transports.discard(transport)

    # ---------------------------------------------------------------- simple endpoints

    async def _root(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return _plain(200, "Ollama is running", TEXT_CT)

    async def _version(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        return await _send_json(request, 200, {"version": self.version})

    async def _tags(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        with self._lock:
            models = list(self._models.values())
        # ListHandler sorts by modified time (seconds), newest first, stable.
        models.sort(key=lambda m: m.modified_ns // 1_000_000_000, reverse=True)
        listing = [
            {
                "name": m.name.short,
                "model": m.name.short,
                "modified_at": go_time_local(m.modified_ns),
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
            }
            for m in models
        ]
        return await _send_json(request, 200, {"models": listing})

    async def _ps(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        now = time.time_ns()
        with self._lock:
            rows = [
                (self._models[k], v)
                for k, v in self._loaded.items()
                if k in self._models and v.expires_ns > now
            ]
        rows.sort(key=lambda row: row[1].expires_ns, reverse=True)
        listing = [
            {
                "name": m.name.short,
                "model": m.name.short,
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
                "expires_at": go_time_local(min(v.expires_ns, now + FOREVER_NS)),
                "size_vram": m.size,
                "context_length": v.context_length,
            }
            for m, v in rows
        ]
        return await _send_json(request, 200, {"models": listing})

    async def _show(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        fields = _decode_object(rec.body, ("model", "name", "verbose"), "api.ShowRequest")
        name_raw = fields.get("model") or fields.get("name") or ""
        if not isinstance(name_raw, str) or not name_raw:
            raise _HTTPError(400, "model is required")
        name = _parse_name(name_raw)
        entry = self._find(name) if name else None
        if entry is None:
            shown = name.short if name else name_raw
            raise _HTTPError(404, f"model '{shown}' not found")
        template = (
            "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
            "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
            "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        parameters = 'stop                           "<|eot_id|>"'
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {entry.name.short}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{entry.digest}\n"
            f'TEMPLATE """{template}"""\n'
            "PARAMETER stop <|eot_id|>\n"
        )
        body = {
            "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "details": entry.details(),
            "model_info": {
                "general.architecture": "llama",
                "llama.context_length": self.trained_context_length,
            },
            "capabilities": entry.capabilities(),
            "modified_at": go_time_local(entry.modified_ns),
        }
        return await _send_json(request, 200, body)

    # ---------------------------------------------------------------- /api/pull

    def _is_pullable(self, name: _Name) -> bool:
        """An entry without a tag allows any tag of that model; with a tag, only that one."""
        for entry in self.pullable:
            allowed = _parse_name(entry)
            if allowed is None:
                continue
            same_model = (allowed.host, allowed.namespace, allowed.model) == (
                name.host,
                name.namespace,
                name.model,
            )
            if same_model and (":" not in entry.rsplit("/", 1)[-1] or allowed.tag == name.tag):
                return True
        return False

    async def _pull_steps(self, name: _Name) -> AsyncIterator[dict[str, Any]]:
        """Progress events; an ``{"error": ...}`` dict ends the stream."""
        yield {"status": "pulling manifest"}
        existing = self._find(name)
        if existing is None and not self._is_pullable(name):
            await asyncio.sleep(self.pull_delay)
            yield {"error": PULL_MISSING_MESSAGE}
            return
        model = existing or _Model(name=name, modified_ns=time.time_ns())
        digest = "sha256:" + model.digest
        status = f"pulling {model.digest[:12]}"
        total = model.size
        if existing is not None:
            yield {"status": status, "digest": digest, "total": total, "completed": total}
        else:
            for step in range(5):
                await asyncio.sleep(self.pull_delay)
                line: dict[str, Any] = {"status": status, "digest": digest, "total": total}
                completed = total * step // 4
                if completed:
                    line["completed"] = completed
                yield line
        for status_text in ("verifying sha256 digest", "writing manifest"):
            await asyncio.sleep(self.pull_delay)
            yield {"status": status_text}
        self.add_model(name.full)
        yield {"status": "success"}

    async def _pull(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        fields = _decode_object(
            rec.body, ("model", "name", "stream", "insecure"), "api.PullRequest"
        )
        name_raw = fields.get("model") or fields.get("name") or ""
        name = _parse_name(name_raw) if isinstance(name_raw, str) else None
        if name is None:
            raise _HTTPError(400, "invalid model name")
        if fields.get("stream") is False:
            last: dict[str, Any] = {}
            async for step in self._pull_steps(name):
                last = step
            if "error" in last:
                raise _HTTPError(500, last["error"])
            return await _send_json(request, 200, last)
        resp = _ndjson_response()
        async for step in self._pull_steps(name):
            if not resp.prepared:
                await resp.prepare(request)
            # A mid-stream error goes through json.Encoder: same escaping, trailing newline.
            await resp.write(go_json(step) + b"\n")
            await request.writer.drain()
        await resp.write_eof()
        return resp

    # ---------------------------------------------------------------- /api/chat

    def _find(self, name: _Name | None) -> _Model | None:
        if name is None:
            return None
        with self._lock:
            return self._models.get(name.key)

    def _is_loaded(self, entry: _Model) -> bool:
        loaded = self._loaded.get(entry.name.key)
        return loaded is not None and loaded.expires_ns > time.time_ns()

    def _expiry(self, keep_alive_ns: int | None) -> int:
        ka = DEFAULT_KEEP_ALIVE_NS if keep_alive_ns is None else keep_alive_ns
        return FOREVER_NS if ka >= FOREVER_NS else time.time_ns() + ka

    def _mark_loaded(self, entry: _Model, keep_alive_ns: int | None, num_ctx: int) -> None:
        # While a keep_alive:0 request runs the model stays loaded; it unloads at the end.
        expiry = self._expiry(DEFAULT_KEEP_ALIVE_NS if keep_alive_ns == 0 else keep_alive_ns)
        with self._lock:
            self._loaded[entry.name.key] = _Loaded(expiry, num_ctx)

    def _release_model(self, entry: _Model, keep_alive_ns: int | None) -> None:
        """Each request resets the expiry to its keep_alive; 0 unloads after the request."""
        with self._lock:
            loaded = self._loaded.get(entry.name.key)
            if loaded is None:
                return
            if keep_alive_ns == 0:
                del self._loaded[entry.name.key]
            else:
                loaded.expires_ns = self._expiry(keep_alive_ns)

    def _next_reply(self, messages: list[dict[str, Any]]) -> tuple[Reply, bool]:
        with self._lock:
            if self._replies:
                return self._replies.popleft(), True
        if self.responder is not None:
            answer = self.responder(messages)
            if isinstance(answer, Reply):
                return answer, True
            if isinstance(answer, str):
                return Reply(tokens=_WORDISH_RE.findall(answer)), True
        return Reply(), False

    def _semaphore(self, entry: _Model) -> asyncio.Semaphore:
        sem = self._semaphores.get(entry.name.key)
        if sem is None:
            sem = self._semaphores[entry.name.key] = asyncio.Semaphore(self.num_parallel)
        return sem

    def _note_cancel(self, ctx: _Chat) -> None:
        """Count a client disconnect once; shutdown and scripted drops do not count."""
        if ctx.dropped or ctx.cancel_counted or self._stopping:
            return
        ctx.cancel_counted = True
        self.cancelled += 1
        ctx.rec.events.append(("cancelled", time.perf_counter()))

    async def _chat(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        """ChatHandler: checks in Ollama's order (docs/ollama-protocol.md#errors), then schedule
        and generate."""
        t0 = time.perf_counter_ns()
        req = _decode_chat(rec.body)
        top_logprobs = req.get("top_logprobs") or 0
        if not 0 <= top_logprobs <= 20:
            raise _HTTPError(400, "top_logprobs must be between 0 and 20")
        model_raw: str = req.get("model") or ""
        if not model_raw.strip():
            raise _HTTPError(400, "model is required")
        name = _parse_name(model_raw)
        if name is None:
            raise _HTTPError(400, "invalid model name")
        entry = self._find(name)
        if entry is None:
            if self.legacy_not_found:
                raise _HTTPError(404, f'model "{model_raw}" not found, try pulling it first')
            raise _HTTPError(404, f"model '{model_raw}' not found")
        messages: list[dict[str, Any]] = req.get("messages") or []
        keep_alive_ns: int | None = req.get("keep_alive")
        if not messages and keep_alive_ns == 0:
            with self._lock:
                self._loaded.pop(entry.name.key, None)
            message = {"role": "assistant", "content": ""}
            obj = _chat_obj(model_raw, go_time_utc(), message, True, "unload")
            return await _send_json(request, 200, obj)
        think = req.get("think")
        if think not in (None, False) and not entry.thinking:
            raise _HTTPError(400, f"{_go_quote(model_raw)} does not support thinking")
        if entry.embedding:
            raise _HTTPError(400, f"{_go_quote(model_raw)} does not support chat")
        if req.get("tools") and not entry.tools:
            raise _HTTPError(400, f"{entry.name.full} does not support tools")
        options: dict[str, Any] = req.get("options") or {}
        _check_options(options)
        num_ctx = int(options.get("num_ctx") or self.context_length)
        if not messages:
            return await self._load_only(request, rec, entry, model_raw, keep_alive_ns, num_ctx)

        sem = self._semaphore(entry)
        if sem.locked() and self.waiting >= self.max_queue:
            raise _HTTPError(503, QUEUE_FULL_MESSAGE)
        reply, scripted = self._next_reply(messages)
        ctx = _Chat(
            request=request,
            rec=rec,
            model_raw=model_raw,
            entry=entry,
            messages=messages,
            reply=reply,
            scripted=scripted,
            stream=req.get("stream") is not False,
            think=think,
            fmt=req.get("format"),
            options=options,
            keep_alive_ns=keep_alive_ns,
            logprobs=bool(req.get("logprobs")),
            top_logprobs=top_logprobs,
            num_ctx=num_ctx,
            t0=t0,
        )
        self._fit_context(ctx, truncate=req.get("truncate"), shift=req.get("shift"))
        rec.events.append(("admitted", time.perf_counter()))
        self.waiting += 1
        try:
            await sem.acquire()
        except asyncio.CancelledError:
            self._note_cancel(ctx)
            raise
        finally:
            self.waiting -= 1
        self.active += 1
        rec.events.append(("slot", time.perf_counter()))
        body = _go_decode(rec.body)  # Go's view: trailing bytes after the object are ignored
        with self._lock:
            self._chat_requests.append(body)
            self._received_images.append(ctx.seen_images)
        try:
            await self._load(ctx)
            if ctx.prompt_error is not None:
                raise _HTTPError(500, ctx.prompt_error)
            if ctx.stream:
                return await self._respond_stream(ctx)
            return await self._respond_once(ctx)
        except asyncio.CancelledError:
            self._note_cancel(ctx)
            raise
        finally:
            self.active -= 1
            sem.release()
            self._release_model(entry, keep_alive_ns)
            rec.events.append(("end", time.perf_counter()))

    def _fit_context(self, ctx: _Chat, *, truncate: bool | None, shift: bool | None) -> None:
        """docs/ollama-protocol.md#context: drop the oldest non-system messages to fit ``num_ctx``
        (keep the last one). Then the images of what is left (docs/ollama-protocol.md#images):
        a request they fail leaves the prompt cache alone."""
        vision = ctx.entry.vision
        counts = [_count_tokens(m, vision=vision) for m in ctx.messages]
        total = sum(counts)
        keep = [True] * len(ctx.messages)
        if total > ctx.num_ctx and truncate is not False:
            for i, message in enumerate(ctx.messages[:-1]):
                if total <= ctx.num_ctx:
                    break
                if message.get("role") != "system":
                    keep[i] = False
                    total -= counts[i]
        ctx.kept = [i for i, k in enumerate(keep) if k]
        ctx.seen_images = [[] for _ in ctx.messages]
        ctx.messages = [m for m, k in zip(ctx.messages, keep, strict=True) if k]
        self._see_images(ctx)
        if ctx.image_error is not None or ctx.prompt_error is not None:
            return
        if total > ctx.num_ctx:
            if truncate is False:
                ctx.context_error = "the input length exceeds the context length"
            elif shift is False:
                ctx.context_error = (
                    "the prompt is longer than the context length currently available to the "
                    "model; shorten the prompt, adjust the context length in settings, or use a "
                    "model with a longer context length"
                )
            total = ctx.num_ctx
        truncated = len(ctx.messages) < len(counts)
        tokens = [t for m in ctx.messages for t in _message_tokens(m, vision=vision)][:total]
        key = ctx.entry.name.key
        with self._lock:
            cached = _common_prefix(self._prompt_cache.get(key, []), tokens)
            self._prompt_cache[key] = tokens
            evaluated = max(1, total - cached) if total else 0
            self.prompt_stats.append(
                PromptStats(
                    ctx.model_raw,
                    sum(counts),
                    total,
                    total - evaluated,
                    evaluated,
                    truncated,
                    ctx.num_ctx,
                    str(ctx.messages[-1].get("content", "")) if ctx.messages else "",
                )
            )
        ctx.prompt_tokens = total if self.prompt_eval_includes_cached else evaluated

    def _see_images(self, ctx: _Chat) -> None:
        """What Ollama does with the images of the kept messages (docs/ollama-protocol.md#images):
        llama3.2-vision refuses two in one message (chatPrompt); a text model drops them (the
        runner only looks for images when the model has a vision part); a multimodal model
        without its vision weights fails on the first; a vision model decodes each in turn and
        fails on the first it cannot decode. Sets ``seen_images``, or one of the errors."""
        kept = [
            (index, message.get("images") or [])
            for index, message in zip(ctx.kept, ctx.messages, strict=True)
        ]
        if not any(images for _, images in kept):
            return
        entry = ctx.entry
        if entry.mllama and any(len(images) > 1 for _, images in kept):
            ctx.prompt_error = MLLAMA_ONE_IMAGE_MESSAGE
        elif entry.no_vision_data:
            ctx.image_error = IMAGE_ERROR_PREFIX + NO_VISION_DATA_MESSAGE
        elif entry.vision:
            for index, images in kept:
                for image in images:
                    info = _decode_image(image)
                    if isinstance(info, str):
                        ctx.image_error = IMAGE_ERROR_PREFIX + info
                        ctx.seen_images = [[] for _ in ctx.seen_images]
                        return
                    ctx.seen_images[index].append(info)

    async def _load(self, ctx: _Chat) -> None:
        """Model load then prompt evaluation: nothing is written meanwhile
        (docs/ollama-protocol.md#stream)."""
        cold = not self._is_loaded(ctx.entry)
        if cold:
            ctx.cold_extra_ns = int(self.cold_load_duration * 1e9)
            if self.cold_load_delay:
                await asyncio.sleep(self.cold_load_delay)
        if ctx.reply.load_delay:
            await asyncio.sleep(ctx.reply.load_delay)
        self._mark_loaded(ctx.entry, ctx.keep_alive_ns, ctx.num_ctx)
        ctx.rec.events.append(("loaded", time.perf_counter()))
        ctx.gen_start_ns = time.perf_counter_ns()
        if ctx.reply.prompt_eval_delay:
            await asyncio.sleep(ctx.reply.prompt_eval_delay)
        now = time.perf_counter_ns()
        ctx.prompt_real_ns = now - ctx.gen_start_ns
        ctx.gen_start_ns = now

    async def _load_only(
        self,
        request: web.Request,
        rec: RecordedRequest,
        entry: _Model,
        model_raw: str,
        keep_alive_ns: int | None,
        num_ctx: int,
    ) -> web.StreamResponse:
        """``messages`` empty/absent: load the model, answer one ``done_reason:"load"`` object
        (even when streaming was requested)."""
        if not self._is_loaded(entry) and self.cold_load_delay:
            await asyncio.sleep(self.cold_load_delay)
        self._mark_loaded(entry, keep_alive_ns, num_ctx)
        self._release_model(entry, keep_alive_ns)
        rec.events.append(("loaded", time.perf_counter()))
        message = {"role": "assistant", "content": ""}
        return await _send_json(
            request, 200, _chat_obj(model_raw, go_time_utc(), message, True, "load")
        )

    # ---------------------------------------------------------------- generation

    def _last_user(self, ctx: _Chat) -> str:
        for message in reversed(ctx.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    def _plan(self, ctx: _Chat) -> tuple[list[str], list[str], str]:
        """Thinking and content tokens to emit, and the done_reason (``num_predict``)."""
        reply = ctx.reply
        said = f"You said: {self._last_user(ctx)}"
        seen = sum(len(images) for images in ctx.seen_images)
        if seen:
            said += f" (and I see {seen} image{'s' if seen > 1 else ''})"
        if reply.tokens is not None:
            content = list(reply.tokens)
        elif ctx.fmt not in (None, ""):
            content = _WORDISH_RE.findall(json.dumps({"response": said}))
        else:
            content = _WORDISH_RE.findall(said)
        if ctx.think is False:
            thinking: list[str] = []
        elif reply.thinking is not None:
            thinking = list(reply.thinking)
        elif ctx.entry.thinking:
            thinking = _WORDISH_RE.findall(f"Okay, the user said: {self._last_user(ctx)}")
        else:
            thinking = []
        done_reason = reply.done_reason
        limit = ctx.options.get("num_predict")
        if isinstance(limit, int | float) and limit > 0:
            limit = int(limit)
            if len(thinking) + len(content) >= limit:
                content = content[: max(0, limit - len(thinking))]
                thinking = thinking[:limit]
                done_reason = "length"
        return thinking, content, done_reason

    def _logprobs(self, ctx: _Chat, token: str) -> list[dict[str, Any]] | None:
        if not ctx.logprobs:
            return None
        entry: dict[str, Any] = {"token": token, "logprob": -0.25, "bytes": list(token.encode())}
        if ctx.top_logprobs:
            entry["top_logprobs"] = [
                {"token": token if i == 0 else f"alt{i}", "logprob": -0.25 - i - 0.5 * (i > 0)}
                for i in range(ctx.top_logprobs)
            ]
        return [entry]

    def _tool_calls(self, ctx: _Chat) -> list[dict[str, Any]]:
        calls = []
        for index, raw in enumerate(ctx.reply.tool_calls or []):
            function = raw.get("function", raw)
            call_id = raw.get("id") or "call_" + "".join(
                self._rng.choices(string.ascii_lowercase + string.digits, k=8)
            )
            calls.append(
                {
                    "id": call_id,
                    "function": {
                        "index": function.get("index", index),
                        "name": function["name"],
                        "arguments": function.get("arguments", {}),
                    },
                }
            )
        return calls

    async def _events(self, ctx: _Chat) -> AsyncIterator[_Event]:
        """The runner's event channel for one generation."""
        reply = ctx.reply
        fmt = ctx.fmt
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raw = go_json(fmt).decode()
            yield _Error(
                500,
                f'invalid format: {_go_quote(raw)}; expected "json" or a valid JSON Schema object',
            )
            return
        if ctx.image_error:
            yield _Error(500, ctx.image_error)
            return
        if ctx.context_error:
            yield _Error(400, ctx.context_error)
            return
        if reply.status is not None:
            yield _Error(reply.status, reply.status_message)
            return
        if reply.hang:
            yield _Hang()
            return

        thinking, content, done_reason = self._plan(ctx)
        messages: list[dict[str, Any]] = [
            {"role": "assistant", "content": "", "thinking": t} for t in thinking
        ]
        messages += [{"role": "assistant", "content": c} for c in content]
        if reply.mixed_transition and thinking and content:
            last_thought = messages.pop(len(thinking) - 1)["thinking"]
            messages[len(thinking) - 1]["thinking"] = last_thought
        calls = self._tool_calls(ctx)
        error_message = RUNNER_ERROR_PREFIX + reply.error_message

        def line(message: dict[str, Any]) -> _Line:
            logprobs = self._logprobs(ctx, message["content"]) if message["content"] else None
            return _Line(_chat_obj(ctx.model_raw, go_time_utc(), message, False, logprobs=logprobs))

        sent_content = 0
        first = True
        for message in messages:
            if message["content"]:
                if reply.garbage_after is not None and sent_content >= reply.garbage_after:
                    yield _Garbage(b"<html><body>502 Bad Gateway</body></html>\n")
                    return
                if reply.error_after is not None and sent_content >= reply.error_after:
                    yield _Error(500, error_message, line=True)
                    return
                if reply.drop_after is not None and sent_content >= reply.drop_after:
                    yield self._drop_event(line(message), reply)
                    return
                if reply.hang_after is not None and sent_content >= reply.hang_after:
                    yield _Hang()
                    return
            if not first and reply.token_delay:
                await asyncio.sleep(reply.token_delay)
            first = False
            yield line(message)
            if message["content"]:
                sent_content += 1
        if calls and not reply.tool_calls_on_final:
            yield _Line(
                _chat_obj(
                    ctx.model_raw,
                    go_time_utc(),
                    {"role": "assistant", "content": "", "tool_calls": calls},
                    False,
                )
            )
        if reply.error_after is not None:
            yield _Error(500, error_message, line=True)
            return
        final = self._final(ctx, len(thinking) + len(content), done_reason, calls)
        if reply.drop_after is not None:
            yield self._drop_event(final if reply.done else None, reply)
            return
        if reply.done:
            # The runner's cache now holds the answer too (the KV cache keeps generated
            # tokens), so a next prompt that repeats it as an assistant message reuses it.
            self._remember_answer(ctx, "".join(content))
            yield final

    def _remember_answer(self, ctx: _Chat, answer: str) -> None:
        key = ctx.entry.name.key
        with self._lock:
            cached = self._prompt_cache.get(key)
            if cached is not None:
                answer_tokens = _message_tokens({"role": "assistant", "content": answer})
                self._prompt_cache[key] = cached + answer_tokens

    def _drop_event(self, next_line: _Line | None, reply: Reply) -> _Drop:
        if not reply.drop_mid_line or next_line is None:
            return _Drop(b"")
        data = go_json(next_line.obj) + b"\n"
        return _Drop(data[: len(data) // 2])

    def _final(
        self, ctx: _Chat, eval_count: int, done_reason: str, calls: list[dict[str, Any]]
    ) -> _Line:
        now = time.perf_counter_ns()
        prompt_synth = ctx.prompt_tokens * _PROMPT_EVAL_NS_PER_TOKEN
        eval_synth = eval_count * _EVAL_NS_PER_TOKEN
        load_ns = ctx.gen_start_ns - ctx.prompt_real_ns - ctx.t0 + ctx.cold_extra_ns
        metrics = {
            "total_duration": now - ctx.t0 + ctx.cold_extra_ns + prompt_synth + eval_synth,
            "load_duration": max(load_ns, 1),
            "prompt_eval_count": ctx.prompt_tokens,
            "prompt_eval_duration": ctx.prompt_real_ns + prompt_synth,
            "eval_count": eval_count,
            "eval_duration": max(now - ctx.gen_start_ns, 1) + eval_synth,
        }
        message: dict[str, Any] = {"role": "assistant", "content": ctx.reply.final_content}
        if calls and ctx.reply.tool_calls_on_final:
            message["tool_calls"] = calls
        return _Line(
            _chat_obj(ctx.model_raw, go_time_utc(), message, True, done_reason, metrics=metrics)
        )

    # ---------------------------------------------------------------- response writers

    def _drop(self, ctx: _Chat) -> None:
        """Close the TCP connection without a chunked terminator (server crash)."""
        ctx.dropped = True
        ctx.rec.events.append(("dropped", time.perf_counter()))
        transport = ctx.request.transport
        if transport is not None:
            transport.abort()

    async def _hang(self, ctx: _Chat) -> None:
        """Never answer. A client disconnect cancels us (counted); a stop closes the socket
        (aborted here, so that no empty 200 can slip out before the server closes it)."""
        assert self._stop_event is not None
        await self._stop_event.wait()
        self._drop(ctx)

    async def _write_line(self, ctx: _Chat, resp: web.StreamResponse, data: bytes) -> None:
        """One line = one write + drain (one HTTP chunk), or several with ``write_size``."""
        if not resp.prepared:
            await resp.prepare(ctx.request)
            ctx.rec.events.append(("first_byte", time.perf_counter()))
        size = ctx.reply.write_size or len(data)
        for start in range(0, len(data), max(size, 1)):
            await resp.write(data[start : start + size])
            await ctx.request.writer.drain()

    async def _respond_stream(self, ctx: _Chat) -> web.StreamResponse:
        """``streamResponse``: headers go out with the first event; errors per
        docs/ollama-protocol.md#errors."""
        resp = _ndjson_response()
        held = b""  # with garbage_after, every line waits to go out with the bad one
        try:
            async for event in self._events(ctx):
                if isinstance(event, _Line) and ctx.reply.garbage_after is not None:
                    held += go_json(event.obj) + b"\n"
                elif isinstance(event, _Garbage):
                    await self._write_line(ctx, resp, held + event.data)
                    break
                elif isinstance(event, _Line):
                    await self._write_line(ctx, resp, go_json(event.obj) + b"\n")
                    if event.obj["message"].get("content"):
                        ctx.rec.tokens_sent += 1
                        ctx.rec.last_token_at = time.perf_counter()
                elif isinstance(event, _Error):
                    if not resp.prepared and not event.line:
                        return await self._error_before_first_event(ctx, event)
                    await self._write_line(ctx, resp, go_json({"error": event.message}) + b"\n")
                    break
                elif isinstance(event, _Drop):
                    if event.partial:
                        await self._write_line(ctx, resp, event.partial)
                    self._drop(ctx)
                    return resp
                else:
                    await self._hang(ctx)
                    return resp
            if not resp.prepared:
                await resp.prepare(ctx.request)
            await resp.write_eof()
        except ConnectionError:
            self._note_cancel(ctx)
        return resp

    async def _error_before_first_event(self, ctx: _Chat, event: _Error) -> web.StreamResponse:
        """Row 15: real status, ``application/json`` (no charset), flushed hence chunked."""
        resp = web.StreamResponse(status=event.status)
        body = ctx.reply.error_body
        resp.headers["Content-Type"] = (
            JSON_CT_NO_CHARSET if body is None else ctx.reply.error_content_type
        )
        resp.enable_chunked_encoding()
        await resp.prepare(ctx.request)
        await resp.write(go_json({"error": event.message}) if body is None else body)
        await resp.write_eof()
        return resp

    async def _respond_once(self, ctx: _Chat) -> web.StreamResponse:
        """``stream:false``: drain every event, then one ``c.JSON``
        (docs/ollama-protocol.md#non-stream)."""
        lines: list[dict[str, Any]] = []
        async for event in self._events(ctx):
            if isinstance(event, _Line):
                lines.append(event.obj)
            elif isinstance(event, _Error):
                return await _send_json(ctx.request, event.status, {"error": event.message})
            elif isinstance(event, _Drop):
                self._drop(ctx)
                return web.Response()
            elif isinstance(event, _Garbage):
                return web.Response(body=event.data, content_type="text/html")
            else:
                await self._hang(ctx)
                return web.Response()
        try:
            return await _send_json(ctx.request, 200, _merge(lines))
        except ConnectionError:
            self._note_cancel(ctx)
            return web.Response()


def _merge(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate content/thinking/tool_calls/logprobs; everything else from the last event."""
    if not lines:  # Go marshals the zero ChatResponse
        return {
            "model": "",
            "created_at": "0001-01-01T00:00:00Z",
            "message": {"role": "", "content": ""},
            "done": False,
        }
    last = lines[-1]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(line["message"]["content"] for line in lines),
    }
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    if thinking:
        message["thinking"] = thinking
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    if calls:
        message["tool_calls"] = calls
    logprobs = [lp for line in lines for lp in line.get("logprobs", [])]
    return _chat_obj(
        last["model"],
        last["created_at"],
        message,
        last["done"],
        last.get("done_reason"),
        logprobs=logprobs,
        metrics={k: last[k] for k in _METRIC_KEYS if k in last},
    )


def _plain(status: int, text: str, content_type: str) -> web.Response:
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": content_type})


def _ndjson_response() -> web.StreamResponse:
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = NDJSON_CT
    resp.enable_chunked_encoding()
    return resp


async def _send_json(
    request: web.Request, status: int, obj: Any, content_type: str = JSON_CT
) -> web.StreamResponse:
    """gin ``c.JSON``: no trailing newline; Content-Length only if it fits Go's 2 KiB buffer."""
    body = go_json(obj)
    if len(body) <= _GO_CHUNKING_BUFFER or request.method == "HEAD":
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})
    resp = web.StreamResponse(status=status)
    resp.headers["Content-Type"] = content_type
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(body)
    await resp.write_eof()
    return resp


# --------------------------------------------------------------------------------------------
# Foreground runner
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until SIGINT/SIGTERM (manual and out-of-process tests).

    Prints ``fake-ollama listening on <url>`` once ready, so a parent process using
    ``--port 0`` can read the chosen port.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.fake_ollama", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", help="model to serve (repeatable)")
    parser.add_argument("--thinking-model", action="append", default=[])
    parser.add_argument("--vision-model", action="append", default=[])
    parser.add_argument("--num-parallel", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument("--legacy-not-found", action="store_true")
    parser.add_argument("--version", default="0.12.6", help="version reported by /api/version")
    parser.add_argument("--cold-load-delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    fake = FakeOllama(
        models=args.model or ["llama3.2"],
        thinking_models=args.thinking_model,
        vision_models=args.vision_model,
        legacy_not_found=args.legacy_not_found,
        num_parallel=args.num_parallel,
        max_queue=args.max_queue,
        version=args.version,
        cold_load_delay=args.cold_load_delay,
        host=args.host,
        port=args.port,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    fake.start()
    print(f"fake-ollama listening on {fake.url}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
