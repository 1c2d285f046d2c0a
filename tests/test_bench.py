"""The benchmarks still run (their figures are read by hand; nothing here checks speed)."""

from __future__ import annotations

import pytest

from bench import context


async def test_context_benchmark_runs_and_our_strategy_stays_within_budget(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await context.main(turns=40)
    out = capsys.readouterr().out
    ours = out.split("\nours", 1)[1]
    assert "over the 3,072-token budget: never" in ours
    assert "everything" in out and "slide" in out


async def test_per_token_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import per_token

    for per_read in (1, 3):
        assert await per_token.measure(501, per_read) > 0
