"""One download in flight: what it is for, where its bytes came from, whom it skips.

Kept apart from the fetcher's policy (fetcher.py), which reads and updates it; joiners (a second
client, a peer's delegated fetch, serve.py streaming a growing blob) hold the job, not the fetcher.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from beiran.plugin import OriginStream
from beiran.store.blobstore import BlobEntry
from beiran.store.writer import BlobWriter

#: a local-only way to the origin: (digest, offset) -> stream; never leaves this node
Opener = Callable[[str, int], Awaitable[OriginStream]]


@dataclass
class FetchJob:
    digest: str
    size: int | None
    source: dict[str, Any] | None
    writer: BlobWriter | None = None
    done: asyncio.Future[BlobEntry] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    bytes_from: Counter[str] = field(default_factory=Counter)  # local / peer / origin
    contributors: set[str] = field(default_factory=set)  # peers whose bytes are in the writer
    bad: set[str] = field(default_factory=set)  # peers skipped for this blob
    busy: set[str] = field(default_factory=set)  # holders that answered "at my upload cap" (429)
    one_by_one: bool = False  # pieces from several peers failed the blob: one holder at a time (blame.py)
    peers_off: bool = False  # the last restart after bad peers: the origin only
    started: float = field(default_factory=time.monotonic)
    _last_event: float = 0.0
    #: set while `writer` is usable (cleared while it is (re)created); joiners wait on it
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: the peer this fetch runs for (None: this node's own clients asked)
    for_peer: str | None = None
    #: `source` came in a peer's request: resolved only against this node's config, anonymously
    peer_source: bool = False
    #: this node is the owner a peer delegated to: it never delegates again
    delegated: bool = False
    opener: Opener | None = None
    #: the size came from a local caller (not a peer's claim): room may be made for it
    size_trusted: bool = False
    #: the size came with the request (this node's caller, or the peer that asked): otherwise a
    #: third peer announced it (or answered with it), and it never outlives that peer's bytes nor
    #: outweighs the origin's own size
    size_claimed: bool = False
    #: set once a source has answered (an origin stream opened, or bytes arrived)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer_ready(self) -> None:
        """Wait until the job has a writer to read from, or has ended."""
        if self.ready.is_set() or self.done.done():
            return
        waiter = asyncio.ensure_future(self.ready.wait())
        try:
            either: list[asyncio.Future[Any]] = [waiter, self.done]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def live_writer(self) -> BlobWriter:
        """The writer, for the steps of a download that run only while the job has one."""
        if self.writer is None:
            raise RuntimeError(f"fetch of {self.digest[:19]} has no writer now")
        return self.writer

    def error(self) -> BaseException | None:
        """What the fetch ended with: None while it runs or when it succeeded."""
        if not self.done.done():
            return None
        return asyncio.CancelledError() if self.done.cancelled() else self.done.exception()

    @property
    def failed(self) -> bool:
        return self.done.done() and (self.done.cancelled() or self.done.exception() is not None)

    def progress(self) -> dict[str, Any]:
        got = self.writer.available if self.writer and not self.done.done() else sum(self.bytes_from.values())
        return {"digest": self.digest, "bytes": got, "total": self.size, "sources": dict(self.bytes_from),
                "done": self.done.done(), "elapsed": round(time.monotonic() - self.started, 3)}
