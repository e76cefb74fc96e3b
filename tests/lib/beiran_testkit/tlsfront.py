"""A peer reached over https://: TLS in front of a real daemon (as an nginx or stunnel an operator
put there would be), with a certificate from a test CA the node is told to trust. Everything passes
through to the daemon (its /peer websocket, its RPCs, its blobs) except the blob requests a test
scripted (a drip, a silent head, a flood: HostileBlobPeer's steps), and a blob may be passed
through at a set pace (a slow but honest peer). The daemon sees each connection come from the
client's own address, so it knows the node by its real address."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from beiran_testkit.daemon import Daemon
from beiran_testkit.fakepeer import ThreadedListener
from beiran_testkit.hostilepeer import Step


class TlsFront(ThreadedListener):
    def __init__(self, backend: Daemon, cert: Path, key: Path, ip: str = "127.0.0.1") -> None:
        super().__init__(ip)
        self.backend = backend
        self.url = f"https://{ip}:{self.port}"
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(str(cert), str(key))
        #: digest -> the steps of its answer (a callable gets the request head and returns them)
        self.answers: dict[str, list[Step] | Callable[[bytes], list[Step]]] = {}
        #: digest -> bytes a second its pass-through answer is held to
        self.rate: dict[str, float] = {}
        #: TLS handshakes that completed (a client that does not trust the certificate ends its own)
        self.handshakes = 0
        self.asked: Counter[str] = Counter()
        #: bytes of each digest's answers the node took (scripted or passed through)
        self.sent: Counter[str] = Counter()
        self._socks: list[socket.socket] = []
        self.start_listening()

    def accepted(self, conn: socket.socket) -> None:
        self._socks.append(conn)
        threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        conn: socket.socket = raw
        try:
            client_ip = raw.getpeername()[0]
            conn = self.tls.wrap_socket(raw, server_side=True)  # `raw` is detached: `conn` is the socket
            self.handshakes += 1
            self._socks.append(conn)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            target = buf.split(b" ", 2)[1].decode("latin-1")
            digest = target.split("?", 1)[0].rsplit("/", 1)[-1] if target.startswith("/blobs/") else ""
            if digest:
                self.asked[digest] += 1
            answer = self.answers.get(digest)
            if answer is None:
                self._pipe(conn, client_ip, buf, digest)
                return
            for step in answer(buf.split(b"\r\n\r\n", 1)[0]) if callable(answer) else answer:
                if step is None:
                    return
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    conn.sendall(step)
                    self.sent[digest] += len(step)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def _pipe(self, conn: ssl.SSLSocket, client_ip: str, first: bytes, digest: str) -> None:
        """Both ways between the client and the daemon, on this one thread (an SSL socket is not
        read and written from two threads at once), until either side ends."""
        back = socket.create_connection((self.backend.ip, self.backend.port), timeout=30,
                                        source_address=(client_ip, 0))
        self._socks.append(back)
        rate = self.rate.get(digest)
        try:
            back.sendall(first)
            while True:
                ready = [conn] if conn.pending() else select.select([conn, back], [], [], 300)[0]
                if not ready:
                    return
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    back.sendall(data)
                if back in ready:
                    data = back.recv(65536)
                    if not data:
                        return
                    self._send(conn, data, rate)
                    if digest:
                        self.sent[digest] += len(data)
        finally:
            back.close()

    @staticmethod
    def _send(conn: ssl.SSLSocket, data: bytes, rate: float | None) -> None:
        if rate is None:
            conn.sendall(data)
            return
        step = max(1, int(rate / 20))  # a twentieth of a second's worth at a time
        for i in range(0, len(data), step):
            conn.sendall(data[i:i + step])
            time.sleep(0.05)

    def stop(self) -> None:
        super().stop()
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
