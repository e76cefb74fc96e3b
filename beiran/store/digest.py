"""Digest parsing. Every path in the store is built from a digest that passed `parse_digest`."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass

from beiran.errors import InvalidDigest

ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        return f"{self.algorithm}:{self.hex[:12]}"


def parse_digest(value: str) -> Digest:
    """'sha256:<64 hex>' or 'sha512:<128 hex>'; anything else raises InvalidDigest (400)."""
    if not isinstance(value, str) or len(value) > 140:
        raise InvalidDigest("digest: expected algorithm:hex")
    return _parse(value)


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> Digest:
    """Each blob's digest is parsed several times per request (access, store paths, fetch): the
    valid ones are remembered (a Digest is immutable; an invalid one raises and is not kept)."""
    algorithm, sep, hexpart = value.partition(":")
    if not sep:
        raise InvalidDigest(f"digest {value[:80]!r}: expected algorithm:hex")
    if algorithm not in ALGORITHMS:
        raise InvalidDigest(f"digest {value[:80]!r}: unsupported algorithm {algorithm[:20]!r} "
                            f"(supported: {', '.join(ALGORITHMS)})")
    if len(hexpart) != ALGORITHMS[algorithm] or not _HEX.match(hexpart):
        raise InvalidDigest(f"digest {value[:80]!r}: {algorithm} needs {ALGORITHMS[algorithm]} "
                            "lowercase hex characters")
    return Digest(algorithm, hexpart)


def digest_from_sri(integrity: str) -> Digest:
    """npm's `sha512-<base64>` subresource integrity -> Digest."""
    algorithm, sep, b64 = integrity.strip().partition("-")
    if not sep or algorithm not in ALGORITHMS:
        raise InvalidDigest(f"integrity {integrity[:80]!r}: expected sha512-<base64>")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise InvalidDigest(f"integrity {integrity[:80]!r}: bad base64") from exc
    return parse_digest(f"{algorithm}:{raw.hex()}")


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
