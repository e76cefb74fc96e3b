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


class UpstreamError(BeiranError):
    """The origin (registry, mirror, peer) answered badly or not at all."""

    status, code = 502, "upstream_error"


class ResponseTooLarge(UpstreamError):
    """An upstream answer longer than the reader's limit (it is not read past that)."""

    code = "response_too_large"


class VerificationError(UpstreamError):
    """Bytes did not match their digest or announced size."""

    code = "digest_mismatch"


class StorageFull(BeiranError):
    status, code = 507, "storage_full"


class ConfigError(BeiranError):
    status, code = 500, "config_error"


class PluginError(BeiranError):
    status, code = 500, "plugin_error"
