"""Merging the lines of one read into chunks keeps every word, in order, and every meaning."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.chat_chunk import ChatChunk, ErrorLine, merged_chunks

TEXT = st.text(alphabet="ab <>\n", max_size=4)


def line(content: str = "", thinking: str = "", **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return {"model": "m", "message": message, "done": False, **extra}


LINES = st.one_of(
    st.builds(line, content=TEXT),
    st.builds(line, thinking=TEXT),
    st.builds(line, content=TEXT, thinking=TEXT),
    st.builds(
        lambda c: {
            "model": "m",
            "message": {"role": "assistant", "content": c, "tool_calls": [{"function": {}}]},
            "done": False,
        },
        TEXT,
    ),
    st.just(
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 3,
        }
    ),
)


def events(chunks: list[ChatChunk]) -> list[tuple[str, str]]:
    """What the answer stream does with the chunks: each chunk's reasoning, then its text."""
    out: list[tuple[str, str]] = []
    for chunk in chunks:
        out += [("think", chunk.thinking), ("say", chunk.content), ("tools", str(chunk.tool_calls))]
        out += [("done", chunk.done_reason)] if chunk.done else []
    return squeeze(out)


def squeeze(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Adjacent pieces of one kind joined, empty ones dropped."""
    out: list[tuple[str, str]] = []
    for kind, text in pairs:
        if kind in ("tools",) and text == "()":
            continue
        if kind in ("think", "say") and not text:
            continue
        if out and out[-1][0] == kind and kind in ("think", "say"):
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


@given(st.lists(LINES, max_size=12))
def test_merging_changes_nothing_the_answer_stream_sees(objects: list[dict[str, Any]]) -> None:
    one_by_one = [ChatChunk.from_json(obj) for obj in objects]
    merged = list(merged_chunks(objects))
    assert events(merged) == events(one_by_one)
    assert sum(c.tokens for c in merged) == sum(c.tokens for c in one_by_one)
    assert sum(c.tokens for c in one_by_one) == sum(1 for c in one_by_one if c.content)
    assert [c.metrics for c in merged if c.done] == [c.metrics for c in one_by_one if c.done]
    assert len(merged) <= len(objects)


def test_plain_lines_of_one_read_are_one_chunk() -> None:
    chunks = list(merged_chunks([line("Hel"), line("lo"), line(", world")]))
    assert chunks == [ChatChunk(content="Hello, world", tokens=3)]


def test_reasoning_after_text_starts_a_new_chunk() -> None:
    chunks = list(merged_chunks([line(thinking="hmm"), line("Yes"), line(thinking="wait")]))
    assert [(c.thinking, c.content) for c in chunks] == [("hmm", "Yes"), ("wait", "")]


def test_an_error_line_comes_after_the_text_before_it() -> None:
    seen: list[str] = []
    with pytest.raises(ErrorLine, match="runner died"):
        for chunk in merged_chunks([line("par"), line("tial"), {"error": "runner died"}]):
            seen.append(chunk.content)
    assert seen == ["partial"]
