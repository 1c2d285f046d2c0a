"""At scale, end to end, out of process (issue 13): two bot processes (``SHARD_COUNT=2``, one
shard each) against the sharded fake Discord, one real Redis and two fake Ollamas
(tests/scale_cluster.py), with twelve guilds, six on each shard.

1. A mention in every channel: each is answered, by the process of its guild's shard only, and
   Redis holds each exchange once.
2. Long answers in every channel, and one fake Ollama dies while some stream from it: every
   answer that had not started streaming from it is answered in full (by the other one), the
   ones that were streaming from it end with the cut-off note, no channel gets two answers, and
   the history holds exactly the completed exchanges.
3. ``kill -9`` of one bot process: the other keeps answering its shard; restarted, the killed
   one's conversations go on from Redis (the prompts carry the earlier exchanges).

Only behaviour is observed: the fake Discord's messages and dispatches, what the fake Ollamas
were asked and how far they got, the history in Redis, and the processes' ``event=reply``
log lines. Nothing here depends on how the processes coordinate among themselves.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.history_store import Turn
from bot.ollama_errors import StreamInterrupted
from bot.user_messages import cut_off_note
from tests.fake_ollama import RecordedRequest as OllamaRequest
from tests.fake_ollama import Reply
from tests.scale_cluster import Channel, ScaleCluster, ShardRun

SURVIVOR, DOOMED = 0, 1  # the fake Ollamas, by index
KILLED_SHARD = 1  # the bot process killed with kill -9 in round 3

#: Tokens per answer, by round: round 2's answers are long, so some stream when Ollama dies.
TOKENS = {1: 6, 2: 120, 3: 6}
#: Seconds between tokens, by round. Round 2 on the Ollama that will die is slower still: 12 s
#: per answer, so none of its answers can finish before it dies (about a second after the first
#: of them is shown); the same answers from the survivor take about a second.
TOKEN_DELAY = {1: 0.02, 2: 0.01, 3: 0.02}
DOOMED_TOKEN_DELAY = 0.1
#: A request "held" by the dying Ollama (a cold model load): accepted, nothing sent back yet.
HOLD_SECONDS = 600.0

TAG_RE = re.compile(r"\b(c\d{2}r(\d))\b")
#: The note of a reply whose stream broke after text was shown: the connection was cut.
CUT_OFF = cut_off_note(StreamInterrupted("dropped", "the connection was cut"))


# --- the conversation script -----------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One mention: where, its tag (channel and round), and its Discord message id."""

    channel: Channel
    tag: str
    message_id: int


def question(tag: str) -> str:
    return f"{tag} please answer"


def prompt(tag: str) -> str:
    """The user turn as the bot sends and stores it: the speaker's name first."""
    return f"Alice: {question(tag)}"


def round_of(tag: str) -> int:
    match = TAG_RE.fullmatch(tag)
    assert match is not None, tag
    return int(match.group(2))


def answer_tokens(tag: str) -> list[str]:
    """The model's answer to ``tag``: starts with the tag, so an answer in the wrong channel
    or to the wrong question shows."""
    return [f"{tag}:"] + [f" w{i}" for i in range(1, TOKENS[round_of(tag)])]


def answer(tag: str) -> str:
    return "".join(answer_tokens(tag))


def exchange(tag: str) -> list[Turn]:
    return [Turn("user", prompt(tag)), Turn("assistant", answer(tag))]


class Responder:
    """A fake Ollama's answers: each tagged question gets its tag's answer, at this server's
    pace. With ``hold_round``, every second request of that round is held before its first
    byte (as during a cold model load) until the server goes away."""

    def __init__(self, token_delay: dict[int, float], hold_round: int | None = None) -> None:
        self.token_delay = token_delay
        self.hold_round = hold_round
        self.seen_in_hold_round = 0

    def __call__(self, messages: list[dict[str, Any]]) -> Reply | None:
        found = TAG_RE.search(str(messages[-1].get("content", ""))) if messages else None
        if found is None:
            return None  # not one of ours: the fake's default answer
        tag, turn_round = found.group(1), int(found.group(2))
        reply = Reply(tokens=answer_tokens(tag), token_delay=self.token_delay[turn_round])
        if turn_round == self.hold_round:
            self.seen_in_hold_round += 1  # called in arrival order, in the server's thread
            if self.seen_in_hold_round % 2 == 0:
                reply.load_delay = HOLD_SECONDS
        return reply


def asked_tag(request: OllamaRequest) -> str | None:
    """The tag of the question a generation request answers (its last message)."""
    assert isinstance(request.json, dict)
    found = TAG_RE.search(str(request.json["messages"][-1].get("content", "")))
    return found.group(1) if found else None


def requests_for(cluster: ScaleCluster, index: int, tag: str) -> list[OllamaRequest]:
    return [r for r in cluster.chat_requests(cluster.ollamas[index]) if asked_tag(r) == tag]


def ask_in(cluster: ScaleCluster, channels: list[Channel], turn_round: int) -> list[Ask]:
    asks = []
    for channel in channels:
        tag = f"c{cluster.channels.index(channel):02d}r{turn_round}"
        asks.append(Ask(channel, tag, cluster.mention(channel, question(tag))))
    return asks


def reply_events(cluster: ScaleCluster, ask: Ask) -> list[tuple[ShardRun, dict[str, str]]]:
    """The ``event=reply`` lines (any process) of the turn that answered ``ask``."""
    return [
        (run, fields)
        for run, fields in cluster.reply_events()
        if fields.get("message") == str(ask.message_id)
    ]


def all_logged(cluster: ScaleCluster, asks: list[Ask]) -> bool:
    return all(reply_events(cluster, ask) for ask in asks)


def wait_until_ended(cluster: ScaleCluster, asks: list[Ask], seconds: float, what: str) -> None:
    """Until every ask's turn has ended: its process logs that last, after Discord showed the
    turn's final text and the history was written."""
    cluster.eventually(lambda: all_logged(cluster, asks), seconds, what)


def check_answered_in_full(cluster: ScaleCluster, asks: list[Ask]) -> None:
    for ask in asks:
        text = cluster.reply_text(ask.channel, ask.message_id)
        assert text == answer(ask.tag), (ask, text)


def check_answered_by_own_shard(
    cluster: ScaleCluster, asks: list[Ask], run_of_shard: dict[int, ShardRun] | None = None
) -> dict[str, str]:
    """Each ask went (as a gateway event) to its shard's session only, was answered once,
    by a process of that shard (``run_of_shard``: that very process), with one Discord reply;
    returns each tag's logged outcome."""
    outcomes = {}
    for ask in asks:
        shard = ask.channel.shard
        dispatched = cluster.discord.dispatched_to("MESSAGE_CREATE", ask.message_id)
        # A killed process's session stays resumable in the fake (as on Discord) and still
        # collects its shard's events: each session that got it is one of that shard's.
        assert dispatched and set(dispatched) == {shard}, (ask, dispatched)
        events = reply_events(cluster, ask)
        assert len(events) == 1, (ask, events)
        [(run, fields)] = events
        assert run.shard == shard, (ask, run.shard)
        if run_of_shard is not None:
            assert run is run_of_shard[shard], (ask, run.generation)
        assert fields["conversation"] == ask.channel.conversation, fields
        replies = cluster.replies_to(ask.channel, ask.message_id)
        assert len(replies) == 1, (ask, [m["content"] for m in replies])
        outcomes[ask.tag] = fields["outcome"]
    return outcomes


def check_history(cluster: ScaleCluster, expected: dict[Channel, list[tuple[Ask, bool]]]) -> None:
    """Redis holds, per conversation, exactly the exchanges that completed, in order, each
    once: the question (with the Discord message it came from) then its answer."""
    stored = cluster.history(c.conversation for c in expected)
    for channel, asks in expected.items():
        turns = stored[channel.conversation]
        kept = [ask for ask, completed in asks if completed]
        assert turns == [t for ask in kept for t in exchange(ask.tag)], (channel, turns)
        assert [t.role for t in turns] == ["user", "assistant"] * len(kept)
        assert [t.ref for t in turns[::2]] == [ask.message_id for ask in kept], turns
        ids = [t.id for t in turns]
        assert ids == sorted(set(ids)), ids


# --- the test --------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ScaleCluster]:
    with ScaleCluster(tmp_path, shard_count=2, guilds_per_shard=6, backends=2, slots=2) as c:
        c.start()
        c.ollamas[SURVIVOR].responder = Responder(TOKEN_DELAY)
        c.ollamas[DOOMED].responder = Responder({**TOKEN_DELAY, 2: DOOMED_TOKEN_DELAY}, 2)
        yield c


def test_two_shard_processes_share_redis_survive_a_dead_ollama_and_a_kill_9(
    cluster: ScaleCluster,
) -> None:
    began = time.monotonic()
    with cluster.diagnosed():
        history = round_1_every_channel_answered_by_its_shard(cluster)
        print(f"round 1 done at {time.monotonic() - began:.1f} s")
        round_2_an_ollama_dies_under_load(cluster, history)
        print(f"round 2 done at {time.monotonic() - began:.1f} s")
        round_3_kill_9_and_restart(cluster, history)
        print(f"round 3 done at {time.monotonic() - began:.1f} s")
        assert cluster.discord.server_errors == []
        # The two processes draw on one REST budget in Redis: together they stay within
        # Discord's 50 requests per second.
        print(f"HTTP 429s from the fake Discord, by scope: {cluster.discord.rate_limited}")
        assert cluster.discord.rate_limited.get("global", 0) == 0


#: Per channel, its mentions so far and whether each one's answer completed.
Script = dict[Channel, list[tuple[Ask, bool]]]


def round_1_every_channel_answered_by_its_shard(cluster: ScaleCluster) -> Script:
    assert len({c.guild for c in cluster.channels}) >= 10
    assert {c.shard for c in cluster.channels} == {0, 1}
    assert cluster.discord.identifies_by_shard == {0: 1, 1: 1}

    asks = ask_in(cluster, cluster.channels, 1)
    wait_until_ended(cluster, asks, 30, "every round-1 mention answered")
    check_answered_in_full(cluster, asks)

    outcomes = check_answered_by_own_shard(cluster, asks)
    assert set(outcomes.values()) == {"ok"}, outcomes
    for ask in asks:
        # One generation per question, on one of the two Ollamas.
        made = requests_for(cluster, SURVIVOR, ask.tag) + requests_for(cluster, DOOMED, ask.tag)
        assert len(made) == 1, (ask, made)
    script = {a.channel: [(a, True)] for a in asks}
    check_history(cluster, script)
    return script


def round_2_an_ollama_dies_under_load(cluster: ScaleCluster, script: Script) -> None:
    doomed = cluster.ollamas[DOOMED]
    asks = ask_in(cluster, cluster.channels, 2)
    by_tag = {a.tag: a for a in asks}

    def shown(ask: Ask) -> str | None:
        """The answer's text on Discord, once it shows any (not the queue placeholder)."""
        text = cluster.reply_text(ask.channel, ask.message_id)
        return text if text is not None and text.startswith(f"{ask.tag}:") else None

    def doomed_round_2() -> list[tuple[str, OllamaRequest]]:
        tagged = ((asked_tag(r), r) for r in cluster.chat_requests(doomed))
        return [(tag, r) for tag, r in tagged if tag in by_tag]

    def under_load() -> bool:
        """The dying Ollama streams an answer that Discord already shows, and holds another
        request it has sent nothing for yet."""
        requests = doomed_round_2()
        waiting = [r for _, r in requests if r.event_time("first_byte") is None]
        streaming = [tag for tag, r in requests if r.tokens_sent > 0]
        return bool(waiting) and any(shown(by_tag[tag]) for tag in streaming)

    cluster.eventually(under_load, 30, "an answer streaming from the doomed Ollama, shown")
    shown_before = {a.tag: text for a in asks if (text := shown(a)) is not None}
    cluster.stop_ollama(DOOMED)
    # What "had started streaming" means: the dead Ollama had written at least one token line of the
    # answer to the bot's socket (``tokens_sent``), read once its thread has stopped: the counts are
    # final then. (Stopping takes a moment, in which a request that arrived over a kept-alive
    # connection may still start and get a line or two.) The fake counts a line right after writing
    # it, in the same step of its event loop (writing only waits when the socket's buffer is full,
    # and the bot reads far faster than 10 lines a second), and the stop runs on that loop too: an
    # answer with no line counted got no byte of text. It had not started, and must be answered in
    # full by the other Ollama (the bot fails over before the first byte). An answer whose text
    # Discord showed before the kill was streaming from it, and must end with the cut-off note (the
    # text shown stays; asking another server would repeat it). In between, a line written just
    # before the kill may be lost with the connection before the bot reads it (aiohttp drops what is
    # buffered once the connection has failed): then either outcome, in full or cut off, is right,
    # and nothing else.
    sent_by_doomed: dict[str, int] = {}
    never_answered: set[str] = set()  # in flight on the dead Ollama, not one token sent back
    for tag, request in doomed_round_2():
        sent_by_doomed[tag] = max(sent_by_doomed.get(tag, 0), request.tokens_sent)
        if request.tokens_sent == 0:
            never_answered.add(tag)

    wait_until_ended(cluster, asks, 60, "every round-2 mention answered or cut off")

    outcomes = check_answered_by_own_shard(cluster, asks)
    cut_off: set[str] = set()
    for ask in asks:
        text = cluster.reply_text(ask.channel, ask.message_id)
        assert text is not None
        assert len(cluster.bot_messages(ask.channel)) == 2, ask  # round 1's answer and this one
        started = sent_by_doomed.get(ask.tag, 0) > 0
        if text == answer(ask.tag):
            assert outcomes[ask.tag] == "ok", (ask, outcomes[ask.tag])
            assert not (started and ask.tag in shown_before), (ask, "was streaming", text)
            # Generated in full once (a failed-over request had got nothing before).
            full = [
                r
                for index in (SURVIVOR, DOOMED)
                for r in requests_for(cluster, index, ask.tag)
                if r.tokens_sent == TOKENS[2]
            ]
            assert len(full) == 1, (ask, full)
            script[ask.channel].append((ask, True))
            continue
        # Not answered in full: it must have been streaming from the dead Ollama, and end
        # with the cut-off note after a part of its answer.
        assert started, (ask, "lost although it had not started streaming", text)
        assert text.endswith(f"\n\n{CUT_OFF}"), (ask, text)
        partial = text.removesuffix(f"\n\n{CUT_OFF}")
        assert partial and answer(ask.tag).startswith(partial), (ask, text)
        assert partial.startswith(shown_before.get(ask.tag, "")), (ask, shown_before, text)
        assert outcomes[ask.tag] == "cut_off", (ask, outcomes[ask.tag])
        # Not asked again elsewhere: its text would have been repeated.
        assert requests_for(cluster, SURVIVOR, ask.tag) == [], ask
        script[ask.channel].append((ask, False))
        cut_off.add(ask.tag)
    assert cut_off, "no answer was streaming from the Ollama that died"
    # The requests the dead Ollama held without a byte were answered in full, elsewhere.
    assert never_answered, "no request was waiting on the Ollama that died"
    for tag in never_answered:
        assert tag not in cut_off, tag
        [request] = [r for r in requests_for(cluster, SURVIVOR, tag) if r.tokens_sent]
        assert request.tokens_sent == TOKENS[2]
    print(
        f"round 2: {len(cut_off)} cut off, {len(asks) - len(cut_off)} answered in full, "
        f"of which {len(never_answered)} failed over from requests held by the dead Ollama"
    )
    check_history(cluster, script)


def round_3_kill_9_and_restart(cluster: ScaleCluster, script: Script) -> None:
    other = 1 - KILLED_SHARD
    stayed = cluster.bot(other)
    code = cluster.kill_bot(KILLED_SHARD, signal.SIGKILL)
    assert code == -signal.SIGKILL
    before = cluster.history(c.conversation for c in cluster.channels)

    # While the killed process is down, the other one keeps answering its shard.
    asks = ask_in(cluster, cluster.channels_on(other), 3)
    wait_until_ended(cluster, asks, 30, "the other process's round-3 answers")
    check_answered_in_full(cluster, asks)
    assert not cluster.bot(KILLED_SHARD).alive
    # Restarted with the same settings (a new IDENTIFY on its shard: the dead process's
    # session is not resumed), the killed one answers its shard again, from Redis.
    restarted = cluster.restart_bot(KILLED_SHARD)
    assert restarted.generation == 2
    assert cluster.discord.identifies_by_shard == {other: 1, KILLED_SHARD: 2}
    asks += ask_in(cluster, cluster.channels_on(KILLED_SHARD), 3)
    wait_until_ended(cluster, asks, 30, "every round-3 mention answered")
    check_answered_in_full(cluster, asks)

    outcomes = check_answered_by_own_shard(cluster, asks, {other: stayed, KILLED_SHARD: restarted})
    assert set(outcomes.values()) == {"ok"}, outcomes
    assert stayed.alive and len(cluster.runs[other]) == 1
    for ask in asks:
        # Its conversation goes on: the prompt is the stored history, then the new question.
        [request] = requests_for(cluster, SURVIVOR, ask.tag)
        assert isinstance(request.json, dict)
        sent = [
            {"role": m["role"], "content": m["content"]}
            for m in request.json["messages"]
            if m["role"] != "system"
        ]
        history = [t.as_message() for t in before[ask.channel.conversation]]
        assert len(history) >= 2, (ask, history)  # at least round 1's exchange
        assert sent == [*history, {"role": "user", "content": prompt(ask.tag)}], (ask, sent)
        script[ask.channel].append((ask, True))
    for channel in cluster.channels:
        assert len(cluster.bot_messages(channel)) == 3, channel  # one answer per mention
    check_history(cluster, script)
