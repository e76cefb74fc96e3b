"""Typed errors. Each carries the HTTP status it maps to, so handlers render them once."""

from __future__ import annotations

from typing import Any


class BeiranError(Exception):
    """Base of every expected error; `status` and `code` travel to the client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def for_peer(self) -> BeiranError:
        """This error as a peer may see it. Errors whose text carries local detail (paths, disk
        figures) set `peer_message`; the peer gets the same type and status with that text."""
        if self.peer_message is None:
            return self
        return type(self)(self.peer_message, status=self.status, code=self.code)

    #: what a peer is told instead of `message` (None: the message reveals nothing local)
    peer_message: str | None = None


class BadRequest(BeiranError):
    status, code = 400, "bad_request"


class InvalidDigest(BadRequest):
    code = "invalid_digest"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class UnknownCommand(BadRequest):
    code = "unknown_command"


class InvalidRange(BeiranError):
    status, code = 416, "invalid_range"


class Unauthorized(BeiranError):
    status, code = 401, "unauthorized"


class Forbidden(BeiranError):
    status, code = 403, "forbidden"


class NotFound(BeiranError):
    status, code = 404, "not_found"


class BlobNotFound(NotFound):
    code = "blob_unknown"


class Conflict(BeiranError):
    status, code = 409, "conflict"


class PayloadTooLarge(BeiranError):
    status, code = 413, "payload_too_large"


class TooManyRequests(BeiranError):
    status, code = 429, "too_many_requests"


class UpstreamError(BeiranError):
    """The origin (registry, mirror, peer) answered badly or not at all."""

    status, code = 502, "upstream_error"


class ResponseTooLarge(UpstreamError):
    """An upstream answer longer than the reader's limit (it is not read past that)."""

    code = "response_too_large"


class PeerLacksBlob(UpstreamError):
    """A peer answered 404: it no longer holds the blob (evicted, or it never had it complete). Not a
    fault of the peer: the fetcher moves on without counting a failure or logging at INFO."""

    code = "peer_lacks_blob"


class PeerBusy(PeerLacksBlob):
    """A peer answered 429: its uploads are at their cap (`[limits] peer_uploads`). No fault: the
    fetcher tries another holder, and comes back to this one after a pause rather than going to the
    origin while holders exist."""

    code = "peer_busy"


class VerificationError(UpstreamError):
    """Bytes did not match their digest or announced size."""

    code = "digest_mismatch"


class StorageFull(BeiranError):
    status, code = 507, "storage_full"
    peer_message = "not enough storage on this node for that blob"


class ConfigError(BeiranError):
    status, code = 500, "config_error"


class PluginError(BeiranError):
    status, code = 500, "plugin_error"


def _codes() -> dict[str, type[BeiranError]]:
    found: dict[str, type[BeiranError]] = {}
    stack: list[type[BeiranError]] = [BeiranError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found


def from_wire(body: dict[str, Any], default_status: int = 502) -> BeiranError:
    """An error a peer sent (`to_dict()` plus "status") as the typed error its code names, so the
    receiver branches on types, never on the text. Unknown codes keep the code on a BeiranError."""
    code = str(body.get("error") or "peer_error")
    try:
        status = int(body.get("status", default_status))
    except (TypeError, ValueError):
        status = default_status
    message = str(body.get("message", "peer error"))[:500]
    by_status: dict[int, type[BeiranError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden,
                                               404: NotFound, 429: TooManyRequests, 507: StorageFull}
    cls = _codes().get(code) or by_status.get(status, BeiranError)  # a plugin's code this node lacks
    return cls(message, status=status, code=code)
