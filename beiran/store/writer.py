"""A blob being written: temp file, hashed as its contiguous prefix grows, renamed only when verified.

Writes may arrive in order (one source) or as pieces at offsets (several peers at once); the hash
covers the contiguous prefix, so readers can stream a blob while it is still downloading.

A small blob received whole (`store_whole_blocking`) is written, hashed, and only if it verified,
fsynced and renamed into the store, all on the receiving thread: one hop to the event loop per
blob, where there were one per batch plus one more for the seal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from beiran.errors import BeiranError, StorageFull, UpstreamError, VerificationError
from beiran.store.digest import Digest

log = logging.getLogger(__name__)
FLUSH_BYTES = 1 << 20
#: a blob no larger, of known size, may be received whole into one buffer (`store_whole_blocking`)
WHOLE_MAX = 2 << 20
#: file offsets, lengths and buffer addresses of direct I/O (O_DIRECT) are multiples of this
ALIGN = 4096
O_DIRECT: int = getattr(os, "O_DIRECT", 0)  # 0: not Linux, no direct I/O


class BlobWriter:
    def __init__(self, digest: Digest, size: int | None, tmp_path: Path,
                 run_io: Callable[..., Awaitable[Any]], on_grow: Callable[[BlobWriter], None] | None = None) -> None:
        self.digest = digest
        self.size = size
        self.tmp_path = tmp_path
        self._run_io = run_io
        self._on_grow = on_grow
        #: the temp file is created by the first write, on an I/O thread: creating a file can block
        #: (it cost n2 7% of its event loop fetching 200 .debs); readers wait for bytes before opening
        self._fd = -1
        #: a second descriptor with O_DIRECT for a large receive's aligned batches (`write_direct`);
        #: -1: not open yet, -2: the file system refused it (buffered writes only)
        self._dfd = -1
        #: bytes went to the file by direct I/O: not in the page cache, readers read it directly too
        self.direct = False
        self._closed = False
        self._hasher = digest.hasher()
        self._hashed = 0  # bytes [0, hashed) are hashed
        self._pieces: dict[int, int] = {}  # offset -> end of written ranges beyond the prefix
        self._lock = threading.Lock()
        #: signalled (under `_lock`) when the verified-in-order prefix grows or the writer closes:
        #: a thread sending a growing blob waits on it instead of a hop through the event loop
        self._grew = threading.Condition(self._lock)
        self._loop_waiters = 0  # coroutines in wait_for_growth (read by receive threads)
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._pos = 0  # next offset for sequential feed()
        self._inflight: asyncio.Future[None] | None = None
        self._grown = asyncio.Event()
        self.done = asyncio.get_running_loop().create_future()
        #: set once every byte is in and matches the digest (before the fsync and rename of commit):
        #: a reader streaming the blob may release its last bytes then, not after the disk flush
        self.verified = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None
        self.source = ""  # where the bytes are coming from right now (for progress)
        #: bytes of a source that failed are in the file: peers get none of it before it verified
        self.untrusted = False
        #: how finish() will seal the file (set by the store): fsync it, then move it here; a blob
        #: stored whole is sealed so on its receiving thread, before finish() runs
        self.seal_fsync = True
        self.seal_to: Path | None = None
        self._sealed: str | None = None
        self._synced = False  # its bytes reached the disk (fdatasync), before any rename
        #: the bytes came in one store_whole_blocking (readers are notified by its caller)
        self.stored_whole = False

    # -- state seen by readers -----------------------------------------------------------------
    @property
    def available(self) -> int:
        """Bytes [0, available) are on disk and may be streamed (not yet verified)."""
        return self._hashed

    @property
    def fresh(self) -> bool:
        """Nothing written yet: no bytes from 0 and no piece further on (a multi-peer fetch that
        lost one piece leaves the others), so the blob may be stored whole."""
        return not self._hashed and not self._pieces

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def loop_waiting(self) -> bool:
        """A coroutine waits for this blob's growth: a receive thread tells the loop at once."""
        return self._loop_waiters > 0

    async def wait_for_growth(self, beyond: int, timeout: float) -> None:
        """Wait until more than `beyond` bytes are available, the write ends, or timeout."""
        self._loop_waiters += 1  # before the check: a receive thread growing it after sees this
        try:
            while self._hashed <= beyond and not self.done.done():
                event = self._grown
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except TimeoutError:
                    raise UpstreamError(f"blob {self.digest.short}: no progress for {timeout:.0f}s") from None
        finally:
            self._loop_waiters -= 1
        if self.error is not None and self._hashed <= beyond:
            raise UpstreamError(f"blob {self.digest.short}: download failed: {self.error}")

    def wait_available_blocking(self, beyond: int, timeout: float) -> int:
        """Thread side: the bytes available once more than `beyond` are, or once the writer
        closed or `timeout` passed (then possibly no more than `beyond`: the caller goes back to
        the loop, which tells a failed download from a slow one)."""
        deadline = time.monotonic() + timeout
        with self._grew:
            while self._hashed <= beyond and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._grew.wait(left)
            return self._hashed

    def _notify(self) -> None:
        event, self._grown = self._grown, asyncio.Event()
        event.set()
        if self._on_grow:
            self._on_grow(self)

    # -- writing (thread side) -----------------------------------------------------------------
    def _open_fd(self) -> int:
        """The temp file's descriptor, created on first use (-1 once the writer was closed)."""
        with self._lock:
            return self._open_fd_locked()

    def _open_fd_locked(self) -> int:
        if self._fd < 0 and not self._closed:
            self._fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return self._fd

    def _write_at_sync(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        with self._disk_errors():  # creating the file can find the disk full too
            self._pwrite(self._open_fd(), view, offset)
        self._grown_by(offset, len(view), view)

    def _grown_by(self, offset: int, n: int, view: memoryview) -> None:
        """Bytes [offset, offset + n), now in the file, are hashed (or kept as a piece)."""
        end = offset + n
        with self._lock:
            if offset == self._hashed:
                self._hasher.update(view)
                self._hashed = end
            else:
                self._pieces[offset] = max(end, self._pieces.get(offset, 0))
            self._catch_up()
            self._grew.notify_all()

    def write_direct_blocking(self, offset: int, data: memoryview) -> None:
        """As `write_at_blocking`, but the whole pages go to the disk by direct I/O, past the page
        cache: on a VM whose free memory is handed back to its host (virtio-balloon free page
        reporting), every fresh page-cache page cost a host fault, and writing a 256 MiB blob cost
        its node 1-1.5 s of CPU instead of 0.03 s. `data` must sit in memory as it will in the file
        (address = offset modulo ALIGN, e.g. a page-aligned buffer filled from offset % ALIGN);
        the partial pages at either end are written buffered. Hashed as any write."""
        head = min(len(data), -offset % ALIGN)
        body = (len(data) - head) // ALIGN * ALIGN
        dfd = self._open_direct() if body else -2
        if dfd < 0:
            self._write_at_sync(offset, data)
            return
        try:
            if head:
                self._pwrite(self._open_fd(), data[:head], offset)
            self._pwrite(dfd, data[head:head + body], offset + head)
            if head + body < len(data):
                self._pwrite(self._open_fd(), data[head + body:], offset + head + body)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not aligned after all; buffered below
                raise
            with self._lock:
                self._dfd = -2
            self._pwrite(self._open_fd(), data, offset)
        self.direct = True
        self._grown_by(offset, len(data), data)

    def _open_direct(self) -> int:
        with self._lock:
            if self._dfd == -1 and not self._closed:
                self._dfd = -2
                self._open_fd_locked()
                if O_DIRECT:
                    try:
                        self._dfd = os.open(self.tmp_path, os.O_WRONLY | O_DIRECT)
                    except OSError:  # a file system without direct I/O (tmpfs before Linux 6.6)
                        pass
            return self._dfd if not self._closed else -2

    def _pwrite(self, fd: int, view: memoryview, offset: int) -> None:
        written = 0
        with self._disk_errors():
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """A full disk or quota is the typed StorageFull (507), not an OSError."""
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"disk full while writing {self.digest.short}") from None
            raise

    def _catch_up(self) -> None:
        """Hash pieces that became contiguous, reading them back from the page cache."""
        while True:
            nxt = [(o, e) for o, e in self._pieces.items() if o <= self._hashed]
            if not nxt:
                return
            for o, e in nxt:
                del self._pieces[o]
                if e > self._hashed:
                    start = self._hashed
                    while start < e:
                        chunk = os.pread(self._fd, min(4 << 20, e - start), start)
                        if not chunk:
                            raise OSError("short read while hashing")
                        self._hasher.update(chunk)
                        start += len(chunk)
                    self._hashed = e

    def write_at_blocking(self, offset: int, data: bytes | memoryview) -> None:
        """For a caller that is already on an I/O thread; call notify_growth() on the loop after."""
        self._write_at_sync(offset, data)

    def notify_growth(self) -> None:
        self._notify()

    def store_whole_blocking(self, data: memoryview) -> None:
        """Thread side: the whole blob at once. Written and hashed; if it matches the digest, also
        fsynced and moved to `seal_to` here, so finish() only checks and the store records it (a
        crash before the record leaves a verified file, which the next start adopts after hashing
        it again). If it does not match, nothing more happens here: finish() fails it as any other
        mismatch, and the temp file goes."""
        if self.size is None or len(data) != self.size or self._hashed or self._pieces:
            raise RuntimeError("store_whole_blocking needs a fresh writer of the blob's size")
        self._write_at_sync(0, data)
        self.stored_whole = True
        if self._hasher.hexdigest() == self.digest.hex and self.seal_to is not None:
            try:
                self._sealed = self._seal(self.seal_fsync, self.seal_to)
            except OSError as exc:  # the disk, not the peer: finish() seals again and reports it
                log.warning("blob %s: sealing on the receive thread failed (%s)", self.digest.short, exc)

    def _set_verified(self) -> None:
        if not self.verified.done():
            self.verified.set_result(None)

    # -- writing (loop side) -------------------------------------------------------------------
    def _check_bounds(self, end: int) -> None:
        if self.size is not None and end > self.size:
            raise VerificationError(f"blob {self.digest.short}: more bytes than its size {self.size}")

    async def write_at(self, offset: int, data: bytes) -> None:
        """Write a piece (used by multi-source fetches)."""
        self._check_bounds(offset + len(data))
        await self._run_io(self._write_at_sync, offset, data)
        self._notify()

    async def feed(self, chunk: bytes) -> None:
        """Append in order; batched so the thread hop is paid per MiB, not per packet."""
        self._check_bounds(self._pos + self._buf_len + len(chunk))
        self._buf.append(chunk)
        self._buf_len += len(chunk)
        if self._buf_len >= FLUSH_BYTES:
            await self._dispatch()

    async def _dispatch(self) -> None:
        if self._inflight is not None:
            fut, self._inflight = self._inflight, None
            await fut
            self._notify()
        if self._buf_len:
            data, offset = b"".join(self._buf), self._pos
            self._buf, self._buf_len = [], 0
            self._pos += len(data)
            self._inflight = asyncio.ensure_future(self._run_io(self._write_at_sync, offset, data))

    async def flush(self) -> None:
        await self._dispatch()
        if self._inflight is not None:
            fut, self._inflight = self._inflight, None
            await fut
            self._notify()

    def seek(self, offset: int) -> None:
        """Continue sequential feeding at `offset` (after a source failed part-way)."""
        if self._buf_len or self._inflight is not None:
            raise RuntimeError("seek with unflushed data")
        self._pos = offset

    @property
    def position(self) -> int:
        return self._pos + self._buf_len

    async def finish(self, fsync: bool = True, move_to: Path | None = None) -> str:
        """Verify digest and size (raises on mismatch), then, in one I/O thread hop, fsync and move
        the file to `move_to`: a rename on the event loop stalled it while the disk was busy
        flushing other blobs. Returns where the file is now."""
        await self.flush()
        if self._pieces:
            raise VerificationError(f"blob {self.digest.short}: gaps remain in the download")
        if self.size is not None and self._hashed != self.size:
            raise VerificationError(f"blob {self.digest.short}: got {self._hashed} bytes, "
                                    f"expected {self.size}")
        actual = self._hasher.hexdigest()
        if actual != self.digest.hex:
            raise VerificationError(f"blob {self.digest.short}: content hashes to "
                                    f"{self.digest.algorithm}:{actual[:12]}, not the expected digest")
        self._set_verified()
        if self._sealed is not None and move_to == self.seal_to and fsync >= self.seal_fsync:
            return self._sealed  # done on the receiving thread (store_whole_blocking)
        return await self._run_io(self._seal, fsync, move_to)

    def _seal(self, fsync: bool, move_to: Path | None) -> str:
        if fsync and not self._synced:  # closed on the same I/O thread (a close after writes can stall)
            self._fsync_and_close()
        else:
            self._open_fd()  # nothing written (an empty blob): the file must still exist
        if move_to is None:
            return str(self.tmp_path)
        try:
            os.replace(self.tmp_path, move_to)
        except FileNotFoundError:  # its directory is made once, not tried for every blob
            move_to.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_path, move_to)
        return str(move_to)

    def _fsync_and_close(self) -> None:
        fd = self._open_fd()
        os.fdatasync(fd)  # the data and the size: what a reader needs (the rename is the name)
        with self._lock:
            if self._fd == fd:
                self._fd = -1
                self._closed = True
                os.close(fd)
                self._close_direct()
            self._synced = True

    def _close_direct(self) -> None:
        """Under `_lock`: the direct-I/O descriptor goes with the file's own."""
        if self._dfd >= 0:
            os.close(self._dfd)
        self._dfd = -2

    def complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self._close()
        self._notify()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error if isinstance(error, BeiranError) else UpstreamError(str(error))
        if not self.done.done():
            self.done.set_exception(self.error)
            self.done.exception()  # mark retrieved: callers that care await it
        self._close()
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass
        self._notify()

    def _close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            self._closed = True
            self._close_direct()
            self._grew.notify_all()
        if fd >= 0:
            os.close(fd)
