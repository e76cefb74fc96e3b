"""The daemon context: the one object plugins and handlers reach core services through."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from beiran.config import Config
from beiran.events import EventBus
from beiran.peer.uploads import UploadSlots

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


class Service(Generic[T]):
    """A service on the context: typed as the service itself (never Optional), set once while the
    daemon is built in order (`beiran.daemon.main.build_services`), and read only after that. A
    read before it is set is a wiring bug and says which service; setting it twice is refused."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Service[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Service[T] | T:
        if obj is None:
            return self
        try:
            value: T = obj.__dict__[self.name]
        except KeyError:
            raise RuntimeError(f"ctx.{self.name} is used before the daemon built it") from None
        return value

    def __set__(self, obj: object, value: T) -> None:
        if self.name in obj.__dict__:
            raise RuntimeError(f"ctx.{self.name} is set once, when the daemon is built")
        obj.__dict__[self.name] = value


class DaemonContext:
    """What plugins and handlers reach core services through. `config`, the event bus and the
    executors exist from the start; each `Service` is set once by the daemon's builder, in the
    order they depend on each other (identity, auth, metrics, plugins, availability, store, peers,
    fetcher, preheater)."""

    identity: Service[NodeIdentity] = Service()
    auth: Service[PeerAuth] = Service()
    metrics: Service[Metrics] = Service()
    plugins: Service[PluginManager] = Service()
    availability: Service[Availability] = Service()
    store: Service[BlobStore] = Service()
    peers: Service[PeerManager] = Service()
    fetcher: Service[Fetcher] = Service()
    preheater: Service[Preheater] = Service()

    def __init__(self, config: Config, bus: EventBus | None = None) -> None:
        self.config = config
        self.bus = bus or EventBus()
        self.db_executor = ThreadPoolExecutor(1, thread_name_prefix="beiran-db", initializer=_yielding_worker)
        self.io_executor = ThreadPoolExecutor(8, thread_name_prefix="beiran-io", initializer=_yielding_worker)
        #: blocking downloads from peers. Kept apart from io_executor (which serves blobs): receives
        #: wait on other nodes' serving, so sharing one pool lets busy nodes starve each other.
        self.receive_executor = ThreadPoolExecutor(32, thread_name_prefix="beiran-recv",
                                                   initializer=_yielding_worker)
        self.uploads = UploadSlots(config.limits.peer_uploads)

    async def run_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a database call on the single database thread (sqlite writes are serial anyway)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.db_executor, functools.partial(fn, *args, **kwargs))

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking library call (file I/O, docker SDK, python-apt) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.io_executor, functools.partial(fn, *args, **kwargs))


def _yielding_worker() -> None:
    """Worker threads are SCHED_BATCH: one the event loop wakes does not preempt the loop while it
    still holds the GIL (py-spy: a third of n2's GIL-holding samples were the loop inside
    executor submit, preempted by the thread it had just woken). Same priority otherwise."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: the default policy is fine
        pass
