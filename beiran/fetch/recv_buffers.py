"""Receive buffers the peer-receive threads reuse: small blobs' whole-body buffers and large
bodies' page-aligned batches."""

from __future__ import annotations

import mmap
import threading

from beiran.store.writer import ALIGN, WHOLE_MAX

#: bytes hashed and written in one go (and reported to readers and progress)
RECEIVE_BATCH = 1 << 20

#: buffers for small blobs, reused: a fresh one per blob (their sizes differ, so glibc maps each
#: anew) is memory the kernel must zero and fault in, which on a VM that hands free pages back to
#: its host costs a host fault per page; a reused one is resident already
_buffers: list[bytearray] = []
#: as many as small receives run at once in practice (apt keeps 10 requests in flight, each
#: prefetched): with 8 kept, every burst allocated (and faulted in) a few fresh 2 MiB buffers
BUFFERS_KEPT = 16
BUFFER_MIN = 64 << 10
_buffers_lock = threading.Lock()  # receive threads take and give back


#: page-aligned receive buffers for large bodies (mmap'd: a bytearray has no alignment), reused
_aligned: list[mmap.mmap] = []
ALIGN_SPACE = RECEIVE_BATCH + ALIGN


def take_aligned() -> mmap.mmap:
    try:
        return _aligned.pop()
    except IndexError:
        return mmap.mmap(-1, ALIGN_SPACE)


def give_back_aligned(space: mmap.mmap) -> None:
    if len(_aligned) < BUFFERS_KEPT:
        _aligned.append(space)


def take_buffer(size: int) -> bytearray:
    """A kept buffer of at least `size` bytes, else a new one of the next power of two (at least
    BUFFER_MIN): a new node's small blobs (npm tarballs of a few KiB) no longer each zero and fault
    in a fresh WHOLE_MAX buffer (py-spy: 7% of a new node's GIL samples in npm_install)."""
    with _buffers_lock:
        fits = [i for i, b in enumerate(_buffers) if len(b) >= size]
        if fits:
            return _buffers.pop(min(fits, key=lambda i: len(_buffers[i])))
    return bytearray(min(WHOLE_MAX, max(BUFFER_MIN, 1 << (size - 1).bit_length())))


def give_back(buf: bytearray) -> None:
    """Kept, unless BUFFERS_KEPT larger ones are kept already (then it takes the smallest's place)."""
    with _buffers_lock:
        if len(_buffers) < BUFFERS_KEPT:
            _buffers.append(buf)
            return
        smallest = min(range(len(_buffers)), key=lambda i: len(_buffers[i]))
        if len(_buffers[smallest]) < len(buf):
            _buffers[smallest] = buf
