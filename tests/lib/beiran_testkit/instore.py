"""An in-process daemon context with a real blob store and database, for AsyncHTTPTestCase tests
of the core's serving and receiving paths (no subprocess daemon)."""

from __future__ import annotations

import os
from pathlib import Path

from tornado.ioloop import IOLoop

from beiran.config import load_config
from beiran.context import DaemonContext
from beiran.events import EventBus
from beiran.metrics import Metrics
from beiran.models import CORE_MODELS
from beiran.models.base import create_and_migrate, open_database
from beiran.store.blobstore import BlobStore


def store_context(io_loop: IOLoop, tmp: str, *, fsync: bool) -> tuple[DaemonContext, BlobStore]:
    """A context whose store lives in `tmp` (peer timeout 5 s), opened on `io_loop`."""
    cfg = load_config(environ={}, overrides={"data_dir": tmp})
    cfg.store.fsync = fsync
    cfg.fetch.peer_timeout = 5.0
    ctx = DaemonContext(config=cfg, bus=EventBus())
    ctx.metrics = Metrics()
    open_database(os.path.join(tmp, "db.sqlite"))

    async def make() -> BlobStore:
        await ctx.run_db(create_and_migrate, CORE_MODELS)
        store = BlobStore(ctx, Path(tmp) / "blobs")
        await store.open()
        return store

    ctx.store = store = io_loop.run_sync(make)
    return ctx, store
