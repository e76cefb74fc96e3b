"""The store's two-hex prefix directories are made once, when it opens (issue 16, speed): a new
node's first blob of each prefix no longer fails its rename and makes the directory then (py-spy: a
sixth of a new node's samples in npm_install). A directory someone removed is still made when a blob
needs it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tornado.ioloop import IOLoop

from beiran.store.blobstore import BlobStore
from beiran_testkit.instore import store_context


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def write(store: BlobStore, data: bytes) -> None:
    w = await store.begin_write(sha(data), len(data), reserve=True)
    await w.feed(data)
    await store.commit(w)


def test_a_new_store_has_every_prefix_directory_and_sealing_makes_none(tmp_path, monkeypatch):
    loop = IOLoop()
    try:
        _, store = store_context(loop, str(tmp_path), fsync=False)
        for alg in ("sha256", "sha512"):
            assert sorted(os.listdir(tmp_path / "blobs" / alg)) == [f"{i:02x}" for i in range(256)]
        made: list[Path] = []
        real_mkdir = Path.mkdir
        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **kw: (made.append(self), real_mkdir(self, *a, **kw)))
        for i in range(20):
            loop.run_sync(lambda i=i: write(store, b"blob %d" % i))
        assert made == []
        gone = store.path_for(sha(b"late")).parent
        gone.rmdir()
        loop.run_sync(lambda: write(store, b"late"))
        assert store.path_for(sha(b"late")).read_bytes() == b"late"
        assert made == [gone]
        loop.run_sync(store.close)
    finally:
        loop.close(all_fds=False)
