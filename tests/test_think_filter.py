"""The <think> filter: reasoning left in the content by older servers is never shown."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.think_filter import ThinkFilter


def run(deltas: list[str]) -> str:
    f = ThinkFilter()
    return "".join(f.feed(d) for d in deltas) + f.flush()


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c for c in cuts if 0 <= c <= len(text)})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=60), st.lists(st.integers(0, 120), max_size=12))
def test_a_leading_think_block_is_removed_however_it_is_split(
    reasoning: str, answer: str, cuts: list[int]
) -> None:
    reasoning = reasoning.replace("</think>", "")
    text = f"\n<think>{reasoning}</think>\n\n{answer}"
    f = ThinkFilter()
    shown = "".join(f.feed(d) for d in split(text, cuts)) + f.flush()
    assert shown.lstrip() == answer.lstrip()
    assert f.thought == reasoning  # kept, to be shown on request


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.lists(st.integers(0, 80), max_size=12))
def test_text_without_a_leading_think_block_passes_unchanged(text: str, cuts: list[int]) -> None:
    if text.lstrip().startswith("<think>"):
        text = "x" + text
    assert run(split(text, cuts)) == text


def test_a_think_tag_later_in_the_answer_is_text() -> None:
    assert run(["Use ", "<think>", " tags"]) == "Use <think> tags"


def test_an_unfinished_think_block_shows_nothing() -> None:
    assert run(["<think>", "still going"]) == ""
