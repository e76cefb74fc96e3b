"""The progress rule of one peer transfer (beiran/fetch/pace.py), in process: a receive thread
blocked on a socket is woken when its peer falls below the floor rate, and only then."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import SimpleNamespace
from typing import Any

from beiran.fetch.pace import Pace

WINDOW = 0.1


def blocked_reader(pace: Pace, sock: socket.socket, resp: Any, begin: bool = True) -> threading.Thread:
    """A receive thread: reads `sock` until it ends, counting into `resp.received` as the real
    loops do; it never returns while the peer sends nothing and the socket stays open."""
    def run() -> None:
        if begin:
            pace.begin()
        pace.attach(SimpleNamespace(sock=sock))  # type: ignore[arg-type]
        while data := sock.recv(65536):
            resp.received += len(data)
        pace.end()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def ended(thread: threading.Thread, within: float) -> bool:
    await asyncio.get_running_loop().run_in_executor(None, thread.join, within)
    return not thread.is_alive()


def test_a_silent_or_dripping_peer_is_cut_and_the_thread_freed() -> None:
    async def run() -> None:
        for drip in (False, True):
            a, b = socket.socketpair()
            resp = SimpleNamespace(received=0)
            pace = Pace(asyncio.get_running_loop(), floor=10_000, window=WINDOW)
            pace.resp = resp  # type: ignore[assignment]
            thread = blocked_reader(pace, b, resp)
            for _ in range(10):
                if drip and not pace.expired:
                    a.send(b"x")  # 1 byte per 50 ms: 20 bytes/s, far below 10 kB/s
                await asyncio.sleep(0.05)
            assert await ended(thread, 5.0), "the receive thread is still blocked"
            assert pace.expired
            assert not pace.end()
            pace.close()
            a.close()
            b.close()
    asyncio.run(run())


def test_a_peer_keeping_the_floor_is_not_cut_and_queue_time_is_not_its() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        resp = SimpleNamespace(received=0)
        window = 1.0  # a busy machine may not run the sender for a while: the floor is far below it
        pace = Pace(loop, floor=1_000, window=window)
        pace.resp = resp  # type: ignore[assignment]
        await asyncio.sleep(window * 3)  # queued for a receive thread: nothing is due yet
        assert not pace.expired
        thread = blocked_reader(pace, b, resp)

        def send() -> None:  # 20 kB per 20 ms, 1 MB/s, for ~3 s (three windows), then the body ends
            for _ in range(150):
                a.send(b"y" * 20_000)
                threading.Event().wait(0.02)
        await loop.run_in_executor(None, send)
        assert not pace.expired and thread.is_alive()
        a.close()
        assert await ended(thread, 5.0)
        assert pace.end() and resp.received == 3_000_000
        pace.close()
        b.close()
    asyncio.run(run())


def test_closing_a_running_transfer_frees_its_thread() -> None:
    """The fetch awaiting a transfer was cancelled (a shutdown): the thread is not left reading."""
    async def run() -> None:
        a, b = socket.socketpair()
        resp = SimpleNamespace(received=0)
        pace = Pace(asyncio.get_running_loop(), floor=0, window=30.0)  # no floor at all
        pace.resp = resp  # type: ignore[assignment]
        thread = blocked_reader(pace, b, resp)
        await asyncio.sleep(0.05)
        pace.close()
        assert await ended(thread, 5.0)
        a.close()
        b.close()
    asyncio.run(run())


def test_the_event_loop_rule_cuts_a_drip_or_a_silent_head_and_keeps_a_flow() -> None:
    """`paced`, the rule for transfers read on the loop (peers named by https:// URLs), which had
    neither a floor nor (see peer_source) a byte bound: a drip and a head that never comes are cut
    with the peer's error; a peer that keeps the floor is never cut, however long it takes."""
    import pytest

    from beiran.errors import UpstreamError
    from beiran.fetch.pace import paced

    async def drip() -> None:
        async with paced("dripper", floor=10_000, window=0.2) as received:
            for _ in range(100):  # 1 byte per 20 ms: 50 bytes/s for 2 s, far below 10 kB/s
                await asyncio.sleep(0.02)
                received(1)

    async def silent_head() -> None:
        async with paced("silent", floor=10_000, window=0.2):
            await asyncio.sleep(5)

    async def flow() -> int:
        got = 0
        async with paced("flowing", floor=1_000, window=0.5) as received:
            for _ in range(60):  # 20 kB per 20 ms for ~1.2 s: a floor far below it
                await asyncio.sleep(0.02)
                received(20_000)
                got += 20_000
        return got

    for attack in (drip, silent_head):
        with pytest.raises(UpstreamError, match=r"fetch\.peer_min_rate"):
            asyncio.run(asyncio.wait_for(attack(), 4.0))
    assert asyncio.run(flow()) == 1_200_000
