"""Code fences in Discord messages: whether a text ends inside a code block, how its block is
closed for display and reopened in the next message; and Discord's way of counting length.

Fences are counted the simple way Discord's markdown roughly does: every non-overlapping "```"
scanned left to right toggles code on or off. Pure, like :mod:`bot.splitter`, which uses it.
"""

from __future__ import annotations

import re
from typing import Final

MAX_TAG_LEN: Final = 32
"""Longer language tags are not reproduced when a block is reopened (they are not languages)."""

FENCE: Final = "```"
FENCE_RE: Final = re.compile(re.escape(FENCE))
# What may follow an opening fence to name a language. Discord only takes it as a language
# when a newline follows at once: "```py\n" is Python, "```py x" is code starting with "py x".
HEADER_RE: Final = re.compile(r"([A-Za-z0-9_+\-.#]*)\r?\n")


def discord_len(text: str) -> int:
    """Length as Discord counts it, conservatively: in UTF-16 code units.

    Discord's limit is 2000 "characters", but its clients measure in UTF-16, where an emoji
    outside the Basic Multilingual Plane counts twice. Counting code units is never shorter.
    ``surrogatepass`` makes stray surrogates (which JSON can carry) count 1 instead of raising.
    """
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def is_open(text: str) -> bool:
    """Whether ``text`` ends inside a code block (an odd number of fences)."""
    return len(FENCE_RE.findall(text)) % 2 == 1


def header(text: str, fence_start: int) -> tuple[int, str | None]:
    """Where the code of the block opened at ``fence_start`` begins, and its language tag.

    The tag counts only with its newline in sight: "```py" at the very end of the text may
    still become "```py x" (code) when more text arrives.
    """
    match = HEADER_RE.match(text, fence_start + len(FENCE))
    if match is None:
        return fence_start + len(FENCE), None
    return match.end(), match.group(1) or None


def fence_line(text: str, fence_start: int, max_tag: int) -> str:
    _, tag = header(text, fence_start)
    if tag is not None and len(tag) <= max_tag:
        return FENCE + tag
    return FENCE


def open_fence(text: str) -> str | None:
    """If ``text`` ends inside a code block, the fence line that reopens it, else ``None``.

    That is "```" plus the block's language tag (e.g. "```python"), so the continuation in the
    next message keeps its highlighting. Tags longer than :data:`MAX_TAG_LEN` are not
    reproduced; a bare "```" is returned instead.
    """
    starts = [match.start() for match in FENCE_RE.finditer(text)]
    if len(starts) % 2 == 0:
        return None
    return fence_line(text, starts[-1], MAX_TAG_LEN)


def close_open_fence(text: str) -> str:
    """``text`` as it can be displayed now: with its open code block (if any) closed.

    The block is closed with the *shortest* completion: "```", or just the one or two
    backticks that complete a fence the text already ends with. Discord accepts a closing
    fence at the end of a code line, so "```py\\nx = 1```" renders like "```py\\nx = 1\\n```".

    Why not always "\\n```": the writer cuts a message as soon as this display is over the
    limit, so its length must never shrink as text grows. With "\\n```", a tail 3 units under
    the limit would display 1 over it, get cut, and then the model's own "```" would have
    made the whole reply fit in one message: the result would depend on streaming timing.
    The shortest completion is monotonic: any continuation that closes the block is at least
    as long.
    """
    if not is_open(text):
        return text
    trailing_backticks = len(text) - len(text.rstrip("`"))
    return text + "`" * (len(FENCE) - trailing_backticks % len(FENCE))
