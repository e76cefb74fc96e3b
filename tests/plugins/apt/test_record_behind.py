"""A prefetched .deb's pin and row are written behind (several .debs per transaction); apt's own
request, if it comes while they wait, must not wait for that batch: the record is hurried, whether
its writes are queued already or not yet (issue 16, speed). In-process: the real Archive on a real
store and database; the batch's linger is made an hour, so any wait for it would show."""

from __future__ import annotations

import asyncio
import hashlib
import types

from beiran.store import dbbatch
from beiran_plugins.apt.archive import Archive, Blob
from beiran_plugins.apt.models import MODELS, AptDeb
from beiran_testkit.instore import open_context


async def make_archive(tmp_path) -> Archive:
    ctx = await open_context(tmp_path, MODELS)
    return Archive(types.SimpleNamespace(ctx=ctx, root=tmp_path / "apt"))  # type: ignore[arg-type]


def deb(i: int) -> Blob:
    return Blob("sha256:" + hashlib.sha256(str(i).encode()).hexdigest(), 1000 + i, "http://a.test/debian/",
                f"pool/main/p/p{i}_1_all.deb", f"p{i}", "1", "all")


def test_a_request_joining_a_deferred_record_gets_it_written_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(dbbatch, "LINGER", 3600.0)

    async def go():
        archive = await make_archive(tmp_path)
        batch = archive.ctx.store.db_batch
        # 1. the prefetch's record is queued, not written...
        first = asyncio.ensure_future(archive.record_deb(deb(1), defer=True))
        await asyncio.sleep(0.05)
        assert not first.done() and archive.recorded(deb(1))  # pinned in memory already
        # ...until apt's request for it waits on it
        await asyncio.wait_for(archive.record_deb(deb(1)), 5)
        await asyncio.wait_for(first, 5)
        # 2. the request comes before the prefetch's record task has even queued its writes
        second = asyncio.ensure_future(archive.record_deb(deb(2), defer=True))
        await asyncio.wait_for(archive.record_deb(deb(2)), 5)
        await asyncio.wait_for(second, 5)
        rows = await archive.ctx.run_db(lambda: sorted(r.package for r in AptDeb.select()))
        assert rows == ["p1", "p2"]
        assert {("apt", "p1_1_all")} == archive.ctx.store.pins[deb(1).digest]
        # 3. prefetches alone wait for company: three records, one transaction, at the flush
        before = batch.batches
        later = [asyncio.ensure_future(archive.record_deb(deb(i), defer=True)) for i in (3, 4, 5)]
        await asyncio.sleep(0.05)
        assert batch.batches == before and not any(t.done() for t in later)
        await batch.flush()
        await asyncio.gather(*later)
        assert batch.batches == before + 1
    asyncio.run(go())
