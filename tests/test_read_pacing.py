"""The shared read beat: many streams, one timer, nobody held back who need not be."""

from __future__ import annotations

import asyncio

from bot.read_pacing import ReadTicker


def test_only_a_stream_that_read_within_the_beat_waits() -> None:
    ticker = ReadTicker(0.05)
    assert ticker.due(last_read=10.0, now=10.01)
    assert not ticker.due(last_read=10.0, now=10.05)  # a slow stream reads at once


async def test_one_timer_wakes_every_waiting_stream() -> None:
    ticker = ReadTicker(0.05)
    loop = asyncio.get_running_loop()
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    waiters = [asyncio.ensure_future(ticker.beat()) for _ in range(100)]
    await asyncio.sleep(0)
    assert len(loop._scheduled) == timers_before + 1  # type: ignore[attr-defined]
    await asyncio.wait_for(asyncio.gather(*waiters), 5)


async def test_a_cancelled_stream_does_not_take_the_beat_from_the_others() -> None:
    ticker = ReadTicker(0.05)
    leaving = asyncio.ensure_future(ticker.beat())
    staying = asyncio.ensure_future(ticker.beat())
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.wait_for(staying, 5)
    assert leaving.cancelled()
    # and the next beat is scheduled afresh
    await asyncio.wait_for(ticker.beat(), 5)


def test_a_beat_left_behind_by_a_closed_loop_does_not_stall_the_next_one() -> None:
    ticker = ReadTicker(0.05)

    async def abandon() -> None:
        waiter = asyncio.ensure_future(ticker.beat())
        await asyncio.sleep(0)
        assert not waiter.done()

    asyncio.run(abandon())  # its loop closes with a waiter still listed

    async def next_beat() -> None:
        await asyncio.wait_for(ticker.beat(), 5)

    asyncio.run(next_beat())
