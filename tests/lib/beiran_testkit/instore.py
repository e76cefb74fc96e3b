"""An in-process daemon context with a real blob store and database, for AsyncHTTPTestCase tests
of the core's serving and receiving paths (no subprocess daemon)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop

from beiran.config import load_config
from beiran.context import DaemonContext
from beiran.events import EventBus
from beiran.metrics import Metrics
from beiran.models import CORE_MODELS
from beiran.models.base import create_and_migrate, open_database
from beiran.store.blobstore import BlobStore


async def open_context(tmp: str | os.PathLike[str], models: Iterable[Any] = (), *, fsync: bool = False
                       ) -> DaemonContext:
    """A context with a database (the core's models and `models`) and an opened store in `tmp`."""
    cfg = load_config(environ={}, overrides={"data_dir": str(tmp)})
    cfg.store.fsync = fsync
    ctx = DaemonContext(config=cfg, bus=EventBus())
    open_database(os.path.join(tmp, "db.sqlite"))
    await ctx.run_db(create_and_migrate, [*CORE_MODELS, *models])
    ctx.store = BlobStore(ctx, Path(tmp) / "blobs")
    await ctx.store.open()
    return ctx


def store_context(io_loop: IOLoop, tmp: str, *, fsync: bool) -> tuple[DaemonContext, BlobStore]:
    """A context whose store lives in `tmp` (peer timeout 5 s), opened on `io_loop`."""
    ctx = io_loop.run_sync(lambda: open_context(tmp, fsync=fsync))
    ctx.config.fetch.peer_timeout = 5.0
    ctx.metrics = Metrics()
    return ctx, ctx.store


class StreamingClient:
    """For an AsyncHTTPTestCase: a request whose body is collected as it arrives, and a wait for a
    condition the body (or the store) reaches."""

    http_client: Any
    get_url: Callable[[str], str]

    def streaming(self, path: str) -> tuple[asyncio.Future, bytearray]:
        got = bytearray()
        req = HTTPRequest(self.get_url(path), streaming_callback=got.extend, request_timeout=20)
        return asyncio.ensure_future(self.http_client.fetch(req, raise_error=False)), got

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        for _ in range(2000):
            if predicate():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")
