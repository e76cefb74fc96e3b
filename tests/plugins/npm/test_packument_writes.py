"""Packuments are stored behind the answer, each small one's file and row queued straight into the
store's batch of database writes (no task of its own): a reader of the stored copy finds it, and a
newer answer is written after the one before it. Concurrent asks for one packument share one
upstream request, its answer and its failure (issue 16, speed: the first ask runs the request itself).

In-process: the real PackumentCache and Upstream on a real store and database, against verdaccio
through the counting proxy."""

from __future__ import annotations

import asyncio
import json

import pytest

from beiran.errors import UpstreamError
from beiran_plugins.npm.models import MODELS, NpmPackument
from beiran_plugins.npm.packuments import PackumentCache
from beiran_plugins.npm.upstream import Upstream
from beiran_testkit.instore import open_context

NAMES = [f"beiran-test-p{i:02d}" for i in range(21, 24)]


async def make_cache(tmp_path, upstream_url: str) -> PackumentCache:
    ctx = await open_context(tmp_path, MODELS)
    cache = PackumentCache(ctx, Upstream(upstream_url, timeout=10), tmp_path / "packuments", ttl=0, share=False)
    await cache.load()
    return cache


def test_a_reader_finds_the_stored_copy_and_a_newer_answer_is_written_last(tmp_path, upstream):
    async def go():
        cache = await make_cache(tmp_path, upstream.url)
        await cache.get(NAMES[0], "full")
        got = await asyncio.wait_for(cache.for_peer(NAMES[0], "full"), 5)
        assert got is not None and json.loads(got[0])["name"] == NAMES[0]
        # and a newer answer for the same packument is written after the one before it
        await cache.get(NAMES[0], "full", refresh=True)
        await asyncio.wait_for(cache.flush(), 5)
        rows = await cache.ctx.run_db(lambda: [(r.name, r.fetched) for r in NpmPackument.select()])
        assert len(rows) == 1 and rows[0][1] == cache.mem[(NAMES[0], "full")].fetched

    asyncio.run(go())


def test_concurrent_asks_share_one_upstream_request_and_its_failure(tmp_path, upstream):
    async def go():
        cache = await make_cache(tmp_path, upstream.url)
        upstream.reset()
        got = await asyncio.wait_for(asyncio.gather(*(cache.get(NAMES[1], "full") for _ in range(5))), 10)
        assert all(p is got[0] for p in got)
        assert sum(upstream.packument_requests().values()) == 1
        upstream.fault(f"/{NAMES[2]}", "500")
        results = await asyncio.wait_for(asyncio.gather(*(cache.get(NAMES[2], "full") for _ in range(5)),
                                                        return_exceptions=True), 10)
        assert all(isinstance(r, UpstreamError) for r in results), results
        assert upstream.packument_requests()[f"/{NAMES[2]}"] == 1
        assert not cache.inflight
        upstream.fault(f"/{NAMES[2]}", None)
        assert (await cache.get(NAMES[2], "full")).doc["name"] == NAMES[2]  # a failure is not kept
        await cache.flush()

    asyncio.run(go())


@pytest.fixture(autouse=True)
def _no_loop_warnings(recwarn):
    """A future whose exception nobody retrieved would be reported when collected."""
    yield
    assert not [w for w in recwarn if "never retrieved" in str(w.message)]
