"""What one read of a chat stream brings: Ollama's lines, as few chunks as their meaning allows.

Ollama writes one line per token (#stream), so a busy bot would otherwise run its whole chain
(think filter, reply text, scheduler) once per token. A read that brought several lines is
handed on as one chunk per run of plain text instead: ``"Hel"`` + ``"lo"`` is ``"Hello"``.
A run ends where its meaning changes: at the ``done`` line (its metrics), tool calls, or
reasoning that follows answer text (the answer stream handles a chunk's reasoning first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@dataclass(frozen=True)
class ChatChunk:
    """One event of a chat stream, with every optional field defaulted (metrics are omitempty).

    ``tokens`` counts the stream lines with answer text it stands for (Ollama writes one per
    token; the token metric counts them)."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    done: bool = False
    done_reason: str = ""
    metrics: Mapping[str, int] = field(default_factory=dict)
    tokens: int = 0

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChatChunk:
        message = obj.get("message") or {}
        metrics = {key: value for key in _METRICS if isinstance(value := obj.get(key), int)}
        content = str(message.get("content") or "")
        return cls(
            content=content,
            thinking=str(message.get("thinking") or ""),
            tool_calls=tuple(message.get("tool_calls") or ()),
            done=bool(obj.get("done")),
            done_reason=str(obj.get("done_reason") or ""),
            metrics=metrics,
            tokens=1 if content else 0,
        )


def _plain(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(content, thinking) of a line that only carries text, else None."""
    if obj.get("done") or "error" in obj:
        return None
    message = obj.get("message")
    if not isinstance(message, dict):
        return None
    if message.get("tool_calls"):
        return None
    return str(message.get("content") or ""), str(message.get("thinking") or "")


def merged_chunks(objects: Iterable[Mapping[str, Any]]) -> Iterator[ChatChunk]:
    """The chunks for the lines of one read, in order, runs of plain text merged.

    A line carrying ``error`` is never merged nor converted: it ends the iteration with
    :class:`ErrorLine` after the chunks before it, so the caller sees the text first."""
    content: list[str] = []
    thinking: list[str] = []
    tokens = 0  # lines of the run with answer text
    for obj in objects:
        plain = _plain(obj)
        if plain is not None and not (plain[1] and tokens):
            content.append(plain[0])
            thinking.append(plain[1])
            tokens += 1 if plain[0] else 0
            continue
        if content:
            yield _run(content, thinking, tokens)
            content, thinking, tokens = [], [], 0
        if plain is not None:  # reasoning after answer text: starts the next run
            content, thinking, tokens = [plain[0]], [plain[1]], 1 if plain[0] else 0
            continue
        if "error" in obj:
            raise ErrorLine(str(obj["error"]))
        yield ChatChunk.from_json(obj)
    if content:
        yield _run(content, thinking, tokens)


def _run(content: list[str], thinking: list[str], tokens: int) -> ChatChunk:
    return ChatChunk(content="".join(content), thinking="".join(thinking), tokens=tokens)


class ErrorLine(Exception):
    """A stream line carrying ``{"error": ...}`` (#error-line)."""
