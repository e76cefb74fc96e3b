"""Receive buffers of small blobs (issue 16, speed): sized to the blob (a power of two, at least
64 KiB) instead of a fresh WHOLE_MAX each while none is kept, whose zeroing and page faults were 7%
of a new node's GIL samples in npm_install (tarballs of a few KiB); kept ones are reused, the larger
ones kept first."""

from __future__ import annotations

import pytest

from beiran.fetch import recv_buffers
from beiran.fetch.recv_buffers import BUFFER_MIN, BUFFERS_KEPT, give_back, take_buffer
from beiran.store.writer import WHOLE_MAX


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    monkeypatch.setattr(recv_buffers, "_buffers", [])


def test_a_small_blob_gets_a_small_buffer_and_a_kept_one_is_reused():
    small = take_buffer(4096)
    assert len(small) == BUFFER_MIN
    assert len(take_buffer(300_000)) == 512 << 10
    assert len(take_buffer(WHOLE_MAX)) == WHOLE_MAX
    give_back(small)
    assert take_buffer(1000) is small
    give_back(small)
    bigger = take_buffer(BUFFER_MIN + 1)  # the kept one is too small: a new, larger one
    assert bigger is not small and len(bigger) >= BUFFER_MIN + 1


def test_the_pool_keeps_the_larger_buffers():
    smalls = [take_buffer(10) for _ in range(BUFFERS_KEPT)]
    for b in smalls:
        give_back(b)
    large = take_buffer(WHOLE_MAX)
    give_back(large)
    assert take_buffer(WHOLE_MAX) is large
    assert len(recv_buffers._buffers) == BUFFERS_KEPT - 1
