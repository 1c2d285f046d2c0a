"""The load benchmark still runs end to end (its figures are read by hand; nothing here checks
speed): the real bot as a subprocess, the fake Discord with rate limits, the fake Ollama."""

from __future__ import annotations

import sys

import pytest

from bench import load

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_load_benchmark_prints_its_figures_and_loses_no_reply(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = "--channels 2 --mentions 2 --tokens 20 --token-rate 200 --timeout 60"
    report = load.main(args.split())

    out = capsys.readouterr().out
    for figure in (
        "replies",
        "wall time",
        "HTTP 429s to the bot",
        "first visible text  p50",
        "final text lag      p50",
        "Discord updates     per reply mean",
        "bot CPU",
        "bot peak RSS",
        "event-loop lag p99",
        "REST requests",
    ):
        assert figure in out, out
    assert "4 completed, 0 lost of 4" in out, out
    assert report.lost == 0
    assert report.tokens == 4 * 20
    # Every reply was correlated: its first create, its final text, Ollama's last token.
    for reply in report.replies:
        assert reply.time_to_first_text is not None, reply
        assert reply.final_lag is not None, reply
        assert reply.updates >= 1
    assert report.peak_rss_kib > 0
    assert report.exit_code == 0


def test_load_benchmark_runs_two_sharded_processes_on_two_backends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = (
        "--processes 2 --backends 2 --channels 4 --mentions 1 --slots 4 --tokens 20 "
        "--token-rate 200 --timeout 60"
    )
    report = load.main(args.split())

    out = capsys.readouterr().out
    for figure in (
        "topology            2 bot processes (SHARD_COUNT=2), 2 Ollama backends, Redis",
        "answers per second",
        "final text lag      p50",
        " max ",
        "Discord requests    ",
        "per answer",
        "process 0           shard 0: 2 answers completed",
        "process 1           shard 1: 2 answers completed",
        "Ollama backends     #0 ",
        ", #1 ",
        "Redis calls         ",
        "per streamed answer",
        "Redis top commands  ",
    ):
        assert figure in out, out
    assert "4 completed, 0 lost of 4" in out, out
    assert report.lost == 0
    assert report.tokens == 4 * 20
    # Each shard's process answered its own guild's two channels; the backends together
    # served every request; Redis was used.
    assert [p.answers for p in report.processes] == [2, 2]
    assert sum(report.backend_requests) == 4
    assert report.redis_calls
    assert [p.exit_code for p in report.processes] == [0, 0]
