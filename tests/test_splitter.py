"""The splitter: model output -> valid Discord messages, identical whether streamed or not."""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.splitter import (
    DISCORD_LIMIT,
    MIN_LIMIT,
    close_open_fence,
    discord_len,
    open_fence,
    split_message,
    take_chunk,
)

# --------------------------------------------------------------------------------------------
# Helpers


def fences(text: str) -> int:
    return len(re.findall("```", text))


def squash(text: str) -> str:
    """Text with all whitespace removed: what must survive splitting."""
    return re.sub(r"\s", "", text)


def stream(pieces: list[str], limit: int) -> list[str]:
    """What the streaming reply writer does with a reply arriving in ``pieces``."""
    chunks: list[str] = []
    tail = ""
    for piece in pieces:
        tail += piece
        while discord_len(close_open_fence(tail)) > limit:
            chunk, tail = take_chunk(tail, limit)
            if chunk:
                chunks.append(chunk)
    if tail.strip():
        chunks.append(close_open_fence(tail))
    return chunks


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *cuts})
    return [text[a:b] for a, b in pairwise(bounds)]


_REOPEN = re.compile(r"```[A-Za-z0-9_+\-.#]*\n")
_EMPTY_REOPENED = re.compile(r"```[A-Za-z0-9_+\-.#]*\n```")


def original_parts(
    chunks: list[str], original: str, indivisible_too: Iterable[int] = ()
) -> list[str] | None:
    """Each chunk's own text, with the fences the splitter added taken off; ``None`` if the
    chunks are not the original text in order with only whitespace dropped between them.

    The splitter may add: "\\n```" at the end of a chunk cut inside a code block, the fence line
    reopening it at the start of the next chunk, and 1-3 backticks closing the last chunk.
    Which fences are added cannot be read off the chunks alone ("```py\\nx\\n```" may be the
    model's own block), so this searches for a reading that matches ``original``: each part
    must be an exact slice of it, what lies between the parts must be whitespace, and no part
    may start or end inside one of the original's fences or surrogate pairs, nor at any of the
    positions ``indivisible_too`` (e.g. inside a grapheme cluster).
    """
    indivisible = {
        inside
        for fence in re.finditer("```", original)
        for inside in range(fence.start() + 1, fence.end())
    }
    indivisible |= {
        i + 1
        for i in range(len(original) - 1)
        if "\ud800" <= original[i] <= "\udbff" and "\udc00" <= original[i + 1] <= "\udfff"
    }
    indivisible |= set(indivisible_too)
    last = len(chunks) - 1
    seen: set[tuple[int, int, bool]] = set()
    todo: list[tuple[int, int, bool, tuple[str, ...]]] = [(0, 0, False, ())]
    while todo:
        index, pos, reopened, parts = todo.pop()
        if (index, pos, reopened) in seen:
            continue
        seen.add((index, pos, reopened))
        if index > last:
            if not original[pos:].strip():
                return list(parts)
            continue
        chunk = chunks[index]
        readings: list[tuple[str, bool]] = []
        if reopened:
            if index < last and _EMPTY_REOPENED.fullmatch(chunk):
                readings.append(("", True))  # a reopened block with nothing fitting in it
            header = _REOPEN.match(chunk)
            if header is None:
                continue
            chunk = chunk[header.end() :]
        readings.append((chunk, False))
        if index < last and chunk.endswith("\n```"):
            readings.append((chunk[:-4], True))
        if index == last:
            readings += [(chunk[:-k], False) for k in (1, 2, 3) if chunk.endswith("`" * k)]
        for body, closed in readings:
            start = pos
            while True:
                end = start + len(body)
                clean = start not in indivisible and end not in indivisible
                if clean and original.startswith(body, start):
                    todo.append((index + 1, start + len(body), closed, (*parts, body)))
                if start < len(original) and original[start].isspace():
                    start += 1
                else:
                    break
    return None


def assert_valid(chunks: list[str], limit: int) -> None:
    for chunk in chunks:
        assert chunk.strip(), f"blank chunk {chunk!r}"
        assert discord_len(chunk) <= limit, f"{discord_len(chunk)} > {limit}: {chunk!r}"
        assert fences(chunk) % 2 == 0, f"unbalanced chunk {chunk!r}"


def assert_carries(chunks: list[str], original: str) -> None:
    parts = original_parts(chunks, original)
    assert parts is not None, "chunks are not the original text in order"
    assert squash("".join(parts)) == squash(original)


# --------------------------------------------------------------------------------------------
# Strategies: text rich in what makes splitting hard

ATOMS = [
    "```",
    "```py\n",
    "```python\n",
    "```c++\n",
    "```" + "t" * 40 + "\n",  # too long to be reproduced as a tag
    "```x y",  # a fence whose first line is code, not a tag
    "`",
    "``",
    "\n",
    "\n\n",
    "\n \n",
    "\r\n",
    "\r\n\r\n",
    " ",
    "   ",
    "\t",
    "\n    ",  # an indented code line
    "word",
    "hello ",
    "x" * 37,  # a long word
    "é",
    "😀",  # astral: 2 UTF-16 units
    "🇫🇷",
    "\ud83d\ude00",  # a surrogate pair given as two code points
    "#",
    ".",
    # Grapheme clusters of several code points, and pieces that join what is next to them
    # (more in test_splitter_graphemes.py):
    "e\u0301",
    "\u0301",
    "👨\u200d👩\u200d👧",
    "\u200d",
    "👍🏽",
    "🏽",
    "🇫",
    "\u1100\u1161",
    "\u11a8",
]
atoms = st.sampled_from(ATOMS) | st.text(max_size=6)
rich_texts = st.lists(atoms, min_size=1, max_size=100).map("".join)


@st.composite
def texts_and_limits(draw: st.DrawFn) -> tuple[str, int]:
    """A rich text and a limit that usually makes it several messages (sometimes one)."""
    text = draw(rich_texts)
    most = max(MIN_LIMIT, discord_len(text) // 2)
    limit = draw(st.integers(MIN_LIMIT, min(most, 300)) | st.integers(MIN_LIMIT, 300))
    return text, limit


LONG_ATOMS = [
    "Some prose, a sentence of ordinary length. ",
    "\n\n",
    "\n",
    "```python\n",
    "\n```\n",
    "    return value  # indented code\n",
    "😀" * 30,
    "w" * 300,
    " " * 50,
    "`x`",
]
long_texts = st.lists(st.sampled_from(LONG_ATOMS), min_size=50, max_size=250).map("".join)

PROPERTY = settings(max_examples=250, deadline=None)
LONG = settings(max_examples=25, deadline=None)


# --------------------------------------------------------------------------------------------
# Properties


@PROPERTY
@given(texts_and_limits())
def test_chunks_fit_are_not_blank_and_are_balanced(case: tuple[str, int]) -> None:
    text, limit = case
    assert_valid(split_message(text, limit), limit)


@LONG
@given(long_texts)
def test_long_replies_at_the_discord_limit(text: str) -> None:
    chunks = split_message(text)
    assert_valid(chunks, DISCORD_LIMIT)
    assert_carries(chunks, text)


@PROPERTY
@given(texts_and_limits())
def test_chunks_carry_the_original_text_in_order(case: tuple[str, int]) -> None:
    text, limit = case
    assert_carries(split_message(text, limit), text)


@PROPERTY
@given(texts_and_limits(), st.data())
def test_streaming_gives_the_same_messages_as_splitting_the_whole_text(
    case: tuple[str, int], data: st.DataObject
) -> None:
    text, limit = case
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=40))
    assert stream(pieces_of(text, cuts), limit) == split_message(text, limit)


@PROPERTY
@given(texts_and_limits())
def test_streaming_one_character_at_a_time(case: tuple[str, int]) -> None:
    text, limit = case
    assert stream(list(text), limit) == split_message(text, limit)


@LONG
@given(long_texts, st.data())
def test_streaming_long_replies_at_the_discord_limit(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=60))
    assert stream(pieces_of(text, cuts), DISCORD_LIMIT) == split_message(text)


@PROPERTY
@given(rich_texts, rich_texts, st.data())
def test_take_chunk_decides_before_more_text_arrives(
    text: str, more: str, data: st.DataObject
) -> None:
    shown = discord_len(close_open_fence(text))
    limit = data.draw(st.integers(MIN_LIMIT, max(MIN_LIMIT, shown - 1)))
    if shown <= limit:
        return
    chunk, rest = take_chunk(text, limit)
    assert take_chunk(text + more, limit) == (chunk, rest + more)


@PROPERTY
@given(rich_texts, st.data())
def test_take_chunk_contract(text: str, data: st.DataObject) -> None:
    shown = discord_len(close_open_fence(text))
    limit = data.draw(st.integers(MIN_LIMIT, max(MIN_LIMIT, shown - 1)))
    if shown <= limit:
        with pytest.raises(ValueError):
            take_chunk(text, limit)
        return
    chunk, rest = take_chunk(text, limit)
    assert len(rest) < len(text)  # so the caller's loop always ends
    if chunk:
        assert_valid([chunk], limit)
    else:  # nothing but whitespace fits: it is dropped, and nothing else
        assert text[0].isspace()
        assert text.endswith(rest)
        assert not text[: len(text) - len(rest)].strip()


@PROPERTY
@given(rich_texts, rich_texts)
def test_display_never_shrinks_as_text_grows(text: str, more: str) -> None:
    shown = close_open_fence(text)
    assert shown.startswith(text)
    assert fences(shown) % 2 == 0
    assert discord_len(close_open_fence(text + more)) >= discord_len(shown)


code_line_chars = st.sampled_from(list("abcxyz019 ()=+_.,:#\t"))


@PROPERTY
@given(st.data(), st.integers(MIN_LIMIT, 200), st.sampled_from(["", "py"]))
def test_code_lines_that_fit_are_never_cut(data: st.DataObject, limit: int, tag: str) -> None:
    width = limit - 8 - len(tag)  # "```py\n" + line + "\n```"
    line = st.text(code_line_chars, min_size=1, max_size=width).map(str.rstrip).filter(bool)
    first = data.draw(line)
    others = data.draw(st.lists(line | st.just(""), max_size=60))
    # At most one blank line in a row: a longer run of blank lines can reach past the part
    # of the text a cut is decided on (see take_chunk), and then the reopened block starts
    # with a leftover blank line, which costs a character of room (Discord hides it).
    lines = [first] + [b for a, b in pairwise([first, *others]) if a or b]
    text = f"```{tag}\n" + "\n".join(lines) + "\n```"
    chunks = split_message(text, limit)
    assert_valid(chunks, limit)
    got = [
        piece.rstrip()
        for chunk in chunks
        for piece in chunk.split("\n")
        if piece.strip() and not re.fullmatch(r"```(py)?", piece)
    ]
    assert got == [line.rstrip() for line in lines if line.strip()]


@PROPERTY
@given(
    st.sampled_from(["python", "c++", "objective-c", "f#", "py3.11", "x_y-z", "t" * 32]),
    st.integers(MIN_LIMIT + 32 + 11, 300),
    st.data(),
)
def test_language_tag_is_kept_on_reopen(tag: str, limit: int, data: st.DataObject) -> None:
    width = limit - 8 - len(tag)
    line = st.text(code_line_chars, min_size=1, max_size=width).filter(str.strip)
    lines = data.draw(st.lists(line, min_size=1, max_size=8))
    code = "\n".join(lines * (3 * limit // len("\n".join(lines)) + 1))  # over 3 messages
    text = f"Here you go.\n\n```{tag}\n{code}\n```\n\nThat is all."
    chunks = split_message(text, limit)
    assert_valid(chunks, limit)
    assert_carries(chunks, text)
    reopened = [chunk for chunk in chunks[1:] if chunk.startswith("```")]
    assert len(reopened) >= 2
    assert all(chunk.startswith(f"```{tag}\n") for chunk in reopened)


# --------------------------------------------------------------------------------------------
# Examples

PROSE = (
    "Sure! Below is a small module that parses the configuration file and validates every "
    "field before the bot starts, so mistakes are reported at once instead of at 3 a.m. "
)


def realistic_reply() -> str:
    intro = "\n\n".join([PROSE * 2, PROSE * 2])  # ~700 characters in two paragraphs
    functions = []
    for n in range(17):
        functions.append(
            f"def check_field_{n:02}(value: str) -> str:\n"
            f'    """Validate field number {n}."""\n'
            f"    if not value.strip():\n"
            f'        raise ValueError("field {n} is empty")\n'
            f"    return value.strip()\n"
        )
    code = "```python\n" + "\n".join(functions) + "```"  # ~2900 characters
    outro = "\n\n".join([PROSE * 4, PROSE * 4])  # ~1350 characters
    return f"{intro}\n\n{code}\n\n{outro}"


def test_5000_char_reply_with_python_code_block_splits_into_valid_messages() -> None:
    text = realistic_reply()
    assert 4800 <= len(text) <= 5600
    chunks = split_message(text)
    assert len(chunks) == 3
    assert_valid(chunks, DISCORD_LIMIT)
    assert_carries(chunks, text)
    first, second, third = chunks
    assert first.startswith("Sure!")
    assert first.endswith("\n```")  # cut inside the code: closed by the splitter
    assert second.startswith("```python\ndef check_field_")  # reopened, whole lines only
    assert second.endswith("return value.strip()\n```")  # the model's own closing fence
    assert third.startswith("Sure!")
    # The code is cut at a blank line between two functions (a paragraph break).
    assert first.endswith("return value.strip()\n```")


def test_realistic_reply_streamed_character_by_character_gives_the_same_messages() -> None:
    text = realistic_reply()
    assert stream(list(text), DISCORD_LIMIT) == split_message(text)


def test_text_exactly_at_the_limit_is_one_unchanged_chunk() -> None:
    text = ("word " * 400)[:-1] + "!"
    assert discord_len(text) == DISCORD_LIMIT
    assert split_message(text) == [text]


def test_one_character_over_the_limit_splits_at_the_last_space() -> None:
    text = "word " * 400 + "x"
    assert split_message(text) == [("word " * 400).rstrip(), "x"]


def test_a_single_5000_char_word_is_cut_hard_into_full_messages() -> None:
    word = "a" * 5000
    assert split_message(word) == ["a" * 2000, "a" * 2000, "a" * 1000]


def test_emoji_count_as_two_and_are_never_split() -> None:
    text = "😀" * 2500
    chunks = split_message(text)
    assert chunks == ["😀" * 1000, "😀" * 1000, "😀" * 500]
    assert [discord_len(chunk) for chunk in chunks] == [2000, 2000, 1000]


def test_surrogate_pairs_given_as_code_points_are_never_split() -> None:
    pair = "\ud83d\ude00"
    chunks = split_message("a" + pair * 20, 16)
    assert "".join(chunks) == "a" + pair * 20
    assert all(not chunk.endswith("\ud83d") for chunk in chunks)


def test_runs_of_backticks_are_only_cut_between_whole_fences() -> None:
    text = "`" * 100 + "x" * 30 + "````" * 10
    chunks = split_message(text, 16)
    assert_valid(chunks, 16)
    assert_carries(chunks, text)


def test_crlf_text_is_cut_between_lines_never_inside_a_line_break() -> None:
    lines = [f"line {n:03} of a windows text file" for n in range(120)]
    text = "\r\n".join(lines)
    chunks = split_message(text, 200)
    assert_valid(chunks, 200)
    assert all(not chunk.endswith("\r") and not chunk.startswith("\n") for chunk in chunks)
    assert [line for chunk in chunks for line in chunk.split("\r\n")] == lines


def test_inline_triple_backticks_on_one_line() -> None:
    text = "Run ```pip install ollacord``` then ```ollacord``` and wait. " * 80
    chunks = split_message(text)
    assert_valid(chunks, DISCORD_LIMIT)
    assert_carries(chunks, text)


def test_paragraph_break_is_preferred_when_it_leaves_half_a_message() -> None:
    first = "a " * 30  # 60 characters
    text = first + "\n\n" + "b " * 30 + "\nc c c c c c c c c c c c"
    chunks = split_message(text, 100)
    assert chunks[0] == first.rstrip()


def test_early_paragraph_break_loses_to_the_last_line_break() -> None:
    text = "Title\n\n" + "a " * 30 + "\n" + "b " * 40
    chunks = split_message(text, 100)
    assert chunks[0] == "Title\n\n" + ("a " * 30).rstrip()


def test_whitespace_at_the_cut_is_dropped() -> None:
    text = "alpha   \n\n\n   beta " * 10
    chunks = split_message(text, 30)
    assert_valid(chunks, 30)
    *cut, last = chunks
    assert all(chunk == chunk.strip() for chunk in cut)
    assert last == last.lstrip()  # the last one is the rest as the model wrote it


def test_reopened_code_keeps_the_indentation_of_its_first_line() -> None:
    body = "\n".join(f"    line_{n} = {n}" for n in range(20))
    chunks = split_message(f"```py\n{body}\n```", 80)
    assert_valid(chunks, 80)
    assert all(chunk.startswith("```py\n    line_") for chunk in chunks)


def test_model_closing_fence_is_kept_instead_of_reopening_an_empty_block() -> None:
    text = "```\n" + "x" * 20 + "\n```\n" + "after " * 5
    chunks = split_message(text, 30)
    assert chunks[0] == "```\n" + "x" * 20 + "\n```"
    assert not any(re.fullmatch(r"```\w*\n```", chunk) for chunk in chunks)


def test_blank_line_before_the_closing_fence_does_not_leave_an_empty_block() -> None:
    # The blank line is a paragraph break, but cutting there would start the next message
    # with "```py\n```": an empty block, which Discord shows as a stray "py" line.
    text = "```py\n" + "x" * 20 + "\n\n```\nafter the code"
    chunks = split_message(text, 31)
    assert chunks == ["```py\n" + "x" * 20 + "\n\n```", "after the code"]


def test_no_cut_right_after_an_opening_fence_line() -> None:
    # The last line break in range ends "```py": cutting there gives an empty block.
    chunks = split_message("Intro\n```py\n" + "y" * 40, 30)
    assert chunks[0] == "Intro"
    assert chunks[1].startswith("```py\nyyy")


def test_unterminated_code_block_is_closed_at_the_end() -> None:
    assert split_message("```py\nprint(1)") == ["```py\nprint(1)```"]


@pytest.mark.parametrize("text", ["", " ", "\n\n\n", " \r\n\t ", "\n" * 5000])
def test_empty_or_whitespace_only_text_gives_no_messages(text: str) -> None:
    assert split_message(text) == []


def test_a_flood_of_whitespace_is_dropped_without_blank_messages() -> None:
    text = "a\n" + "\n" * 5000 + " " * 3000 + "b"
    chunks = split_message(text)
    assert [chunk.strip() for chunk in chunks] == ["a", "b"]
    assert stream(list(text), DISCORD_LIMIT) == chunks
    # The writer is handed an empty chunk for a window of nothing but whitespace.
    assert take_chunk("\n" * 2500 + "b") == ("", "\n" * 499 + "b")


@pytest.mark.parametrize("limit", [-1, 0, 15])
def test_limits_below_the_minimum_are_rejected(limit: int) -> None:
    with pytest.raises(ValueError):
        split_message("text", limit)
    with pytest.raises(ValueError):
        take_chunk("text" * 10, limit)


def test_take_chunk_rejects_text_that_fits() -> None:
    with pytest.raises(ValueError):
        take_chunk("short")


def test_take_chunk_reserves_room_for_the_closing_fence() -> None:
    chunk, rest = take_chunk("```\n" + "x" * 30, 20)
    assert chunk == "```\n" + "x" * 12 + "\n```"
    assert rest == "```\n" + "x" * 18


def test_small_limits_drop_tags_that_leave_no_room_for_code() -> None:
    chunks = split_message("```python\n" + "print(1)\n" * 4, 16)
    assert_valid(chunks, 16)
    assert all(chunk.startswith("```\n") for chunk in chunks[1:])


@pytest.mark.parametrize(
    ("text", "fence"),
    [
        ("no code", None),
        ("```py\nx = 1\n```", None),
        ("```py\nx = 1", "```py"),
        ("```c++\n", "```c++"),
        ("```\ncode", "```"),
        ("```py", "```"),  # the tag is not known until its newline arrives
        ("```py x\n", "```"),  # "py x" is code, not a language
        ("```py\r\nx", "```py"),
        ("```" + "t" * 32 + "\nx", "```" + "t" * 32),
        ("```" + "t" * 33 + "\nx", "```"),
        ("a ```x``` b ```js\nlet", "```js"),
    ],
)
def test_open_fence(text: str, fence: str | None) -> None:
    assert open_fence(text) == fence


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("```py\nx\n```", "```py\nx\n```"),
        ("```py\nx = 1", "```py\nx = 1```"),
        ("```py\nx = 1\n", "```py\nx = 1\n```"),
        ("```py\nx``", "```py\nx```"),  # completes the fence being typed
        ("```py\nx`", "```py\nx```"),
        ("```py\nx", "```py\nx```"),
        ("````", "``````"),  # a fence and a stray backtick: two more make the closing one
    ],
)
def test_close_open_fence(text: str, shown: str) -> None:
    assert close_open_fence(text) == shown
