"""Errors with the OCI distribution spec's codes, and the mapping of core errors onto them."""

from __future__ import annotations

from typing import Any

from beiran.errors import (
    BadRequest,
    BeiranError,
    BlobNotFound,
    Forbidden,
    NotFound,
    Unauthorized,
    UpstreamError,
    VerificationError,
)


class NameInvalid(BadRequest):
    code = "NAME_INVALID"


class NameUnknown(NotFound):
    code = "NAME_UNKNOWN"


class TagInvalid(BadRequest):
    code = "TAG_INVALID"


class InvalidReference(BadRequest):
    code = "invalid_reference"


class PlatformMismatch(NotFound):
    """`--platform X` for an image built only for Y: Docker refuses it, and so do we."""

    code = "platform_mismatch"


class ManifestUnknown(NotFound):
    code = "MANIFEST_UNKNOWN"


class BlobUnknown(BlobNotFound):
    code = "BLOB_UNKNOWN"


class ManifestInvalid(UpstreamError):
    """The upstream's manifest is unusable (too large, not JSON where JSON is needed)."""

    code = "MANIFEST_INVALID"


class DigestMismatch(VerificationError):
    code = "DIGEST_INVALID"


class RegistryUnavailable(UpstreamError):
    code = "UNAVAILABLE"


class UpstreamUnauthorized(Unauthorized):
    code = "UNAUTHORIZED"


class UpstreamDenied(Forbidden):
    code = "DENIED"


class TooManyRequests(BeiranError):
    status, code = 429, "TOOMANYREQUESTS"


class Unsupported(BeiranError):
    status, code = 405, "UNSUPPORTED"


#: core error codes -> OCI codes
_CORE_TO_OCI = {
    "invalid_digest": "DIGEST_INVALID", "digest_mismatch": "DIGEST_INVALID", "blob_unknown": "BLOB_UNKNOWN",
    "unauthorized": "UNAUTHORIZED", "forbidden": "DENIED", "upstream_error": "UNAVAILABLE",
    "unavailable": "UNAVAILABLE", "storage_full": "UNAVAILABLE", "invalid_range": "RANGE_INVALID",
    "method_not_allowed": "UNSUPPORTED", "payload_too_large": "SIZE_INVALID", "bad_request": "UNSUPPORTED",
}


def oci_code(exc: BaseException | None, status: int, not_found: str = "NAME_UNKNOWN") -> str:
    """The spec's error code for an exception (plugin errors carry it; core ones are mapped)."""
    code = getattr(exc, "code", None)
    if isinstance(exc, BeiranError) and isinstance(code, str) and code.isupper():
        return code
    if isinstance(code, str) and code in _CORE_TO_OCI:
        return _CORE_TO_OCI[code]
    if status == 404 or code == "not_found":
        return not_found
    return {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 405: "UNSUPPORTED",
            416: "RANGE_INVALID", 429: "TOOMANYREQUESTS"}.get(status, "UNKNOWN")


def oci_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if detail:
        err["detail"] = detail
    return {"errors": [err]}
