"""gRPC status codes for everything that can go wrong behind the CRI, with messages kubelet shows.

kubelet reports `rpc error: code = X desc = Y` in pod events, so each failure gets the code that
means it (a bad reference is INVALID_ARGUMENT, the registry's 401 UNAUTHENTICATED, a dead runtime
UNAVAILABLE) and a message naming what failed; never an opaque UNKNOWN for an expected error.
"""

from __future__ import annotations

import grpc

from beiran.errors import BeiranError, VerificationError


class CRIError(Exception):
    """An error to send as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def from_beiran(exc: BeiranError, prefix: str = "") -> CRIError:
    """A Beiran/docker-plugin error (HTTP status inside) as the gRPC code with the same meaning."""
    if isinstance(exc, VerificationError):
        code = grpc.StatusCode.DATA_LOSS
    else:
        code = _HTTP_TO_GRPC.get(exc.status, grpc.StatusCode.INTERNAL if exc.status >= 500
                                 else grpc.StatusCode.FAILED_PRECONDITION)
    return CRIError(code, f"{prefix}{exc.message}")


def from_runtime(exc: grpc.aio.AioRpcError, endpoint: str, what: str) -> CRIError:
    """The runtime's own status, kept, with a message saying it came from the runtime."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return CRIError(code, f"container runtime at {endpoint} is not reachable ({what}): {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CRIError(code, f"container runtime at {endpoint} did not answer {what} in time")
    if code == grpc.StatusCode.UNKNOWN:
        code = _guess(details)
    return CRIError(code, f"container runtime: {what}: {details}")


def _guess(details: str) -> grpc.StatusCode:
    """containerd sends many errors as UNKNOWN; its text still says what happened."""
    text = details.lower()
    if "connection refused" in text or "no such host" in text or "i/o timeout" in text:
        return grpc.StatusCode.UNAVAILABLE
    if "401 unauthorized" in text or "authorization failed" in text:
        return grpc.StatusCode.UNAUTHENTICATED
    if "403 forbidden" in text:
        return grpc.StatusCode.PERMISSION_DENIED
    if ": not found" in text:
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.UNKNOWN
