"""Metadata writes that follow each other closely share one transaction (issue 16, speed): each
batch wakes the database thread and then the event loop, which is what costs on a busy machine."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from beiran.store.dbbatch import WriteBatcher


class FakeDatabase:
    """Only what a batch needs of peewee's database: a transaction context."""

    def atomic(self) -> Any:
        from contextlib import nullcontext
        return nullcontext()


def test_writes_queued_within_the_window_share_one_batch():
    async def go() -> tuple[list[int], list[int]]:
        pool = ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()
        hops: list[int] = []

        async def run_db(fn: Any, *args: Any) -> Any:
            hops.append(len(args[0]))
            return await loop.run_in_executor(pool, fn, *args)

        out = []
        for window in (0.0, 0.01):
            hops.clear()
            batcher = WriteBatcher(run_db, FakeDatabase, window=window)

            async def write_later(i: int, batcher: WriteBatcher = batcher) -> int:
                await asyncio.sleep(0.001 * i)  # a few writes, a millisecond apart
                return await batcher.write(lambda: i * 10)
            results = await asyncio.gather(*(write_later(i) for i in range(4)))
            assert results == [0, 10, 20, 30]
            out.append(list(hops))
        pool.shutdown()
        return out[0], out[1]

    without, within = asyncio.run(go())
    assert len(without) > 1  # each write found the batcher idle and went alone
    assert within == [4]  # one transaction, one hop to the database thread
