"""The fetcher every package plugin calls: `fetch(digest, size, source)`.

Order: local store -> peers holding the blob complete (several at once for large blobs) -> peers
still downloading it (only those ranked above this node, so streams never form a cycle) -> the
blob's rendezvous owner, asked to fetch it from the origin for everyone -> the origin itself.
Every byte is verified before the blob is stored; a peer whose bytes fail is skipped for that blob.

Who asked matters. A fetch for a peer (`for_peer`: a delegation, a preheat) resolves its source only
against this node's config and without credentials, and never evicts to make room for the size the
peer claimed; the owner's side of a delegation (`delegated`) never delegates again. A local caller
may add a local-only `opener` (e.g. k8s with kubelet's credentials): it reaches the origin from this
node only, is never sent to peers, and what it reads is restricted (never served to peers).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from beiran import events
from beiran.errors import (
    BeiranError,
    BlobNotFound,
    Conflict,
    Forbidden,
    NotFound,
    PeerBusy,
    PeerLacksBlob,
    UpstreamError,
    VerificationError,
)
from beiran.fetch import blame, large, placement
from beiran.fetch.admission import PeerAdmission
from beiran.fetch.job import FetchJob as FetchJob  # re-exported: callers import it from here
from beiran.fetch.job import Opener as Opener
from beiran.fetch.origins import local_source_keys, open_origin, source_key
from beiran.fetch.peer_source import PeerSource
from beiran.peer.links import PoolExhausted
from beiran.plugin import OriginStream
from beiran.store.blobstore import BlobEntry
from beiran.store.digest import parse_digest
from beiran.store.writer import BlobWriter

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.fetch")
MAX_RESTARTS = 4
#: pauses (0.25 s doubling to 2 s, jittered: ~8 s in all) for holders at their upload caps before
#: this requester gives up on them and delegates or goes to the origin
BUSY_WAITS, BUSY_PAUSE = 6, 0.25
class Fetcher:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.jobs: dict[str, FetchJob] = {}
        self.peers = PeerSource(ctx)
        self.admission = PeerAdmission(ctx)

    # -- public API ------------------------------------------------------------------------------
    async def fetch(self, digest: str, size: int | None = None, source: dict[str, Any] | None = None,
                    *, opener: Opener | None = None) -> BlobEntry:
        """Make the blob local (verified) and return its entry. Cancelling the caller does not
        cancel the download for others waiting on the same digest."""
        job = await self.start(digest, size, source, opener=opener)
        return await asyncio.shield(job.done)

    async def stream(self, digest: str, size: int | None = None, source: dict[str, Any] | None = None,
                     start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes as they arrive (a registry mirror must not wait for the whole layer). If the
        download later fails verification, the iterator raises and the consumer must abort."""
        job = await self.start(digest, size, source)
        async with self.ctx.store.use(digest) as target:
            async for chunk in self.ctx.store.read(target, start, end,
                                                   timeout=self.ctx.config.fetch.peer_timeout):
                yield chunk
        await asyncio.shield(job.done)  # raises when the download failed after its last byte arrived
        if isinstance(target, BlobWriter) and target.failed:
            # the bytes just streamed came from a source that failed verification (the job went
            # on with another one): the consumer must not keep them
            raise VerificationError(f"blob {job.digest[:19]}: streamed bytes failed verification")

    async def start(self, digest: str, size: int | None, source: dict[str, Any] | None, *,
                    for_peer: str | None = None, delegated: bool = False,
                    opener: Opener | None = None) -> FetchJob:
        """Begin (or join) the download of `digest`; returns at once.

        `for_peer`: the UUID of the peer this runs for; `delegated`: it asked this node, as the
        blob's owner, to fetch it (see the module docstring). `opener`: a local-only way to the
        origin, used when peers cannot serve the blob."""
        d = parse_digest(digest)
        digest = str(d)
        entry = self.ctx.store.get(digest)
        if entry is not None:
            if size is not None and entry.size != size:
                raise VerificationError(f"blob {d.short} is {entry.size} bytes, not {size}")
            job = FetchJob(digest, entry.size, source)
            job.done.set_result(entry)
            job.bytes_from["local"] = entry.size
            self.ctx.metrics.fetch_requests.labels("local").inc()
            return job
        if digest in self.jobs:
            # the job is registered before its writer exists: a joiner (a second client, a peer's
            # delegated fetch) that read the store now would find nothing and go elsewhere
            job = self.jobs[digest]
            if for_peer is None:
                # this node's own client joins: its source and opener serve the job from now on (a
                # peer's source stays a peer's source: it never gains this node's credentials)
                job.for_peer = None
                if source and (job.peer_source or not job.source):
                    job.source, job.peer_source = source, False
                job.opener = job.opener or opener
            await job.writer_ready()
            return job
        trusted, claimed = size is not None and for_peer is None, size is not None
        if size is None:
            size = self._announced_size(digest)  # a peer's claim: not trusted for eviction
        job = FetchJob(digest, size, source, for_peer=for_peer, peer_source=for_peer is not None and bool(source),
                       delegated=delegated, opener=opener, size_trusted=trusted, size_claimed=claimed)
        self.jobs[digest] = job
        try:
            job.writer = await self._begin_write(job)
        except Conflict:
            del self.jobs[digest]
            raise
        except BaseException:
            del self.jobs[digest]
            raise
        finally:
            job.ready.set()
        task = asyncio.ensure_future(self._run(job))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return job

    async def _begin_write(self, job: FetchJob) -> BlobWriter:
        """A holder's announced size plans the download (ranges, whole receive, the bound on what
        a peer may send) but is no reason to refuse it for want of room: only a size that came
        with the request is checked so."""
        writer = await self.ctx.store.begin_write(job.digest, job.size if job.size_claimed else None,
                                                  reserve=job.size_trusted)
        writer.size = job.size
        return writer

    def _announced_size(self, digest: str, skip: set[str] | None = None) -> int | None:
        for node, p in self.ctx.availability.peers.items():
            if p.online and node not in (skip or ()) and digest in p.blobs and p.blobs[digest][1] is not None:
                return p.blobs[digest][1]
        return None

    # -- the download ----------------------------------------------------------------------------
    async def _run(self, job: FetchJob) -> None:
        try:
            entry = await self._download(job)
            job.done.set_result(entry)
            if log.isEnabledFor(logging.DEBUG):  # its arguments cost more than the call
                log.debug("fetched %s (%d bytes: %s) in %.2fs", job.digest[:19], entry.size,
                          ", ".join(f"{k} {v}" for k, v in job.bytes_from.items()),
                          time.monotonic() - job.started)
        except BaseException as exc:  # noqa: BLE001 - every failure ends up on the job
            if job.writer is not None:
                self.ctx.store.abort(job.writer, exc)
            if not job.done.done():
                err = exc if isinstance(exc, BeiranError) else UpstreamError(str(exc))
                if not isinstance(exc, BeiranError):
                    err.peer_message = "the download failed on this node"
                job.done.set_exception(err)
                job.done.exception()
            log.warning("fetch %s failed: %s", job.digest[:19], exc)
        finally:
            self._emit(job, force=True)
            self.jobs.pop(job.digest, None)

    async def _download(self, job: FetchJob) -> BlobEntry:
        for attempt in range(MAX_RESTARTS):
            # peers failed every attempt before the last: that one goes to the origin, when there is
            # one (so many lying holders cost this node restarts, never the blob)
            job.peers_off = attempt == MAX_RESTARTS - 1 and bool(job.source or job.opener)
            try:
                await self._fill(job)
                return await self.ctx.store.commit(job.live_writer())
            except VerificationError as exc:
                self.ctx.metrics.verify_failures.inc()
                if job.writer is not None and self.ctx.store.writing(job.digest) is job.writer:
                    self.ctx.store.abort(job.writer, exc)  # a source sent too many bytes: never committed
                suspects = set(job.contributors)
                job.ready.clear()
                job.writer = None  # commit() already discarded the bytes
                if not suspects:
                    raise  # the origin itself served bad bytes
                blame.failed_verification(job, suspects, exc)
                job.contributors.clear()
                job.bytes_from.clear()
                if not job.size_claimed:  # what a skipped peer said of the size goes with it
                    job.size = self._announced_size(job.digest, job.bad)
                job.writer = await self._begin_write(job)
                job.ready.set()
        raise UpstreamError(f"blob {job.digest[:19]}: gave up after {MAX_RESTARTS} bad sources")

    def _candidates(self, job: FetchJob, failed: set[str]) -> tuple[list[str], list[str]]:
        complete, partial = self.ctx.availability.holders(job.digest)
        skip = job.bad | failed
        complete = [n for n in complete if n not in skip]
        me = self.ctx.identity.uuid
        ranked = placement.rank(job.digest, [*partial, me])
        above = set(ranked[:ranked.index(me)])
        partial = [n for n in partial if n in above and n not in skip]
        random.shuffle(complete)
        return complete, partial

    async def _fill(self, job: FetchJob) -> None:
        writer = job.live_writer()
        failed: set[str] = set()
        delegations = busy_waits = 0
        cfg = self.ctx.config.fetch
        cluster = self.ctx.peers.cluster
        while True:
            swim = cluster.swim  # above full_mesh_max: holders come from the directory (cluster.py)
            # a local opener is for private blobs: peers never serve those (restricted), so go on
            complete: list[str]
            partial: list[str]
            if job.opener or job.peers_off:
                complete, partial = [], []
            elif swim:
                complete, partial = await large.candidates(self.ctx, job, failed), []
            else:
                complete, partial = self._candidates(job, failed)
            if (len(complete) >= 2 and job.size and job.size >= cfg.large_blob_threshold
                    and writer.position == 0 and not job.one_by_one):
                nodes = complete[:cfg.max_parallel_peers]
                with cluster.links_for(nodes):
                    used = await self.peers.fill_ranges(job, nodes, failed)
                if writer.available == job.size:
                    return
                writer.seek(writer.available)
                failed |= used
                writer.untrusted |= bool(used)
                continue
            node = next(iter(complete or partial), None)
            if node is not None:
                if await self._try_peer(job, node, failed):
                    return
                continue
            if job.busy and busy_waits < BUSY_WAITS:  # holders exist but are at their upload caps:
                # wait for one rather than send this requester to the origin
                await asyncio.sleep(min(BUSY_PAUSE * 2 ** busy_waits, 2.0) * (0.5 + random.random()))
                busy_waits += 1
                failed -= job.busy
                job.busy.clear()
                continue
            # a node fetching for a peer never delegates again; a local opener never leaves the node.
            # Both modes walk the owner chain (rank 1, 2, 3): an owner that cannot fetch this source
            # (an apt archive it never saw, an origin it cannot reach) passes it to the next rank,
            # which every requester picks alike, so the origin is still asked once
            if (job.source and job.opener is None and not job.delegated and cfg.origin_delegation
                    and delegations < large.CHAIN and not job.peers_off):
                delegations += 1
                owner = large.owner(self.ctx, job, failed) if swim else self._owner(job, failed)
                if owner is not None and owner not in failed:
                    if await self._try_delegate(job, owner, failed):
                        return
                    continue
            if job.source or job.opener:
                await self._from_origin(job)
                return
            raise BlobNotFound(f"blob {job.digest[:19]} is on no reachable node and no origin was given")

    def _owner(self, job: FetchJob, failed: set[str]) -> str | None:
        """The rendezvous owner among online nodes that can reach this source (self included),
        passing over those that already failed this job."""
        key = source_key(job.source or {})
        nodes = [self.ctx.identity.uuid] if key in local_source_keys(self.ctx) else []
        for node in self.ctx.peers.online():
            conn = self.ctx.peers.conn(node)
            if conn and key in (conn.info.get("plugins") or []) and node not in job.bad | failed:
                nodes.append(node)
        found = placement.owner(job.digest, nodes)
        return None if found == self.ctx.identity.uuid else found

    async def _try_peer(self, job: FetchJob, node: str, failed: set[str], partial: bool | None = None) -> bool:
        try:
            with self.ctx.peers.cluster.links_for([node]):
                return await self._stream_peer(job, node, failed, partial)
        except PoolExhausted as exc:
            failed.add(node)
            log.info("%s; trying the next source", exc)
            return False

    async def _stream_peer(self, job: FetchJob, node: str, failed: set[str], partial: bool | None) -> bool:
        writer = job.live_writer()
        if partial is None:
            partial = node in self.ctx.availability.holders(job.digest)[1]
        start, new = writer.position, node not in job.contributors
        try:
            job.contributors.add(node)
            await self.peers.stream_into(job, node, start)
            return True
        except (BeiranError, OSError) as exc:
            await writer.flush()
            if (partial or job.size is None or job.one_by_one) and writer.available > start:  # a copy
                # still downloading ends short when its own download failed, a body of unknown size
                # has no end to resume towards, and one holder at a time means one peer's bytes per
                # attempt (blame.py): what it sent is suspect, start over without it
                raise VerificationError(f"peer {node[:8]} ended its unverified copy short: {exc}") from None
            if new and writer.available == start:
                job.contributors.discard(node)  # none of its bytes are in the writer: not a suspect
            failed.add(node)
            writer.untrusted |= writer.available > start  # peers get none of it before it verified
            if isinstance(exc, PeerBusy):
                job.busy.add(node)
            if isinstance(exc, PeerLacksBlob):  # it dropped its copy: no fault, no news for operators
                log.debug("%s; trying the next source", exc.message)
            else:
                self.ctx.metrics.peer_failures.inc()
                log.info("peer %s failed for %s at byte %d: %s; trying the next source", node[:8],
                         job.digest[:19], writer.position, exc)
            writer.seek(writer.available)
            return False

    async def _try_delegate(self, job: FetchJob, owner: str, failed: set[str]) -> bool:
        from beiran.peer.protocol import call_fetch, call_fetch_http

        conn = self.ctx.peers.conn(owner)
        try:
            if conn is not None:
                answer = await call_fetch(conn, job.digest, job.size, job.source)
            elif self.ctx.peers.cluster.swim:  # no websocket above full_mesh_max: a signed request
                answer = await call_fetch_http(self.ctx, owner, job.digest, job.size, job.source)
            else:
                return False
            if job.size is None and isinstance(answer, dict) and answer.get("size"):
                job.size = job.live_writer().size = int(answer["size"])
        except NotFound as exc:
            # the origin itself has no such blob: that is the answer, not a fault of the owner
            log.info("owner %s: %s not found at the origin (%s)", owner[:8], job.digest[:19], exc.message)
            raise
        except BeiranError as exc:
            log.info("owner %s could not fetch %s (%s); asking the next in its chain", owner[:8],
                     job.digest[:19], exc.message)
            failed.add(owner)
            return False
        return await self._try_peer(job, owner, failed, partial=not (isinstance(answer, dict)
                                                                     and answer.get("state") == "complete"))

    async def _open_origin(self, job: FetchJob, offset: int) -> OriginStream:
        """The local opener first (it carries the credentials its caller holds), then the source;
        the next is tried when one refuses before sending a byte."""
        tries: list[tuple[bool, Callable[[], Awaitable[OriginStream]]]] = []
        if job.opener is not None:
            opener = job.opener
            tries.append((False, lambda: opener(job.digest, offset)))
        if job.source:
            source, from_peer = job.source, job.peer_source
            tries.append((from_peer, lambda: open_origin(self.ctx, source, job.digest, offset,
                                                         from_peer=from_peer)))
        last: BeiranError | None = None
        for from_peer, open_ in tries:
            try:
                stream = await open_()
            except BeiranError as exc:
                last = exc
                continue
            if stream.restricted:
                if from_peer:  # never read with credentials on a peer's behalf
                    await stream.aclose()
                    raise Forbidden(f"blob {job.digest[:19]} is private; this node does not fetch it for peers")
                await self.ctx.store.restrict(job.digest)  # before the first byte can be served
            job.answered.set()
            return stream
        assert last is not None
        raise last

    async def _from_origin(self, job: FetchJob) -> None:
        writer = job.live_writer()
        offset = writer.position
        self.ctx.metrics.fetch_requests.labels("origin").inc()
        stream = await self._open_origin(job, offset)
        try:
            if stream.size is not None and (job.size is None or not job.size_claimed):
                job.size = writer.size = stream.size  # the origin's word over a third peer's
                if job.for_peer:
                    self.admission.charge_known(job)  # a peer that left the size out pays it now
            writer.source = "origin"
            async for chunk in stream:
                await writer.feed(chunk)
                self.account(job, "origin", len(chunk))
            await writer.flush()
        finally:
            await stream.aclose()
        if job.size is not None and writer.position != job.size:
            raise UpstreamError(f"origin sent {writer.position} of {job.size} bytes")

    def account(self, job: FetchJob, source: str, n: int) -> None:
        job.answered.set()
        job.bytes_from[source] += n
        self.ctx.metrics.fetch_bytes.labels(source).inc(n)
        self._emit(job)

    def _emit(self, job: FetchJob, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - job._last_event > 0.25:
            job._last_event = now
            self.ctx.bus.emit(events.FETCH_PROGRESS, **job.progress())
