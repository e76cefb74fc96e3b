"""Optional cluster token: peers prove they know it with an HMAC over the request (method, path
with query, body hash) and a fresh timestamp + nonce; the answering side proves it back in its
hello. Off when no token is set.

There is one parser for the `X-Beiran-Auth` header (`parse_auth_header`), so the fields the
signature covers are exactly the fields the identity is taken from; and one accessor for "which
peer sent this request" (`requesting_peer`), filled only by a verified proof.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid as uuidlib
from collections import OrderedDict
from dataclasses import dataclass

from tornado.httputil import HTTPServerRequest

from beiran.errors import BadRequest, Unauthorized
from beiran.wire_numbers import ascii_digits

WINDOW = 300  # seconds of clock skew accepted; a nonce is remembered this long after its timestamp
NONCE_CAPACITY = 200_000  # remembered nonces (~40 MB at most); beyond it the oldest are dropped
HEADER = "X-Beiran-Auth"
MAX_HEADER = 512
_FIELDS = frozenset({"uuid", "ts", "nonce", "sig", "body"})
_REQUIRED = ("uuid", "ts", "nonce", "sig")
_HEX = re.compile(r"[0-9a-f]+")
_ATTR = "_beiran_peer"  # where a verified proof is kept on the request


@dataclass(frozen=True)
class AuthProof:
    """The fields of one X-Beiran-Auth header, syntactically valid (not yet verified)."""

    uuid: str
    ts: int
    nonce: str
    sig: str
    body: str  # sha256 hex of the request body, "" for none


def parse_auth_header(raw: str) -> AuthProof:
    """The one parser. Any doubt (duplicate or unknown key, bad hex, non-canonical UUID) is a 401."""
    if len(raw) > MAX_HEADER:
        raise Unauthorized(f"malformed {HEADER} header: too long")
    fields: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in _FIELDS:
            raise Unauthorized(f"malformed {HEADER} header: unexpected field {key[:20]!r}")
        if key in fields:
            raise Unauthorized(f"malformed {HEADER} header: duplicate field {key!r}")
        fields[key] = value
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise Unauthorized(f"malformed {HEADER} header: missing {', '.join(missing)}")
    sig, nonce, ts, body = fields["sig"], fields["nonce"], fields["ts"], fields.get("body", "")
    if len(sig) != 64 or not _HEX.fullmatch(sig):
        raise Unauthorized(f"malformed {HEADER} header: sig must be 64 lowercase hex characters")
    if not 16 <= len(nonce) <= 64 or not _HEX.fullmatch(nonce):
        raise Unauthorized(f"malformed {HEADER} header: nonce must be 16-64 lowercase hex characters")
    if not ascii_digits(ts) or len(ts) > 12:
        raise Unauthorized(f"malformed {HEADER} header: ts must be a Unix time")
    if body and (len(body) != 64 or not _HEX.fullmatch(body)):
        raise Unauthorized(f"malformed {HEADER} header: body must be a sha256 hex digest")
    try:
        node = str(uuidlib.UUID(fields["uuid"]))
    except ValueError:
        node = ""
    if node != fields["uuid"]:
        raise Unauthorized(f"malformed {HEADER} header: uuid must be a canonical UUID")
    return AuthProof(uuid=node, ts=int(ts), nonce=nonce, sig=sig, body=body)


def body_hash(body: bytes | None) -> str:
    return hashlib.sha256(body).hexdigest() if body else ""


def requesting_peer(request: HTTPServerRequest) -> str | None:
    """The UUID of the peer whose verified proof this request carries; None when nothing proved
    who asks (auth off, the unix socket, or a request that was not checked)."""
    proof = getattr(request, _ATTR, None)
    return proof.uuid if isinstance(proof, AuthProof) else None


def calling_peer(request: HTTPServerRequest, claimed: object) -> str:
    """Who makes a peer request: the proven UUID, or without a cluster token the body's `from`
    (only a claim then, as a websocket hello is). One rule for every peer request route."""
    peer = requesting_peer(request)
    if peer is not None:
        return peer
    try:
        return str(uuidlib.UUID(str(claimed)))
    except ValueError:
        raise BadRequest("`from` must be the calling node's UUID") from None


class NonceCache:
    """Nonces seen within the window, so a captured request cannot be sent again.

    Bounded: when full, the oldest entry is dropped and every proof not newer than it is refused
    from then on (a floor), so dropping never lets a replay through.
    """

    def __init__(self, capacity: int = NONCE_CAPACITY) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, int] = OrderedDict()  # nonce -> ts, in arrival order
        self.floor = 0

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, ts: int, now: float) -> bool:
        """False when the nonce was seen already (or falls under the floor)."""
        while self._seen:
            oldest, oldest_ts = next(iter(self._seen.items()))
            if oldest_ts + WINDOW >= now and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
            if oldest_ts + WINDOW >= now:  # dropped while still valid: refuse its era from now on
                self.floor = max(self.floor, oldest_ts)
        if ts <= self.floor or nonce in self._seen:
            return False
        self._seen[nonce] = ts
        return True


class PeerAuth:
    def __init__(self, token: str | None, node_uuid: str) -> None:
        self.token = token.encode() if token else None
        self.node_uuid = node_uuid
        self.nonces = NonceCache()

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def _sig(self, *parts: str) -> str:
        assert self.token is not None
        return hmac.new(self.token, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def _request_sig(self, method: str, target: str, proof: AuthProof) -> str:
        return self._sig("v2", method.upper(), target, proof.body, str(proof.ts), proof.nonce, proof.uuid)

    def headers(self, method: str, target: str, body: bytes | None = None) -> dict[str, str]:
        """Headers proving the token for one request (empty when auth is off). `target` is the
        path with its query exactly as sent; `body` the exact request body, if any."""
        if not self.enabled:
            return {}
        proof = AuthProof(uuid=self.node_uuid, ts=int(time.time()), nonce=secrets.token_hex(16),
                          sig="", body=body_hash(body))
        sig = self._request_sig(method, target, proof)
        extra = f",body={proof.body}" if proof.body else ""
        return {HEADER: f"uuid={proof.uuid},ts={proof.ts},nonce={proof.nonce}{extra},sig={sig}"}

    def check_request(self, request: HTTPServerRequest) -> AuthProof | None:
        """Verify the request's proof (signature, age, body hash when the body is here, nonce
        unused) and remember it as the request's peer; None when auth is off."""
        if not self.enabled:
            return None
        values = request.headers.get_list(HEADER)
        if not values:
            raise Unauthorized(f"this cluster requires a cluster token proof ({HEADER})")
        if len(values) > 1:
            raise Unauthorized(f"malformed {HEADER} header: sent more than once")
        proof = parse_auth_header(values[0])
        now = time.time()
        if abs(now - proof.ts) > WINDOW:
            raise Unauthorized("cluster token proof expired (check the clocks)")
        expected = self._request_sig(request.method or "", request.uri or "", proof)
        if not hmac.compare_digest(expected, proof.sig):
            raise Unauthorized("wrong cluster token")
        if request.body and not hmac.compare_digest(body_hash(request.body), proof.body):
            raise Unauthorized("the cluster token proof does not cover this request body")
        if not self.nonces.add(proof.nonce, proof.ts, now):
            raise Unauthorized("cluster token proof already used (replayed request)")
        setattr(request, _ATTR, proof)
        return proof

    def check_body(self, request: HTTPServerRequest, body: bytes) -> None:
        """For handlers that stream their body: the body read must be the one that was signed."""
        proof = getattr(request, _ATTR, None)
        if isinstance(proof, AuthProof) and not hmac.compare_digest(body_hash(body), proof.body):
            raise Unauthorized("the cluster token proof does not cover this request body")

    def uuid_of(self, request: HTTPServerRequest) -> str | None:
        """Thin wrapper of `requesting_peer`, kept for callers written against it."""
        return requesting_peer(request)

    def nonce_of(self, request: HTTPServerRequest) -> str:
        proof = getattr(request, _ATTR, None)
        return proof.nonce if isinstance(proof, AuthProof) else ""

    def hello_proof(self, nonce: str) -> str | None:
        """The answering side's proof, bound to the dialer's nonce and to this node's UUID."""
        return self._sig("hello", nonce, self.node_uuid) if self.enabled else None

    def check_hello_proof(self, nonce: str, node: str, proof: object) -> bool:
        if not self.enabled:
            return True
        return (isinstance(proof, str) and bool(nonce)
                and hmac.compare_digest(self._sig("hello", nonce, node), proof))
