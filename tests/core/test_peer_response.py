"""A peer's answer head parsed without email.parser (issue 16, speed): the same outcome as
http.client for every answer a peer sends, and the same refusals (bounds, malformed lines) for
what a hostile peer might send instead."""

from __future__ import annotations

import http.client
import socket

import pytest

from beiran.fetch.peer_response import MAX_HEADERS, MAX_LINE, PeerResponse

GOOD = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Beiran-State: complete\r\nContent-Type: a/b\r\n\r\nhello",
    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-4/5\r\nContent-Length: 3\r\n\r\nllo",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nserver: x\r\nSet-Thing: a\r\nset-thing: b\r\n\r\nuntil close",
    b"HTTP/1.1 429 \r\nContent-Length: 0\r\n\r\n",
]


def answer(cls: type[http.client.HTTPResponse], raw: bytes, method: str = "GET") -> tuple:
    a, b = socket.socketpair()
    try:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        resp = cls(b, method=method)
        resp.begin()
        head = (resp.status, resp.reason, resp.version, resp.length, resp.chunked, resp.will_close,
                resp.getheader("content-length"), resp.getheader("X-BEIRAN-STATE"), resp.getheader("set-thing"),
                resp.getheader("missing", "dflt"))
        return head, resp.read()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("raw", GOOD)
def test_every_answer_a_peer_sends_reads_as_http_client_reads_it(raw):
    assert answer(PeerResponse, raw) == answer(http.client.HTTPResponse, raw)
    assert answer(PeerResponse, raw, "HEAD") == answer(http.client.HTTPResponse, raw, "HEAD")


@pytest.mark.parametrize("raw,error", [
    (b"", http.client.RemoteDisconnected),
    (b"SPDY/3 200 OK\r\n\r\n", http.client.BadStatusLine),
    (b"HTTP/1.1 2000 OK\r\n\r\n", http.client.BadStatusLine),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", http.client.BadStatusLine),
    (b"HTTP/1.1 200 OK" + b"x" * MAX_LINE + b"\r\n\r\n", http.client.LineTooLong),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_LINE + b"\r\n\r\n", http.client.LineTooLong),
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"\r\n", http.client.HTTPException),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http.client.HTTPException),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello", http.client.HTTPException),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", http.client.HTTPException),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", http.client.HTTPException),
])
def test_a_malformed_or_oversized_head_is_refused(raw, error):
    with pytest.raises(error):
        answer(PeerResponse, raw)
