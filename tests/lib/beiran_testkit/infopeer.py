"""An address answering `GET /info` (any request) with a fixed body, and the slice of a swim-mode
daemon PeerCalls reads: for in-process tests of the /info caches (beiran/peer/calls.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

ME = "00000000-0000-4000-8000-0000000000aa"


class InfoServer:
    """Answers every request with `body` (a JSON object) and counts the connections it accepted
    (one request each: it answers with `Connection: close`)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.connections = body, 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(self.body), self.body))
            await writer.drain()
        finally:
            writer.close()


def swim_ctx(urls: dict[str, str]) -> SimpleNamespace:
    """What PeerCalls reads of the daemon in swim mode: members (this node is ME), their
    addresses, no websockets."""
    cluster = SimpleNamespace(swim=True, membership=SimpleNamespace(live_ids=lambda: [ME, *urls]),
                              url_of=urls.get)
    return SimpleNamespace(identity=SimpleNamespace(uuid=ME), auth=SimpleNamespace(headers=lambda *a: {}),
                           peers=SimpleNamespace(conn=lambda node: None, cluster=cluster))
