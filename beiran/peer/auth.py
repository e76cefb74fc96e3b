"""Optional cluster token: peers prove they know it with an HMAC over the request and a fresh
timestamp + nonce; the answering side proves it back in its hello. Off when no token is set."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from tornado.httputil import HTTPServerRequest

from beiran.errors import Unauthorized

WINDOW = 300  # seconds of clock skew accepted


class PeerAuth:
    def __init__(self, token: str | None, node_uuid: str) -> None:
        self.token = token.encode() if token else None
        self.node_uuid = node_uuid

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def _sig(self, *parts: str) -> str:
        assert self.token is not None
        return hmac.new(self.token, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def headers(self, method: str, path: str) -> dict[str, str]:
        """Headers proving the token for one request (empty when auth is off)."""
        if not self.enabled:
            return {}
        ts, nonce = str(int(time.time())), secrets.token_hex(12)
        sig = self._sig(method.upper(), path, ts, nonce, self.node_uuid)
        return {"X-Beiran-Auth": f"uuid={self.node_uuid},ts={ts},nonce={nonce},sig={sig}"}

    def check_request(self, request: HTTPServerRequest) -> None:
        if not self.enabled:
            return
        raw = request.headers.get("X-Beiran-Auth")
        if not raw:
            raise Unauthorized("this cluster requires a cluster token proof (X-Beiran-Auth)")
        try:
            fields = dict(part.split("=", 1) for part in raw.split(","))
            ts, nonce, uuid, sig = fields["ts"], fields["nonce"], fields["uuid"], fields["sig"]
            skew = abs(time.time() - int(ts))
        except (ValueError, KeyError):
            raise Unauthorized("malformed X-Beiran-Auth header") from None
        if skew > WINDOW:
            raise Unauthorized("cluster token proof expired (check the clocks)")
        expected = self._sig((request.method or "").upper(), request.path, ts, nonce, uuid)
        if not hmac.compare_digest(expected, sig):
            raise Unauthorized("wrong cluster token")

    def uuid_of(self, request: HTTPServerRequest) -> str | None:
        """The requesting node's UUID from its X-Beiran-Auth proof; None when auth is off (nothing
        proves who asks). Only meaningful after check_request() accepted the request."""
        if not self.enabled:
            return None
        raw = request.headers.get("X-Beiran-Auth", "")
        for part in raw.split(","):
            if part.startswith("uuid="):
                return part[5:] or None
        return None

    def nonce_of(self, request: HTTPServerRequest) -> str:
        raw = request.headers.get("X-Beiran-Auth", "")
        for part in raw.split(","):
            if part.startswith("nonce="):
                return part[6:]
        return ""

    def hello_proof(self, nonce: str) -> str | None:
        """The answering side's proof, bound to the dialer's nonce."""
        return self._sig("hello", nonce) if self.enabled else None

    def check_hello_proof(self, nonce: str, proof: str | None) -> bool:
        if not self.enabled:
            return True
        return bool(proof) and hmac.compare_digest(self._sig("hello", nonce), proof or "")
