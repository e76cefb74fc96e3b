"""A peer's answer to a blob request, its head parsed without `email.parser`.

`http.client` reads response headers into an `email.message.Message`: in the receiving node's
profile that parse was the costliest single step of a small-blob request (5% of n2, more than
serving the blob to apt). A peer's answer is a status line and a dozen plain `Name: value` lines
(RFC 9112, section 5), read here with the same bounds `http.client` keeps (line length, header
count). Everything after the head (the body, chunked or not, keep-alive) stays `http.client`'s.
"""

from __future__ import annotations

import http.client

from beiran.wire_numbers import ascii_digits

#: a status or header line at most this long (http.client's own bound)
MAX_LINE = 65536
#: header lines at most (http.client's own bound)
MAX_HEADERS = 100


class PeerHeaders:
    """The few lookups the receive path makes of a head: case-insensitive, first value wins for
    `get`, every value for `get_all` (as `http.client.HTTPMessage`)."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._first: dict[str, str] = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def get_all(self, name: str, failobj: list[str] | None = None) -> list[str] | None:
        key = name.lower()
        found = [v for n, v in self._fields if n.lower() == key]
        return found or failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first


class PeerResponse(http.client.HTTPResponse):
    """`http.client.HTTPResponse` whose `begin()` reads the head itself."""

    #: body bytes the receive loops have read (a transfer's progress rule watches it: pace.py)
    received = 0
    #: the end offset in the blob this answer's bytes may not pass (None: the writer's size bounds them)
    limit: int | None = None

    def begin(self) -> None:
        if self.headers is not None:  # already begun
            return
        version, status, reason = self._status_line()
        fields: list[tuple[str, str]] = []
        while True:
            line = self._line("header line")
            if line in (b"\r\n", b"\n", b""):
                break
            if len(fields) >= MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name or name != name.strip():
                raise http.client.HTTPException(f"malformed header line {line[:80]!r}")
            fields.append((name, value.strip(" \t\r\n")))
        headers = PeerHeaders(fields)
        self.headers = self.msg = headers
        self.version, self.status, self.reason = version, status, reason

        coding = headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            raise http.client.HTTPException(f"unsupported Transfer-Encoding {coding[:40]!r}")
        self.chunked = coding is not None
        self.chunk_left = None
        tokens = {t.strip().lower() for t in (headers.get("connection") or "").split(",")}
        self.will_close = "close" in tokens or (version == 10 and "keep-alive" not in tokens)
        self.length = None
        length = headers.get("content-length")
        if length is not None and not self.chunked:
            if not ascii_digits(length) or len(length) > 19 or len(set(headers.get_all("content-length") or [])) > 1:
                raise http.client.HTTPException(f"bad Content-Length {length[:40]!r}")
            self.length = int(length)
        if status in (204, 304) or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the connection does

    def _status_line(self) -> tuple[int, int, str]:
        line = self._line("status line")
        if not line:
            raise http.client.RemoteDisconnected("the peer closed the connection without an answer")
        version, _, rest = line.decode("iso-8859-1").rstrip("\r\n").partition(" ")
        status, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or len(status) != 3 or not ascii_digits(status):
            raise http.client.BadStatusLine(line[:80].decode("iso-8859-1"))
        code = int(status)
        if code < 200:  # a peer never sends 1xx (nothing asks it to continue or switch)
            raise http.client.BadStatusLine(line[:80].decode("iso-8859-1"))
        return (11 if version == "HTTP/1.1" else 10), code, reason

    def _line(self, what: str) -> bytes:
        assert self.fp is not None
        line = self.fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong(what)
        return line


class PeerHTTPConnection(http.client.HTTPConnection):
    response_class = PeerResponse
