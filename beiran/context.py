"""The daemon context: the one object plugins and handlers reach core services through."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from beiran.config import Config
from beiran.events import EventBus

if TYPE_CHECKING:
    from beiran.fetch.fetcher import Fetcher
    from beiran.identity import NodeIdentity
    from beiran.metrics import Metrics
    from beiran.peer.auth import PeerAuth
    from beiran.peer.availability import Availability
    from beiran.peer.manager import PeerManager
    from beiran.plugin_loader import PluginManager
    from beiran.preheat import Preheater
    from beiran.store.blobstore import BlobStore

T = TypeVar("T")


@dataclass
class DaemonContext:
    config: Config
    bus: EventBus = field(default_factory=EventBus)
    identity: NodeIdentity = None  # type: ignore[assignment]
    plugins: PluginManager = None  # type: ignore[assignment]
    store: BlobStore = None  # type: ignore[assignment]
    availability: Availability = None  # type: ignore[assignment]
    peers: PeerManager = None  # type: ignore[assignment]
    fetcher: Fetcher = None  # type: ignore[assignment]
    metrics: Metrics = None  # type: ignore[assignment]
    auth: PeerAuth = None  # type: ignore[assignment]
    preheater: Preheater = None  # type: ignore[assignment]
    db_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="beiran-db"))
    io_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="beiran-io"))
    #: blocking downloads from peers. Kept apart from io_executor (which serves blobs): receives
    #: wait on other nodes' serving, so sharing one pool lets busy nodes starve each other.
    receive_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(32, thread_name_prefix="beiran-recv"))

    async def run_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a database call on the single database thread (sqlite writes are serial anyway)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.db_executor, functools.partial(fn, *args, **kwargs))

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking library call (file I/O, docker SDK, python-apt) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.io_executor, functools.partial(fn, *args, **kwargs))
