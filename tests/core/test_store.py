"""Blob store on its own: atomic verified writes, eviction, pins, full disk, crash leftovers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from beiran.config import load_config
from beiran.context import DaemonContext
from beiran.errors import BlobNotFound, Conflict, Forbidden, InvalidDigest, StorageFull, VerificationError
from beiran.events import EventBus
from beiran.models import CORE_MODELS
from beiran.models.base import create_and_migrate, open_database
from beiran.store.blobstore import BlobStore


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def make_store(root: Path, **store_cfg) -> BlobStore:
    cfg = load_config(environ={}, overrides={"data_dir": str(root)})
    for k, v in store_cfg.items():
        setattr(cfg.store, k, v)
    cfg.store.fsync = False
    ctx = DaemonContext(config=cfg, bus=EventBus())
    root.mkdir(parents=True, exist_ok=True)
    open_database(root / "db.sqlite")
    await ctx.run_db(create_and_migrate, CORE_MODELS)
    store = BlobStore(ctx, root / "blobs")
    await store.open()
    return store


async def write(store: BlobStore, data: bytes, digest: str | None = None) -> None:
    w = await store.begin_write(digest or sha(data), len(data), reserve=True)
    await w.feed(data)
    await store.commit(w)


def test_verified_write_and_mismatch_leaves_nothing(tmp_path):
    async def go():
        store = await make_store(tmp_path)
        await write(store, b"hello")
        assert store.path_for(sha(b"hello")).read_bytes() == b"hello"
        with pytest.raises(VerificationError):
            await write(store, b"evil", digest=sha(b"good"))
        assert not store.has(sha(b"good"))
        assert not store.path_for(sha(b"good")).exists()
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
        w = await store.begin_write(sha(b"abc"), 3, reserve=True)
        with pytest.raises(VerificationError):
            await w.feed(b"abcd")  # more than announced
        store.abort(w, VerificationError("too long"))
        with pytest.raises(InvalidDigest):
            store.path_for("sha256:../../etc/passwd")
    asyncio.run(go())


def test_lru_eviction_respects_pins_and_readers(tmp_path):
    async def go():
        store = await make_store(tmp_path, max_size=300)
        a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
        for data in (a, b, c):
            await write(store, data)
            await asyncio.sleep(0.01)
        await store.pin(sha(a), "test", "img:1")
        async with store.use(sha(b)):
            await write(store, b"d" * 100)  # needs room: a is pinned, b is being read -> c goes
        assert store.has(sha(a)) and store.has(sha(b)) and not store.has(sha(c))
        with pytest.raises(StorageFull):
            async with store.use(sha(b)), store.use(sha(b"d" * 100)):
                await write(store, b"e" * 100)  # everything else pinned or in use
        with pytest.raises(StorageFull):
            await write(store, b"x" * 400)  # larger than the cap itself
        with pytest.raises(Conflict):
            await store.remove(sha(a))
        await store.unpin("test", "img:1")
        await store.remove(sha(a))
        with pytest.raises(BlobNotFound):
            await store.remove(sha(a))
    asyncio.run(go())


def test_a_claimed_size_evicts_nothing_and_reserves_nothing(tmp_path):
    """A size only a peer claimed (reserve=False) must fit as things are, and its writer does not
    count as pending, so it cannot make a later local write evict either."""
    async def go():
        store = await make_store(tmp_path, max_size=1000)
        kept = [bytes([i]) * 100 for i in range(8)]
        for data in kept:
            await write(store, data)
        with pytest.raises(StorageFull):
            await store.begin_write(sha(b"claimed"), 999, reserve=False)
        assert all(store.has(sha(d)) for d in kept)
        claim = await store.begin_write(sha(b"small claim"), 150, reserve=False)  # fits as it is
        await write(store, b"z" * 100)  # a local write that fits: nothing is evicted for the claim
        assert all(store.has(sha(d)) for d in kept)
        store.abort(claim, StorageFull("test"))
        await write(store, b"y" * 200)  # a local write over the cap evicts, as before
        assert sum(store.has(sha(d)) for d in kept) == 7
    asyncio.run(go())


def test_restricted_blobs_are_refused_to_peers_and_survive_a_restart(tmp_path):
    async def go():
        store = await make_store(tmp_path)
        await write(store, b"private")
        await store.restrict(sha(b"private"))
        with pytest.raises(Forbidden):
            store.check_access(sha(b"private"), "some-peer")
        again = await make_store(tmp_path)
        with pytest.raises(Forbidden):
            again.check_access(sha(b"private"), None)
        await again.release([sha(b"private")])
        again.check_access(sha(b"private"), "some-peer")
    asyncio.run(go())


def test_restart_cleans_leftovers_and_adopts_or_drops_files(tmp_path):
    async def first():
        store = await make_store(tmp_path)
        await write(store, b"kept")
        w = await store.begin_write(sha(b"half"), 4, reserve=True)  # crash mid-write: temp file stays behind
        await w.feed(b"ha")
        await w.flush()
        return store

    store = asyncio.run(first())
    tmp_files = list((tmp_path / "blobs" / "tmp").iterdir())
    assert tmp_files
    # a file dropped in by hand is adopted after verification; a corrupt one is removed
    good = b"adopt me"
    p = store.path_for(sha(good))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(good)
    bad = store.path_for(sha(b"original"))
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"tampered")

    async def second():
        s = await make_store(tmp_path)
        return s

    s = asyncio.run(second())
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert s.has(sha(b"kept")) and s.has(sha(good)) and not s.has(sha(b"original"))
    assert not bad.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_fails_the_one_write_and_store_stays_consistent(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        async def go():
            store = await make_store(mnt / "data", reserve_free=0)
            await write(store, b"small")
            big = os.urandom(3 << 20)
            with pytest.raises(StorageFull):
                await write(store, big)  # announced size: refused up front, nothing evicted
            assert store.has(sha(b"small"))
            w = await store.begin_write(sha(big), None, reserve=True)  # size unknown: ENOSPC mid-write
            with pytest.raises(StorageFull):
                await w.feed(big)
                await store.commit(w)
            store.abort(w, StorageFull("disk full"))
            assert not store.has(sha(big))
            assert list((mnt / "data" / "blobs" / "tmp").iterdir()) == []
            assert store.path_for(sha(b"small")).read_bytes() == b"small"
            await write(store, b"still works")
            store.ctx.db_executor.submit(lambda: __import__("beiran.models.base").models.base.database.close()).result()
        asyncio.run(go())
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_metadata_writes_of_concurrent_blobs_share_transactions_and_survive_a_restart(tmp_path):
    """Rows and pins of many small blobs committed at once go to the database in a few
    transactions (not one per blob); a failing write fails alone; all of it is there after a
    restart; a removal after a queued insert is not undone by it."""
    from beiran.models.blob import Blob, BlobRef

    async def go():
        store = await make_store(tmp_path)
        blobs = [f"small blob {i}".encode() * 50 for i in range(40)]

        async def add(data: bytes) -> None:
            await write(store, data)
            await store.pin(sha(data), "test", f"ref-{len(data)}-{data[:14]!r}")
        await asyncio.gather(*(add(b) for b in blobs))
        assert store.db_batch.writes == 80 and store.db_batch.batches < 40, (
            store.db_batch.writes, store.db_batch.batches)

        def boom() -> None:
            raise ValueError("this write fails")
        results = await asyncio.gather(store.db_batch.write(boom), write(store, b"after the failure"),
                                       return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] is None
        await write(store, b"removed at once")
        await store.remove(sha(b"removed at once"))
        await store.close()
        rows = await store.ctx.run_db(lambda: ({r.digest for r in Blob.select()},
                                               {(r.digest, r.owner) for r in BlobRef.select()}))
        want = {sha(b) for b in blobs}
        assert want | {sha(b"after the failure")} == rows[0]
        assert {(d, "test") for d in want} == rows[1]

        again = await make_store(tmp_path)
        assert want <= set(again.entries) and all(again.pins.get(d) == {("test", f"ref-{len(b)}-{b[:14]!r}")}
                                                   for d, b in zip((sha(b) for b in blobs), blobs, strict=True))
        await again.close()
    asyncio.run(go())


def test_room_for_small_blobs_is_looked_up_once_a_second_not_per_blob(tmp_path, monkeypatch):
    """The free-disk check of make_room is a thread hop and a statfs: many small blobs reuse one
    look while it shows room enough; a blob it cannot vouch for looks again (and is refused)."""
    import shutil

    looks = []
    real = shutil.disk_usage

    def counting(path):
        looks.append(path)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", counting)

    async def go():
        store = await make_store(tmp_path)
        for i in range(20):
            await write(store, f"small blob {i}".encode())
        assert 1 <= len(looks) <= 3, len(looks)
        before = len(looks)
        store.ctx.config.store.reserve_free = real(tmp_path).free + (1 << 40)
        with pytest.raises(StorageFull):
            await write(store, b"no room for this one")
        assert len(looks) == before + 1
        assert not store.has(sha(b"no room for this one"))
    asyncio.run(go())


def test_prepared_insert_replaces_or_ignores_like_peewee(tmp_path):
    from beiran.models.blob import BlobRef
    from beiran.store.dbbatch import Insert

    async def go():
        store = await make_store(tmp_path)
        pin = Insert(BlobRef, ("digest", "owner", "ref"), "IGNORE")
        await store.db_batch.write(lambda: pin("sha256:" + "a" * 64, "test", "r1"))
        await store.db_batch.write(lambda: pin("sha256:" + "a" * 64, "test", "r1"))  # a duplicate: ignored
        rows = await store.ctx.run_db(lambda: [(r.digest, r.owner, r.ref) for r in BlobRef.select()])
        assert rows == [("sha256:" + "a" * 64, "test", "r1")]
        with pytest.raises(TypeError):
            pin("too", "few")
    asyncio.run(go())


def test_a_queued_write_and_a_pin_go_in_one_batch_without_a_task_each(tmp_path):
    """`db_batch.submit` queues at once (no task per write): a plugin's row and the store's pin of
    the same blob, queued back to back, are one transaction (one database thread hop)."""
    from beiran.models.blob import BlobRef
    from beiran.store.dbbatch import Insert

    async def go():
        store = await make_store(tmp_path)
        row = Insert(BlobRef, ("digest", "owner", "ref"), "IGNORE")
        loop = asyncio.get_running_loop()
        tasks = []
        loop.set_task_factory(lambda lp, coro: tasks.append(coro) or asyncio.Task(coro, loop=lp))
        before = store.db_batch.batches
        queued = store.db_batch.submit(lambda: row("sha256:" + "b" * 64, "plugin", "row"))
        assert len(store.db_batch._pending) == 1 and not queued.done()
        await store.pin("sha256:" + "b" * 64, "test", "pinned")
        await queued
        loop.set_task_factory(None)
        assert store.db_batch.batches == before + 1
        assert len(tasks) == 1  # the batch's own drain, nothing per write
        rows = await store.ctx.run_db(lambda: sorted((r.owner, r.ref) for r in BlobRef.select()))
        assert rows == [("plugin", "row"), ("test", "pinned")]
    asyncio.run(go())


def test_rows_of_blobs_stored_one_after_another_share_a_transaction(tmp_path, monkeypatch):
    """A stored blob's row and a deferred pin are written behind: twenty small blobs stored one
    after another (apt's .debs) share one database batch (however long they take: the batch waits
    here until flushed), not one each; what waits for a row (a listing, a removal, close) flushes
    first, so nothing is lost or reordered."""
    from beiran.models.blob import Blob, BlobRef
    from beiran.store import dbbatch

    monkeypatch.setattr(dbbatch, "LINGER", 3600.0)

    async def go():
        store = await make_store(tmp_path)
        before = store.db_batch.batches
        blobs = [f"deb number {i}".encode() for i in range(20)]
        pins = []
        for i, data in enumerate(blobs):
            await write(store, data)  # each stored (visible) at once
            assert store.has(sha(data))
            # as apt's prefetches do: each pins its .deb and waits for that on its own
            pins.append(asyncio.ensure_future(store.pin(sha(data), "apt", f"deb{i}", defer=True)))
        await asyncio.sleep(0)  # the last pin is queued
        assert store.db_batch.batches == before  # nothing written yet
        await store.db_batch.flush()
        await asyncio.gather(*pins)
        assert store.db_batch.batches == before + 1
        await store.remove(sha(blobs[0]), force=True)  # its queued insert lands before the delete
        await store.db_batch.flush()
        rows = await store.ctx.run_db(lambda: ({r.digest for r in Blob.select()},
                                               {r.digest for r in BlobRef.select()}))
        assert rows[0] == rows[1] == {sha(b) for b in blobs[1:]}
        await write(store, b"written at close")
        await store.close()
        rows = await store.ctx.run_db(lambda: {r.digest for r in Blob.select()})
        assert sha(b"written at close") in rows
    asyncio.run(go())


def test_last_access_is_written_back_for_every_blob_read(tmp_path):
    from beiran.models.blob import Blob

    async def go():
        store = await make_store(tmp_path)
        blobs = [f"read me {i}".encode() for i in range(5)]
        for data in blobs:
            await write(store, data)
        for data in blobs[:3]:
            async with store.use(sha(data)):
                pass
        await store._flush_access()
        rows = await store.ctx.run_db(lambda: {r.digest: r.last_access for r in Blob.select()})
        for data in blobs:
            assert rows[sha(data)] == pytest.approx(store.entries[sha(data)].last_access)
        assert all(rows[sha(d)] > rows[sha(blobs[4])] for d in blobs[:3])
    asyncio.run(go())


def test_fsynced_commit_closes_the_temp_file_on_the_io_thread(tmp_path):
    async def go():
        store = await make_store(tmp_path)
        store.ctx.config.store.fsync = True
        data = b"durable" * 1000
        w = await store.begin_write(sha(data), len(data), reserve=True)
        await w.feed(data)
        await store.commit(w)
        assert w._fd == -1 and store.path_for(sha(data)).read_bytes() == data
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    asyncio.run(go())


def test_temp_file_rename_and_empty_blob_are_done_off_the_event_loop(tmp_path):
    """The temp file is made by the first write and the verified file renamed on an I/O thread;
    a blob nobody wrote a byte of (empty) still ends up stored, and a reader that came first waits."""
    async def go():
        store = await make_store(tmp_path)
        loop_thread = __import__("threading").get_ident()
        seen: list[tuple[str, int]] = []
        real_open, real_replace = os.open, os.replace

        def spy_open(path, *a, **kw):
            seen.append(("open", __import__("threading").get_ident()))
            return real_open(path, *a, **kw)

        def spy_replace(a, b):
            seen.append(("replace", __import__("threading").get_ident()))
            return real_replace(a, b)

        data = b"deb" * 5000
        w = await store.begin_write(sha(data), len(data), reserve=True)
        assert not w.tmp_path.exists()  # nothing created on the loop
        reader = asyncio.ensure_future(_read_all(store, w))
        await asyncio.sleep(0.05)
        assert not reader.done()  # waits for bytes rather than failing on the missing file
        os.open, os.replace = spy_open, spy_replace
        try:
            await w.feed(data)
            await store.commit(w)
        finally:
            os.open, os.replace = real_open, real_replace
        assert await asyncio.wait_for(reader, 10) == data
        assert store.path_for(sha(data)).read_bytes() == data
        assert {k for k, _ in seen} == {"open", "replace"}
        assert all(t != loop_thread for k, t in seen if k in ("open", "replace")), seen
        store.ctx.config.store.fsync = True
        empty = await store.begin_write(sha(b""), 0, reserve=True)
        await store.commit(empty)
        assert store.path_for(sha(b"")).read_bytes() == b"" and store.has(sha(b""))
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    asyncio.run(go())


async def _read_all(store: BlobStore, target) -> bytes:
    return b"".join([c async for c in store.read(target)])
