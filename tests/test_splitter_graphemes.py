"""The splitter cuts between grapheme clusters (UAX #29), whether the text streams in or not.

A forced cut (no whitespace in reach) must not tear a family emoji apart, start a message with a
combining accent or a skin-tone modifier, split a flag into two letters or a Hangul syllable
into jamo; a chunk must not start inside a "\\r\\n". Only a cluster longer than a whole message
is cut between code points: that is the only way to make progress.
"""

from __future__ import annotations

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.splitter import (
    DISCORD_LIMIT,
    MIN_LIMIT,
    close_open_fence,
    discord_len,
    split_message,
    take_chunk,
)
from tests.test_splitter import (
    assert_carries,
    assert_valid,
    original_parts,
    pieces_of,
    squash,
    stream,
)

# --------------------------------------------------------------------------------------------
# Helpers

FAMILY = "👨\u200d👩\u200d👧\u200d👦"  # 4 emoji joined by ZWJ: 11 UTF-16 units, one cluster
E_ACUTE = "e\u0301"  # e + combining acute accent
FLAG = "🇫🇷"  # two regional indicators
THUMB = "👍🏽"  # an emoji and its skin-tone modifier
HANGUL = "\u1100\u1161\u11a8"  # the syllable 각 as three conjoining jamo


def inside_clusters(text: str, max_units: int | None = None) -> set[int]:
    """Positions strictly inside an extended grapheme cluster of ``text`` (of at most
    ``max_units`` UTF-16 units, if given)."""
    return {
        inside
        for cluster in regex.finditer(r"\X", text)
        if max_units is None or discord_len(cluster.group()) <= max_units
        for inside in range(cluster.start() + 1, cluster.end())
    }


def assert_whole_clusters(chunks: list[str], text: str, max_units: int | None = None) -> None:
    """The chunks carry ``text`` (see original_parts) and none starts or ends inside a cluster
    (of at most ``max_units``)."""
    parts = original_parts(chunks, text, inside_clusters(text, max_units))
    assert parts is not None, "a chunk starts or ends inside a grapheme cluster"
    assert squash("".join(parts)) == squash(text)


# --------------------------------------------------------------------------------------------
# A forced cut right across a cluster


@pytest.mark.parametrize("fits", range(1, 11))
def test_a_family_emoji_across_the_limit_goes_whole_to_the_next_message(fits: int) -> None:
    # `fits` of the emoji's 11 units are within the limit.
    text = "x" * (DISCORD_LIMIT - fits) + FAMILY + "y" * 20
    chunks = split_message(text)
    assert chunks == ["x" * (DISCORD_LIMIT - fits), FAMILY + "y" * 20]
    assert_whole_clusters(chunks, text)


def test_a_2000_unit_run_then_a_family_emoji() -> None:
    text = "x" * 1995 + FAMILY
    chunks = split_message(text)
    assert chunks == ["x" * 1995, FAMILY]
    assert_whole_clusters(chunks, text)


@pytest.mark.parametrize(
    ("cluster", "fits"),
    [
        (E_ACUTE, 1),  # the "e" fits, the accent does not
        (FLAG, 2),  # the first regional indicator fits
        (THUMB, 2),  # the thumb fits, the skin tone does not
        (HANGUL, 1),
        (HANGUL, 2),
        ("\u0600" + "1", 1),  # a prepended concatenation mark and its number
        ("क्\u200dष", 2),  # a conjunct: consonant, virama, ZWJ, consonant
        ("क्ष", 2),  # the same without ZWJ (GB9c)
    ],
)
def test_a_cluster_across_the_limit_goes_whole_to_the_next_message(cluster: str, fits: int) -> None:
    text = "x" * (DISCORD_LIMIT - fits) + cluster + "!"
    assert len(regex.findall(r"\X", cluster)) == 1
    chunks = split_message(text)
    assert chunks == ["x" * (DISCORD_LIMIT - fits), cluster + "!"]
    assert_whole_clusters(chunks, text)


def test_regional_indicators_pair_up_from_the_start_of_the_run() -> None:
    # 🇫🇷 then 🇩🇪: the limit falls between 🇩 and 🇪, the cut goes between the two flags.
    text = "x" * 1994 + "🇫🇷🇩🇪"
    assert split_message(text) == ["x" * 1994 + "🇫🇷", "🇩🇪"]


def test_an_accent_on_a_space_is_not_dropped_as_whitespace() -> None:
    # " \u0301" is one cluster (an accent shown on its own), not a space to cut at and drop:
    # that would start the next message with the accent. Here the cut is a hard one.
    text = "x" * 1990 + " \u0301" + "y" * 20
    chunks = split_message(text)
    assert chunks == ["x" * 1990 + " \u0301" + "y" * 8, "y" * 12]
    assert_whole_clusters(chunks, text)


def test_crlf_in_code_is_not_split_when_the_window_ends_between_cr_and_lf() -> None:
    # The longest prefix that fits ends with " \r": the cut is at the space, and the "\n"
    # that follows must not start the reopened block without its "\r".
    text = "```\n" + "x" * 1992 + " \r\n" + "y" * 20 + "\n```"
    chunks = split_message(text)
    assert chunks[0] == "```\n" + "x" * 1992 + "\n```"
    assert chunks[1] == "```\n\r\n" + "y" * 20 + "\n```"
    assert_valid(chunks, DISCORD_LIMIT)
    assert_whole_clusters(chunks, text)


def test_crlf_lines_are_cut_between_lines() -> None:
    text = "\r\n".join(f"{n:04}" + "é" * 40 for n in range(100))
    chunks = split_message(text, 100)
    assert_valid(chunks, 100)
    assert_whole_clusters(chunks, text)


def test_a_cluster_longer_than_a_message_is_cut_between_code_points() -> None:
    text = "a" + "\u0301" * 5000 + " b"
    chunks = split_message(text)
    assert_valid(chunks, DISCORD_LIMIT)
    assert_carries(chunks, text)
    assert [len(chunk) for chunk in chunks] == [2000, 2000, 1003]
    assert stream(list(text), DISCORD_LIMIT) == chunks


@pytest.mark.parametrize(
    "text",
    [
        "```py\na" + "\u0301" * 5000 + "\n```",  # in a code block
        "x" * 10 + "\u200d" * 3000,  # a whole cut before the long cluster, then inside it
        " " * 1990 + "a" + "\u0301" * 3000,  # after leading whitespace
        "\u0600" * 3000,  # prepended marks join each other and what follows
    ],
)
def test_long_clusters_make_progress_everywhere(text: str) -> None:
    chunks = split_message(text)
    assert_valid(chunks, DISCORD_LIMIT)
    assert_carries(chunks, text)
    assert stream(list(text), DISCORD_LIMIT) == chunks


def test_a_space_holding_many_marks_never_makes_a_blank_chunk() -> None:
    text = " " + "\u0301" * 100
    chunks = split_message(text, MIN_LIMIT)
    assert_valid(chunks, MIN_LIMIT)
    assert_carries(chunks, text)


def test_leading_whitespace_is_dropped_rather_than_splitting_a_cluster() -> None:
    # The window (2001 units) ends inside the family emoji after 1995 spaces: the emoji fits
    # in the next message whole, so the spaces are dropped and nothing is cut yet.
    text = " " * 1995 + FAMILY + "y"
    assert take_chunk(text) == ("", FAMILY + "y")
    assert split_message(text) == [FAMILY + "y"]


def test_cuts_at_whitespace_are_unchanged() -> None:
    text = ("word " * 399) + "é" * 10 + FAMILY
    assert split_message(text) == [("word " * 399).rstrip(), "é" * 10 + FAMILY]


# --------------------------------------------------------------------------------------------
# Strategies: text rich in multi-code-point clusters, cut into arbitrary pieces

GRAPHEME_ATOMS = [
    FAMILY,
    "👨",
    "👩",
    "\u200d",  # ZWJ: joins what follows to an emoji before it
    "❤\ufe0f",
    "\ufe0f",
    E_ACUTE,
    "e",
    "\u0301",
    "\u0308\u0323",
    FLAG,
    "🇫",
    "🇷",
    "🇩🇪",
    THUMB,
    "👍",
    "🏽",
    HANGUL,
    "\u1100",
    "\u1161",
    "\u11a8",
    "\uac00",  # an LV syllable, which a T jamo extends
    "\u0600",  # prepended to what follows
    "क्",
    "\u0903",  # a spacing mark
    "\r\n",
    "\r",
    "\n",
    "\n\n",
    " ",
    "\t",
    "x",
    "word",
    "x" * 23,
    "😀",
]
CODE_ATOMS = ["```", "```py\n", "`"]


@st.composite
def grapheme_rich_texts(draw: st.DrawFn, code: bool, min_size: int = 1, max_size: int = 150) -> str:
    """Atoms joined, so clusters form across them too; sometimes without whitespace, so that
    cuts are forced (and the whitespace there is, is mostly joined to accents)."""
    atoms = GRAPHEME_ATOMS + (CODE_ATOMS if code else [])
    if draw(st.booleans()):
        atoms = [atom for atom in atoms if not atom.isspace()] + [" "]
    return "".join(draw(st.lists(st.sampled_from(atoms), min_size=min_size, max_size=max_size)))


grapheme_texts = grapheme_rich_texts(code=False)
any_grapheme_texts = grapheme_texts | grapheme_rich_texts(code=True)


@st.composite
def grapheme_cases(
    draw: st.DrawFn, min_limit: int = MIN_LIMIT, min_size: int = 10, max_size: int = 150
) -> tuple[str, int]:
    """A grapheme-rich text, with or without code, and a limit that usually makes it several
    messages."""
    text = draw(grapheme_rich_texts(draw(st.booleans()), min_size, max_size))
    most = max(min_limit, discord_len(text) // 2)
    limit = draw(st.integers(min_limit, min(most, 300)) | st.integers(min_limit, 300))
    return text, limit


PROPERTY = settings(max_examples=300, deadline=None)

# --------------------------------------------------------------------------------------------
# Properties


@PROPERTY
@given(grapheme_cases(), st.data())
def test_streaming_grapheme_rich_text_gives_the_same_messages(
    case: tuple[str, int], data: st.DataObject
) -> None:
    text, limit = case
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=40))
    assert stream(pieces_of(text, cuts), limit) == split_message(text, limit)


@PROPERTY
@given(grapheme_cases())
def test_streaming_grapheme_rich_text_one_code_point_at_a_time(case: tuple[str, int]) -> None:
    text, limit = case
    assert stream(list(text), limit) == split_message(text, limit)


@PROPERTY
@given(any_grapheme_texts, any_grapheme_texts, st.data())
def test_take_chunk_on_grapheme_rich_text_decides_before_more_text_arrives(
    text: str, more: str, data: st.DataObject
) -> None:
    shown = discord_len(close_open_fence(text))
    limit = data.draw(st.integers(MIN_LIMIT, max(MIN_LIMIT, shown - 1)))
    if shown <= limit:
        return
    chunk, rest = take_chunk(text, limit)
    assert take_chunk(text + more, limit) == (chunk, rest + more)


@PROPERTY
@given(grapheme_cases())
def test_grapheme_rich_chunks_are_valid_and_carry_the_text(case: tuple[str, int]) -> None:
    text, limit = case
    chunks = split_message(text, limit)
    assert_valid(chunks, limit)
    assert_carries(chunks, text)


@PROPERTY
@given(grapheme_texts, st.integers(MIN_LIMIT, 300))
def test_prose_is_only_cut_inside_clusters_longer_than_a_message(text: str, limit: int) -> None:
    assert_whole_clusters(split_message(text, limit), text, max_units=limit)


@PROPERTY
@given(grapheme_cases(min_limit=64, min_size=100, max_size=400))
def test_code_is_only_cut_inside_clusters_longer_than_a_message(case: tuple[str, int]) -> None:
    # In a code block a message also holds the reopened fence line and the closing fence.
    text, limit = case
    assert_whole_clusters(split_message(text, limit), text, max_units=limit // 4)


@PROPERTY
@given(any_grapheme_texts, st.integers(0, 200))
def test_the_window_decides_every_boundary_before_its_end(text: str, end: int) -> None:
    """What the splitter relies on: a boundary inside a prefix of the text (not at its end)
    is a boundary of the whole text, and the other way round."""
    end = min(end, len(text))
    assert inside_clusters(text[:end]) == inside_clusters(text) & set(range(end))
