"""Manifest media types, parsing what a manifest refers to, and picking a platform from an index."""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from beiran.errors import BadRequest
from beiran.store.digest import parse_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
#: what we ask an upstream for when the client said nothing (schema 1 is obsolete and never asked for)
DEFAULT_ACCEPT = ", ".join(MANIFEST_TYPES)
MAX_MANIFEST = 4 << 20  # the limit Distribution and containers/image use


def merge_accept(values: list[str]) -> str:
    """Docker sends several separate Accept headers: one list, order kept, duplicates dropped."""
    seen: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in seen and len(seen) < 32:
                seen.append(part)
    return ", ".join(seen) if seen else DEFAULT_ACCEPT


@dataclass
class Descriptor:
    digest: str
    size: int | None
    media_type: str = ""
    platform: str | None = None  # os/arch[/variant] for index entries

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size, "media_type": self.media_type}
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass
class ParsedManifest:
    media_type: str
    kind: str  # image | index
    config: Descriptor | None = None
    layers: list[Descriptor] = field(default_factory=list)
    children: list[Descriptor] = field(default_factory=list)

    @property
    def blobs(self) -> list[Descriptor]:
        return ([self.config] if self.config else []) + self.layers


def _descriptor(d: Any, with_platform: bool = False) -> Descriptor:
    if not isinstance(d, dict):
        raise BadRequest("manifest descriptor is not an object")
    digest = str(parse_digest(str(d.get("digest", ""))))
    size = d.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise BadRequest("manifest descriptor has a bad size")
    plat = None
    if with_platform and isinstance(d.get("platform"), dict):
        p = d["platform"]
        plat = "/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
    return Descriptor(digest, size, str(d.get("mediaType") or "")[:255], plat)


def parse_manifest(data: bytes, media_type: str | None = None) -> ParsedManifest:
    """What an image manifest or index refers to. BadRequest for anything else (e.g. schema 1)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("manifest is not a JSON object")
    mt = media_type if media_type in MANIFEST_TYPES else detect_media_type(doc)
    if mt in INDEX_TYPES:
        children = [_descriptor(d, with_platform=True) for d in doc.get("manifests") or []]
        return ParsedManifest(mt, "index", children=children)
    if mt in IMAGE_TYPES:
        config = _descriptor(doc.get("config"))
        layers = [_descriptor(d) for d in doc.get("layers") or []]
        return ParsedManifest(mt, "image", config=config, layers=layers)
    raise BadRequest(f"unsupported manifest type {mt or 'unknown'}")


def detect_media_type(doc: dict[str, Any]) -> str:
    """The manifest's own mediaType, else guessed from its shape (OCI makes the field optional)."""
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt in (*MANIFEST_TYPES, DOCKER_V1, DOCKER_V1_SIGNED):
        return mt
    if doc.get("schemaVersion") == 1:
        return DOCKER_V1_SIGNED if "signatures" in doc else DOCKER_V1
    if isinstance(doc.get("manifests"), list):
        return OCI_INDEX
    if isinstance(doc.get("config"), dict):
        return OCI_MANIFEST
    return ""


def media_type_of(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ""
    return detect_media_type(doc) if isinstance(doc, dict) else ""


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm/v7",
         "armv6l": "arm/v6", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def host_platform() -> str:
    """This machine as os/arch[/variant] (linux/amd64)."""
    return f"{_platform.system().lower()}/{_ARCH.get(_platform.machine().lower(), _platform.machine().lower())}"


def normalize_platform(text: str) -> str:
    """`linux/arm64/v8` -> `linux/arm64`, `arm64` -> `linux/arm64`; BadRequest if malformed."""
    parts = [p for p in text.strip().lower().split("/") if p]
    if not parts or len(parts) > 3 or not all(p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise BadRequest(f"invalid platform {text[:40]!r}: expected os/arch[/variant]")
    if len(parts) == 1:
        parts = ["linux", parts[0]]
    if parts[1] == "aarch64":
        parts[1] = "arm64"
    if parts[1] == "x86_64":
        parts[1] = "amd64"
    if parts[1:] == ["arm64", "v8"]:
        parts = parts[:2]
    return "/".join(parts)


def pick_platform(children: list[Descriptor], wanted: str) -> Descriptor | None:
    """The index entry for `wanted` (os/arch[/variant]); a missing variant matches any variant."""
    want = normalize_platform(wanted).split("/")
    best = None
    for child in children:
        if not child.platform or child.platform.startswith("unknown"):
            continue  # attestation manifests
        have = normalize_platform(child.platform).split("/")
        if have[:2] != want[:2]:
            continue
        if len(want) == 3 and (len(have) < 3 or have[2] != want[2]):
            continue
        if len(have) == len(want):
            return child
        best = best or child
    return best
