"""The NDJSON reader: any split of a valid stream into reads yields the same objects."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.ndjson import NdjsonDecoder, NdjsonError

# Integers as Go's encoding/json writes Ollama's fields (int64 or uint64 at most): orjson reads
# only those as integers (it would read a larger one as a float).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


def go_json(obj: object) -> bytes:
    """Encode as Ollama's Go server does: compact, raw UTF-8, <>& and U+2028/9 escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode("utf-8")


def decode_in_reads(stream: bytes, cuts: list[int]) -> list[dict[str, object]]:
    decoder = NdjsonDecoder()
    out: list[dict[str, object]] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    out.extend(decoder.finish())
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(objects, min_size=1, max_size=6),
    st.data(),
    st.booleans(),
)
def test_any_split_of_a_valid_stream_yields_the_same_objects(
    objs: list[dict[str, object]], data: st.DataObject, final_newline: bool
) -> None:
    stream = b"\n".join(go_json(o) for o in objs) + (b"\n" if final_newline else b"")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert decode_in_reads(stream, cuts) == objs


def test_multibyte_character_split_across_reads() -> None:
    line = go_json({"message": {"content": "blue 🌤 café"}}) + b"\n"
    emoji_at = line.index("🌤".encode())
    decoder = NdjsonDecoder()
    assert decoder.feed(line[: emoji_at + 2]) == []
    assert decoder.feed(line[emoji_at + 2 :]) == [{"message": {"content": "blue 🌤 café"}}]


def test_several_lines_in_one_read_and_escapes_decoded() -> None:
    stream = b'{"a":"\\u003cb\\u003e \\u0026"}\n{"a":2}\n{"a":'
    decoder = NdjsonDecoder()
    assert decoder.feed(stream) == [{"a": "<b> &"}, {"a": 2}]
    assert decoder.pending == b'{"a":'
    assert decoder.feed(b"3}") == []
    assert decoder.finish() == [{"a": 3}]


def test_line_longer_than_aiohttp_readline_limit_is_fine() -> None:
    big = {"message": {"content": "x" * 1_000_000}}
    line = go_json(big) + b"\n"
    decoder = NdjsonDecoder()
    objs: list[dict[str, object]] = []
    for start in range(0, len(line), 65536):
        objs.extend(decoder.feed(line[start : start + 65536]))
    assert objs == [big]


def test_line_over_the_cap_is_an_error() -> None:
    decoder = NdjsonDecoder(max_line_bytes=100)
    with pytest.raises(NdjsonError, match="longer than 100 bytes"):
        decoder.feed(b"{" + b" " * 200)


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b'{"a":\xff}\n'])
def test_garbage_line_is_a_clear_error(line: bytes) -> None:
    with pytest.raises(NdjsonError):
        NdjsonDecoder().feed(line)


def test_blank_lines_are_skipped_and_final_line_without_newline_is_flushed() -> None:
    decoder = NdjsonDecoder()
    assert decoder.feed(b'\n{"done":false}\n\n') == [{"done": False}]
    assert decoder.feed(b'{"done":true}') == []
    assert decoder.finish() == [{"done": True}]
    assert decoder.finish() == []
