"""A hostile peer's blob endpoint: answers each `GET /blobs/<digest>` with whatever bytes the test
scripted (a lying head, too many or too few body bytes, a stall, a cut), on kept-alive connections,
and counts what it was asked. Joined to a daemon as the holder of those digests with `holding`
(an RPCPeer from the same address, announcing them complete), so the daemon's own fetch path
dials it exactly as it would dial a real peer."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fakepeer import RPCPeer, ThreadedListener

#: one step of an answer: bytes to send, a pause in seconds, or CLOSE (the connection ends)
Step = bytes | float | None
CLOSE: Step = None


class HostileBlobPeer(ThreadedListener):
    def __init__(self, ip: str) -> None:
        super().__init__(ip)
        #: digest -> the steps of its answer (a callable gets the request head and returns them)
        self.answers: dict[str, list[Step] | Callable[[bytes], list[Step]]] = {}
        self.asked: Counter[str] = Counter()
        #: bytes of each digest's answers the node took (sent without error)
        self.sent: Counter[str] = Counter()
        self._conns: list[socket.socket] = []
        self.start_listening()

    def accepted(self, conn: socket.socket) -> None:
        self._conns.append(conn)
        threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buf = b""
        try:
            while not self._stop:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.split(b" ", 2)[1].decode()
                digest = self.key(target)
                self.asked[digest] += 1
                answer = self.answers.get(digest)
                steps = answer(head) if callable(answer) else answer
                if steps is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                for step in steps:
                    if step is None:
                        return
                    if isinstance(step, float):
                        time.sleep(step)
                    else:
                        conn.sendall(step)
                        self.sent[digest] += len(step)
        except OSError:
            return
        finally:
            conn.close()

    def key(self, target: str) -> str:
        """What the answers are keyed by: a blob request's digest."""
        return target.rsplit("/", 1)[-1]

    def stop(self) -> None:
        super().stop()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def as_holder(node: Daemon, peer: HostileBlobPeer | list[HostileBlobPeer], holdings: list[list],
              body: Callable[[], Any]) -> Any:
    """Run `body` (blocking calls on the node) while an RPCPeer from each hostile peer's address
    announces `holdings` ([digest, "c", size]): the node fetches them from the hostile endpoints."""
    peers = peer if isinstance(peer, list) else [peer]

    async def run() -> Any:
        rpcs = [await RPCPeer(node.url, port=p.port, holdings=holdings, source_ip=p.ip).connect() for p in peers]
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, lambda: wait_until(
                lambda: {r.uuid for r in rpcs} <= node.online_peers(), 10))
            return await loop.run_in_executor(None, body)
        finally:
            for rpc in rpcs:
                await rpc.close()
    return asyncio.run(run())


def ok_head(length: int | str, extra: bytes = b"") -> bytes:
    """A 200 head with the given Content-Length (anything, when a str)."""
    value = str(length).encode("latin-1")
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n" + extra + b"\r\n"


def range_head(start: int, end: int, size: int) -> bytes:
    """A 206 head for bytes [start, end) of a blob of `size` bytes."""
    return (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
            % (start, end - 1, size, end - start))


def asked_range(head: bytes) -> tuple[int, int] | None:
    """The [start, end) a request head's `Range: bytes=A-B` asks for (None: no range)."""
    m = re.search(rb"(?im)^range: bytes=(\d+)-(\d+)\r?$", head)
    return (int(m[1]), int(m[2]) + 1) if m else None


class ScriptedOrigin(HostileBlobPeer):
    """The same scripted answers for an origin: keyed by the request's path (`/name`), not a digest."""

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def key(self, target: str) -> str:
        return target.split("?", 1)[0]
