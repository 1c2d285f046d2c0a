"""Split model output into valid Discord messages, without breaking ``` code blocks.

A reply from the model can be any length, but a Discord message holds at most 2000 characters,
must not be empty or whitespace-only, and should never end inside a code block: an unbalanced
fence swallows the rest of that message, and the continuation in the next message loses its
highlighting. This module decides where to cut and how to close/reopen a block around the cut.
It is pure (no I/O, no discord import) so it can be tested exhaustively.

The streaming reply writer uses it like this::

    tail = ""
    for piece in reply:
        tail += piece
        while discord_len(close_open_fence(tail)) > DISCORD_LIMIT:
            chunk, tail = take_chunk(tail)
            if chunk:  # "" only after a flood of whitespace, see take_chunk
                freeze(chunk)
        show(close_open_fence(tail))

and gets exactly the messages :func:`split_message` returns for the whole reply, however the
reply was broken into pieces. Two design rules make that hold:

* The display length, ``discord_len(close_open_fence(tail))``, never shrinks when text is
  appended, so a tail that was too long stays too long (see :func:`close_open_fence`).
* :func:`take_chunk` looks only at the *window*: the shortest prefix of its input whose
  display is over the limit. Text that arrives later cannot change a cut already made.

Fences are counted the simple way Discord's markdown roughly does: every non-overlapping
"```" scanned left to right toggles code on or off, and a chunk is balanced when it holds an
even number of them.

Cuts fall between extended grapheme clusters (Unicode UAX #29, the ``regex`` module's ``\\X``):
a family emoji, a letter and its accents, a flag, an emoji and its skin tone, a Hangul syllable
written as jamo, "\\r\\n" all stay in one message. A cut drops whitespace only where its cluster
is nothing but whitespace (" " + U+0301 is an accent shown on its own: it is kept whole).
Whether a position is a boundary depends on the characters before it and the one at it, never
on what follows, so the window decides every boundary except the one at its own end: that one
is never assumed (a space or "\\r" ending the window may yet take a combining mark or "\\n").
Only a cluster longer than a whole message is cut between code points, to make progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import regex

from .fences import (
    FENCE,
    MAX_TAG_LEN,
    close_open_fence,
    discord_len,
    fence_line,
    header,
    open_fence,
)

__all__ = [
    "DISCORD_LIMIT",
    "MAX_TAG_LEN",
    "MIN_LIMIT",
    "close_open_fence",
    "discord_len",
    "open_fence",
    "split_message",
    "take_chunk",
]

DISCORD_LIMIT: Final = 2000
"""Maximum length of a message's content."""

MIN_LIMIT: Final = 16
"""Smallest supported limit: room for a reopened fence, a little code and a closing fence."""

_CLUSTER: Final = regex.compile(r"\X")
# Characters always followed by a cluster boundary (UAX #29 GB4); not CR, which LF may follow.
_BREAK_AFTER: Final = regex.compile(r"[\p{Grapheme_Cluster_Break=Control}\n]")
# Appended to a chunk cut inside a code block. The newline keeps the fence from merging with
# backticks the chunk ends with ("x``" + "```" would count as "`````" = one fence + "``").
_CLOSING: Final = "\n" + FENCE
# Room a chunk starting with a reopened fence line needs besides the tag: the fence and its
# newline, one indivisible piece of code (at most 3 units, e.g. a fence) and the closing
# fence. Reproduced tags are capped to leave this much, so every chunk can make progress.
_REOPEN_OVERHEAD: Final = len(FENCE) + 1 + 3 + len(_CLOSING)


def _check_limit(limit: int) -> None:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")


@dataclass(frozen=True)
class _Cut:
    """A place to cut the window: the chunk is ``window[lead:end]``, the rest resumes at
    ``resume``; ``window[end:resume]`` is whitespace dropped at the cut."""

    end: int
    resume: int
    after: int  # first non-whitespace at or after ``resume`` (or the window's end)
    newlines: int  # dropped line breaks: 2 = paragraph (capped), 1 = line, 0 = space, -1 = hard
    whole: bool = True  # between two grapheme clusters (else between code points of one)


class _Window:
    """The shortest prefix of a text whose display exceeds the limit, with per-position
    bookkeeping so each candidate cut is checked in O(1)."""

    def __init__(self, text: str, limit: int) -> None:
        units = [0]  # units[i] == discord_len(text[:i])
        fences = [0]  # fences[i]: fences complete within text[:i]
        last_fence = [-1]  # last_fence[i]: start of the last of those, -1 if none
        runs = [0]  # runs[i]: length of the backtick run that text[:i] ends with
        end = None
        for i, char in enumerate(text):
            run = runs[-1] + 1 if char == "`" else 0
            fence_done = run > 0 and run % len(FENCE) == 0
            # discord_len(char), without encoding: two UTF-16 units beyond the BMP.
            units.append(units[-1] + (1 if char < "\U00010000" else 2))
            fences.append(fences[-1] + fence_done)
            last_fence.append(i + 1 - len(FENCE) if fence_done else last_fence[-1])
            runs.append(run)
            completion = len(FENCE) - run % len(FENCE) if fences[-1] % 2 else 0
            if units[-1] + completion > limit:
                end = i + 1
                break
        if end is None:
            raise ValueError("text fits in one message; there is nothing to cut")
        self.text = text[:end]
        self.limit = limit
        self.units = units
        self.fences = fences
        self.last_fence = last_fence
        self.runs = runs
        self._code_starts: dict[int, int] = {}
        self._clusters()
        # The tag must leave room for some code and a closing fence in the next chunk.
        self.max_tag = min(MAX_TAG_LEN, limit - _REOPEN_OVERHEAD)

    def _clusters(self) -> None:
        """Grapheme bookkeeping: ``breaks[i]``, whether a cluster starts at ``i`` (never
        assumed at the window's end); ``space[i]``, whether ``text[i]`` is whitespace a cut may
        drop (its cluster is all whitespace); ``settled``, how far whitespace may be dropped;
        ``lead``, where the first message would start (after whitespace); ``solid``, the first
        character that is not whitespace from there.
        """
        text = self.text
        clusters = _CLUSTER.findall(text)
        self.space = [char.isspace() for char in text]
        if len(clusters) == len(text):  # one code point each, as in most text: a fast path
            self.breaks = [True] * len(text)
        else:
            self.breaks = [False] * len(text)
            start = 0
            for cluster in clusters:
                self.breaks[start] = True
                if len(cluster) > 1 and not cluster.isspace():  # " " + U+0301 is no space
                    self.space[start : start + len(cluster)] = [False] * len(cluster)
                start += len(cluster)
        self.breaks.append(False)  # at the window's end: not decided yet
        # How far whitespace may be dropped: not the last character unless a boundary is
        # sure to follow it (" " may take an accent, "\r" a "\n" that must stay with it).
        self.settled = len(text) if _BREAK_AFTER.match(text[-1]) else len(text) - 1
        self.lead = next((i for i, space in enumerate(self.space) if not space), len(text))
        self.lead = min(self.lead, self.settled)
        self.solid = len(text) - len(text[self.lead :].lstrip())

    def in_code(self, pos: int) -> bool:
        return self.fences[pos] % 2 == 1

    def code_start(self, pos: int) -> int:
        """Where the code of the block open at ``pos`` begins (after its fence line)."""
        fence = self.last_fence[pos]
        if fence not in self._code_starts:  # one look per block, not per position in it
            self._code_starts[fence] = header(self.text, fence)[0]
        return self._code_starts[fence]

    def size(self, cut: _Cut) -> int:
        closing = len(_CLOSING) if self.in_code(cut.end) else 0
        return self.units[cut.end] - self.units[self.lead] + closing

    def candidates(self) -> list[_Cut]:
        """Every cut that fits the limit at each whitespace run, and the hard cuts (between two
        non-whitespace characters where no fence or surrogate pair would be split; ``whole`` if
        between two grapheme clusters) that can be chosen: the last that fits of each kind
        (whole or not, tidy or not), since :meth:`pick` takes the last cut of a tier and hard
        cuts are only ever the last tier. (Keeping all of them, one per character, was most
        of the cost of a cut.)"""
        text, space, cuts = self.text, self.space, []
        i = self.lead + 1
        while i < len(text):
            if space[i]:
                j = i
                while j < len(text) and space[j]:
                    j += 1
                newlines = text.count("\n", i, j)
                resume = j
                if newlines and self.in_code(i):
                    # Keep the indentation of the next code line; drop blank lines. (Not when
                    # that would resume right at the block's first line: then the rest would
                    # be the input again. Such a cut is a last resort, see `tidy`.)
                    line_start = text.rfind("\n", i, j) + 1
                    if line_start > self.code_start(i):
                        resume = line_start
                cuts.append(_Cut(i, min(resume, self.settled), j, min(newlines, 2)))
                i = j + 1  # text[j] is not whitespace: no cut between it and text[j - 1]
            else:
                i += 1
        return [cut for cut in cuts if self._fits(cut)] + self._last_hard_cuts()

    def _last_hard_cuts(self) -> list[_Cut]:
        """The last hard cut that fits of each kind, looking back from the window's end and
        stopping once every kind that can occur here was found (in prose, with one code point
        per cluster and no code, that is one kind, found within a few characters)."""
        text, space = self.text, self.space
        wholes = (True, False) if not all(self.breaks[:-1]) else (True,)
        tidies = (True, False) if self.fences[-1] else (True,)  # untidy is only in code
        wanted = {(whole, tidy) for whole in wholes for tidy in tidies}
        found: dict[tuple[bool, bool], _Cut] = {}
        for i in range(len(text) - 1, self.lead, -1):
            if i <= self.solid:
                break  # a chunk of whitespace only, and so for every cut before it
            if space[i] or space[i - 1] or not self._divisible_at(i):
                continue
            cut = _Cut(i, i, i, -1, self.breaks[i])
            kind = (cut.whole, self.tidy(cut))
            if kind in found or not self._fits(cut):
                continue
            found[kind] = cut
            if len(found) == len(wanted):
                break
        return list(found.values())

    def _fits(self, cut: _Cut) -> bool:
        return cut.end > self.solid and self.size(cut) <= self.limit and self.shrinks(cut)

    def _divisible_at(self, pos: int) -> bool:
        before, after = self.text[pos - 1], self.text[pos]
        if "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff":
            return False  # a surrogate pair: half an emoji is invalid text
        # Inside a run of backticks, only between two whole fences: any other cut would change
        # which backticks pair up into fences, in this chunk and in the rest.
        return not (before == after == "`" and self.runs[pos] % len(FENCE))

    def tidy(self, cut: _Cut) -> bool:
        """A cut in code must leave code in the chunk (not just "```py" and a closing fence)
        and must not leave the rest starting with the block's own closing fence. Either way
        a message would hold an empty code block, which Discord does not render as one (its
        syntax wants at least one character of code): the "py" shows up as text."""
        if not self.in_code(cut.end):
            return True
        return cut.end > self.code_start(cut.end) and not self.text.startswith(FENCE, cut.after)

    def reopen(self, cut: _Cut) -> str:
        """The fence line the rest starts with ("" if the cut is not inside a code block)."""
        if not self.in_code(cut.end):
            return ""
        return fence_line(self.text, self.last_fence[cut.end], self.max_tag) + "\n"

    def shrinks(self, cut: _Cut) -> bool:
        """Whether the rest is shorter than the input: what makes the caller's loop end.

        Not a given inside a code block: cutting right after "```py\\n" would hand back
        "```py\\n" + the same code, forever.
        """
        return cut.resume > len(self.reopen(cut))

    def pick(self, cuts: list[_Cut]) -> _Cut | None:
        """The preferred cut: the last paragraph break that leaves at least half a message,
        else the last line break, else the last whitespace, else the last hard cut."""
        tiers = (
            [c for c in cuts if c.newlines >= 2 and self.size(c) >= self.limit // 2],
            [c for c in cuts if c.newlines >= 1],
            [c for c in cuts if c.newlines >= 0],
            cuts,
        )
        for tier in tiers:
            if tier:
                return max(tier, key=lambda cut: cut.end)
        return None

    def choose(self) -> _Cut | None:
        """The cut to make, ``None`` to drop the leading whitespace and nothing else.

        Cuts between whole clusters come first. Untidy ones (an empty code block on either
        side) are a last resort: with tiny limits, a fence line the model wrote too long to fit
        with any code, or deep indentation. Without a cut between clusters, dropping leading
        whitespace gives the next cluster a whole message of room; only when the window starts
        with a cluster longer than a message is it cut between code points.
        """
        cuts = self.candidates()
        for group in ([cut for cut in cuts if cut.whole], [] if self.lead else cuts):
            cut = self.pick([c for c in group if self.tidy(c)]) or self.pick(group)
            if cut is not None:
                return cut
        if not self.lead:
            raise AssertionError(f"no cut in {self.text!r}")  # the first character fits
        return None


def take_chunk(text: str, limit: int = DISCORD_LIMIT) -> tuple[str, str]:
    """Cut the first message off ``text``, whose display (``close_open_fence(text)``) is over
    ``limit``. Returns ``(chunk, rest)``.

    ``chunk`` is non-blank, at most ``limit`` long in :func:`discord_len` and balanced. The cut
    is the last paragraph break (blank line) that leaves a chunk of at least ``limit // 2``,
    else the last line break, else the last whitespace, else a hard cut, which never splits a
    fence, a surrogate pair or a grapheme cluster (a family emoji, a letter and its accents, a
    flag, "\\r\\n"...) unless the cluster is longer than a message. In a code block this means
    a code line is never cut in the middle when a line break is in range.

    Cut inside a code block, the chunk gets "\\n```" (its room is reserved within ``limit``) and
    ``rest`` starts with the reopening fence line, e.g. "```python\\n", so it renders on its
    own. The whitespace at the cut is dropped, except the indentation of the next code line.

    The decision depends only on the shortest prefix of ``text`` whose display exceeds
    ``limit``; what follows is passed through to ``rest`` untouched, so calling this on a
    growing text gives the same messages as :func:`split_message` on the final text. For the
    same reason whitespace is only dropped as far as that prefix reaches, and not its last
    character if what follows could still join it (a space may take an accent, "\\r" its
    "\\n"): ``rest`` may start with whitespace (the next cut drops it; Discord trims it from a
    last message anyway). If the prefix is nothing but whitespace, or whitespace and the start
    of a cluster that only fits a message whole, there is no message to make yet: ``chunk`` is
    "" and ``rest`` drops that whitespace. Callers must skip an empty chunk; it only happens
    after about ``limit`` whitespace characters in a row, or whitespace and a cluster nearly
    that long. ``rest`` is always shorter than ``text``, so a loop calling this ends.

    Raises ``ValueError`` if ``limit`` < :data:`MIN_LIMIT` or the display of ``text`` fits.
    """
    _check_limit(limit)
    window = _Window(text, limit)
    cut = window.choose()
    if cut is None:
        # Leading whitespace (or all of the window) leaves no room for a message, or for the
        # cluster after it whole: that cluster starts the next window.
        return "", text[window.lead :]
    chunk = window.text[window.lead : cut.end]
    if window.in_code(cut.end):
        chunk += _CLOSING
    return chunk, window.reopen(cut) + text[cut.resume :]


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """The whole ``text`` as Discord messages, in order.

    Repeatedly takes a chunk (see :func:`take_chunk`) while the display of the rest is over
    ``limit``; the last message is ``close_open_fence(rest)``, so a block the model never
    closed is closed. Every message is non-blank, at most ``limit`` long and balanced; empty or
    whitespace-only text gives no messages. The result equals what the streaming writer
    produces from the same text fed in any pieces.
    """
    _check_limit(limit)
    chunks: list[str] = []
    rest = text
    # len() first: measuring the display of a long rest on every round would be quadratic.
    while len(rest) > limit or discord_len(close_open_fence(rest)) > limit:
        chunk, rest = take_chunk(rest, limit)
        if chunk:
            chunks.append(chunk)
    if rest.strip():
        chunks.append(close_open_fence(rest))
    return chunks
