"""Streaming HTTP GET built on Tornado's HTTP/1 connection, with backpressure.

Tornado's AsyncHTTPClient streaming callback cannot slow the sender down, so a slow disk would let a
fast peer fill memory; here `data_received` waits while the consumer is behind.

Origin requests (`origin=True`) go through the configured upstream proxy (beiran/proxies.py): plain
http as an absolute-URI request to the proxy, https through a CONNECT tunnel. Peer requests never do.
Origin requests also keep their connections alive between requests (beiran/origin_connections.py);
peer requests here close theirs (blob transfers from peers use their own pool).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import SplitResult, urljoin, urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from beiran import origin_connections, proxies
from beiran.errors import ResponseTooLarge, UpstreamError

BUFFER_LIMIT = 4 << 20
READ_CHUNK = 1 << 20
#: socket reads for headers and small bodies: Tornado allocates a buffer of the read size for every
#: read, and a 1 MiB one (an mmap and its page faults) cost more than a whole small answer's parsing
SMALL_READ = 64 << 10
#: methods a request may be repeated with (RFC 9110 9.2.2): only these are retried on a fresh
#: connection when a kept-alive one turns out closed; the others never take a kept-alive one
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_PARAMS = HTTP1ConnectionParameters(chunk_size=READ_CHUNK, max_body_size=1 << 62, decompress=False)
_default_tls: ssl.SSLContext | None = None


class _ClosedBeforeResponse(UpstreamError):
    """The connection ended before a single byte of a response: on a kept-alive connection, the
    origin closed it while idle, and an idempotent request may go again on a fresh one."""


def default_tls() -> ssl.SSLContext:
    """The system's default verifying context, made once (loading the CA store per connection cost
    milliseconds of event-loop time per https request)."""
    global _default_tls
    if _default_tls is None:
        _default_tls = ssl.create_default_context()
    return _default_tls


class StreamResponse(httputil.HTTPMessageDelegate):
    def __init__(self, url: str) -> None:
        self.url = url
        self.code = 0
        self.reason = ""
        self.headers = httputil.HTTPHeaders()
        self._headers_seen = asyncio.get_running_loop().create_future()
        self._buf: deque[bytes | UpstreamError | None] = deque()  # None: the end of the body
        self._buf_bytes = 0
        self._space = asyncio.Event()
        self._space.set()
        self._more = asyncio.Event()
        self._conn: HTTP1Connection | None = None
        self._task: asyncio.Future[bool] | None = None
        self._version = "HTTP/1.1"
        self._ended = False  # the whole body arrived (finish() was called)
        self._pool: origin_connections.OriginPool | None = None  # where the connection goes back
        self._route: origin_connections.Route | None = None

    # delegate side (Tornado calls these)
    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> None:
        if not isinstance(start_line, httputil.ResponseStartLine):  # a client connection gets responses
            raise TypeError(f"{self.url}: got a request line on a client connection")
        self.code, self.reason, self.headers = start_line.code, start_line.reason, headers
        self._version = start_line.version
        length = headers.get("Content-Length") or ""
        if self._conn is not None and self._conn.stream is not None and (
                not length.isdigit() or int(length) > 4 * SMALL_READ):
            self._conn.stream.read_chunk_size = READ_CHUNK  # a large body: fewer, larger reads
        if not self._headers_seen.done():
            self._headers_seen.set_result(None)

    async def data_received(self, chunk: bytes) -> None:
        self._buf.append(chunk)
        self._buf_bytes += len(chunk)
        self._more.set()
        if self._buf_bytes > BUFFER_LIMIT:
            self._space.clear()
            await self._space.wait()

    def finish(self) -> None:
        self._ended = True
        self._buf.append(None)
        self._more.set()

    def _read_ended(self, task: asyncio.Future[bool]) -> None:
        """The response reader stopped: before any headers, that is a closed connection (Tornado
        tells the delegate nothing when the stream closes before the status line)."""
        exc = None if task.cancelled() else task.exception()
        if not self._headers_seen.done():
            self._headers_seen.set_exception(_ClosedBeforeResponse(
                f"{self.url}: connection closed before a response"
                + (f" ({getattr(exc, 'real_error', None) or exc})" if exc else "")))
            self._headers_seen.exception()  # retrieved: nobody may be waiting any more

    def on_connection_close(self) -> None:
        if not self._headers_seen.done():
            self._headers_seen.set_exception(UpstreamError(f"{self.url}: connection closed"))
        self._buf.append(UpstreamError(f"{self.url}: connection closed mid-body"))
        self._more.set()

    # consumer side
    async def chunks(self, idle_timeout: float = 30.0) -> AsyncIterator[bytes]:
        while True:
            while not self._buf:
                self._more.clear()
                try:
                    await asyncio.wait_for(self._more.wait(), idle_timeout)
                except TimeoutError:
                    raise UpstreamError(f"{self.url}: no data for {idle_timeout:.0f}s") from None
            item = self._buf.popleft()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            self._buf_bytes -= len(item)
            if self._buf_bytes <= BUFFER_LIMIT // 2:
                self._space.set()
            yield item

    async def read_all(self, limit: int, idle_timeout: float = 30.0) -> bytes:
        out, n = [], 0
        async for chunk in self.chunks(idle_timeout):
            n += len(chunk)
            if n > limit:
                raise ResponseTooLarge(f"{self.url}: response larger than {limit} bytes")
            out.append(chunk)
        return b"".join(out)

    def close(self) -> None:
        """Done with the response: a pooled connection whose response arrived whole and that the
        origin lets stay open goes back to the pool; any other connection is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._pool is not None and self._route is not None and self._reusable(conn):
                stream = conn.detach()
                stream.read_chunk_size = SMALL_READ
                self._pool.give(self._route, stream, origin_connections.keep_for(self.headers.get("Keep-Alive")))
            else:
                conn.close()
        self._space.set()

    def _reusable(self, conn: HTTP1Connection) -> bool:
        task = self._task
        if not self._ended or task is None or not task.done() or task.cancelled() or task.exception():
            return False  # not read to its end: what is left of it would be the next answer's start
        if not task.result() or conn.stream is None or conn.stream.closed():
            return False
        tokens = {t.strip().lower() for t in (self.headers.get("Connection") or "").split(",")}
        if "close" in tokens:
            return False
        return self._version == "HTTP/1.1" or "keep-alive" in tokens


async def _connect_tunnel(proxy: proxies.Proxy, host: str, port: int, netloc: str,
                          tls: ssl.SSLContext) -> IOStream:
    """A TLS stream to host:port through an HTTP proxy's CONNECT tunnel."""
    stream = await TCPClient().connect(proxy.host, proxy.port, max_buffer_size=64 << 20)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: beiran"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    try:
        await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await stream.read_until(b"\r\n\r\n", max_bytes=64 << 10)
    except (StreamClosedError, OSError) as exc:
        stream.close()
        raise UpstreamError(f"proxy {proxy.netloc} closed the CONNECT to {netloc}: "
                            f"{getattr(exc, 'real_error', None) or exc}") from None
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
    if not code.startswith("2"):
        stream.close()
        raise UpstreamError(f"proxy {proxy.netloc} refused CONNECT to {netloc}: {status[:200]}")
    try:
        return await stream.start_tls(False, ssl_options=tls, server_hostname=host)
    except ssl.SSLError as exc:
        raise UpstreamError(f"{netloc}: TLS failed: {exc.reason or exc}") from None


async def _connect(parts: SplitResult, port: int, tls: ssl.SSLContext | None, proxy: proxies.Proxy | None,
                   connect_timeout: float) -> IOStream:
    host = parts.hostname or ""
    via = f" through proxy {proxy.netloc}" if proxy else ""
    try:
        if proxy is None:
            stream = await asyncio.wait_for(TCPClient().connect(
                host, port, ssl_options=tls, max_buffer_size=64 << 20), connect_timeout)
        elif tls is not None:
            stream = await asyncio.wait_for(_connect_tunnel(
                proxy, host, port, parts.netloc, tls), connect_timeout)
        else:
            stream = await asyncio.wait_for(TCPClient().connect(
                proxy.host, proxy.port, max_buffer_size=64 << 20), connect_timeout)
    except ssl.SSLError as exc:
        raise UpstreamError(f"{parts.netloc}: TLS failed{via}: {exc.reason or exc}") from None
    except (OSError, StreamClosedError, TimeoutError) as exc:
        reason = getattr(exc, "real_error", None) or exc
        raise UpstreamError(f"cannot connect to {parts.netloc}{via}: {reason or 'timeout'}") from None
    stream.read_chunk_size = SMALL_READ
    return stream


async def _open(method: str, url: str, headers: dict[str, str], connect_timeout: float,
                ssl_ctx: ssl.SSLContext | None, body: bytes | None, origin: bool = False) -> StreamResponse:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"unsupported URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    tls = None
    if parts.scheme == "https":
        tls = ssl_ctx or default_tls()
    proxy = proxies.policy().for_url(parts.scheme, parts.hostname, port) if origin else None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    hdrs = httputil.HTTPHeaders({"Host": parts.netloc, "User-Agent": "beiran", **headers})
    if not origin:
        hdrs["Connection"] = "close"
    if proxy is not None and tls is None:  # plain http through a proxy: the absolute URI
        path = f"http://{parts.netloc}{path}"
        if proxy.authorization:
            hdrs["Proxy-Authorization"] = proxy.authorization
    if body is not None:
        hdrs["Content-Length"] = str(len(body))
    pool = origin_connections.pool() if origin else None
    route = origin_connections.Route(parts.scheme, parts.hostname, port, proxy, tls)
    # a kept-alive connection only for a request that may be sent again if it proves closed
    stream = pool.take(route) if pool is not None and method in IDEMPOTENT else None
    if stream is not None:
        try:
            resp = await _exchange(stream, method, url, path, hdrs.copy(), body, connect_timeout)
        except _ClosedBeforeResponse:
            pass  # closed while idle: once more, on a fresh connection (never retried itself)
        else:
            resp._pool, resp._route = pool, route
            return resp
    stream = await _connect(parts, port, tls, proxy, connect_timeout)
    if pool is not None:
        pool.opened += 1
    resp = await _exchange(stream, method, url, path, hdrs, body, connect_timeout)
    if pool is not None:
        resp._pool, resp._route = pool, route
    return resp


async def _exchange(stream: IOStream, method: str, url: str, path: str, hdrs: httputil.HTTPHeaders,
                    body: bytes | None, connect_timeout: float) -> StreamResponse:
    """One request on an open connection, up to the response's headers."""
    netloc = urlsplit(url).netloc
    conn = HTTP1Connection(stream, True, _PARAMS)
    resp = StreamResponse(url)
    resp._conn = conn
    try:
        await conn.write_headers(httputil.RequestStartLine(method, path, "HTTP/1.1"), hdrs)
        if body:
            await conn.write(body)
        conn.finish()
    except (StreamClosedError, OSError) as exc:
        conn.close()
        raise _ClosedBeforeResponse(f"{netloc}: {getattr(exc, 'real_error', None) or exc}") from None
    task = resp._task = asyncio.ensure_future(conn.read_response(resp))
    task.add_done_callback(resp._read_ended)
    try:
        # awaited directly (no wait_for/shield: each is one more event-loop pass before the headers
        # are seen); a timeout cancels only this future, which nothing else waits for or sets later
        async with asyncio.timeout(connect_timeout + 25):
            await resp._headers_seen
    except TimeoutError:
        conn.close()
        raise UpstreamError(f"{netloc}: no response headers in time") from None
    except _ClosedBeforeResponse:
        conn.close()
        raise
    return resp


@asynccontextmanager
async def stream_request(url: str, headers: dict[str, str] | None = None, *, method: str = "GET",
                         connect_timeout: float = 10.0, ssl_ctx: ssl.SSLContext | None = None,
                         max_redirects: int = 5, body: bytes | None = None, origin: bool = False
                         ) -> AsyncIterator[StreamResponse]:
    """Open `url`, follow redirects (dropping credentials when the host changes), yield the response.

    `origin=True` marks a request to an origin (registry, archive, npm upstream, `[origins]`): it goes
    through the upstream proxy when one is configured for its URL. Requests to peers leave it False."""
    headers = dict(headers or {})
    origin_host = urlsplit(url).netloc
    for _ in range(max_redirects + 1):
        resp = await _open(method, url, headers, connect_timeout, ssl_ctx, body, origin)
        location = resp.headers.get("Location")
        if resp.code in (301, 302, 303, 307, 308) and location:
            resp.close()
            url = urljoin(url, location)
            if urlsplit(url).netloc != origin_host:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            continue
        try:
            yield resp
        finally:
            resp.close()
        return
    raise UpstreamError(f"too many redirects from {origin_host}")
