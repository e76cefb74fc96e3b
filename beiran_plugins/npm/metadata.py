"""Pure functions over packuments: checking what the upstream sent, the abbreviated form, tarball
URLs rewritten to this node, and each version's tarball file name and sha512 digest."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import urlsplit

from beiran.errors import InvalidDigest, UpstreamError
from beiran.store.digest import Digest, digest_from_sri
from beiran_plugins.npm.names import unscoped

ABBREVIATED = "application/vnd.npm.install-v1+json"
#: fields of a version kept in the abbreviated ("corgi") document npm's registry serves
ABBREVIATED_VERSION_FIELDS = (
    "name", "version", "deprecated", "dependencies", "optionalDependencies", "devDependencies",
    "bundleDependencies", "bundledDependencies", "peerDependencies", "peerDependenciesMeta",
    "acceptDependencies", "bin", "directories", "dist", "engines", "os", "cpu", "libc", "funding",
    "license", "_hasShrinkwrap", "hasInstallScript",
)
INSTALL_SCRIPTS = ("preinstall", "install", "postinstall")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


class MalformedPackument(UpstreamError):
    code = "malformed_packument"


def check_packument(doc: Any, name: str) -> dict[str, Any]:
    """Raise MalformedPackument unless `doc` has the shape npm needs."""
    where = f"upstream sent a malformed packument for {name}"
    if not isinstance(doc, dict):
        raise MalformedPackument(f"{where}: not a JSON object")
    if "name" in doc and doc["name"] != name:
        raise MalformedPackument(f"{where}: it names {str(doc['name'])[:80]!r}")
    versions = doc.get("versions", {})
    if not isinstance(versions, dict):
        raise MalformedPackument(f"{where}: 'versions' is not an object")
    for v, manifest in versions.items():
        if not isinstance(manifest, dict) or not isinstance(manifest.get("dist", {}), dict):
            raise MalformedPackument(f"{where}: version {str(v)[:40]!r} is not an object with a 'dist' object")
    tags = doc.get("dist-tags", {})
    if not isinstance(tags, dict) or not all(isinstance(t, str) for t in tags.values()):
        raise MalformedPackument(f"{where}: 'dist-tags' is not an object of versions")
    return doc


def parse(body: bytes, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPackument(f"upstream sent a malformed packument for {name}: not JSON ({exc})") from None
    return check_packument(doc, name)


def abbreviate(doc: dict[str, Any]) -> dict[str, Any]:
    """The install-v1 form of a full packument (used when only the full one is stored)."""
    versions = {}
    for v, manifest in (doc.get("versions") or {}).items():
        small = {k: manifest[k] for k in ABBREVIATED_VERSION_FIELDS if k in manifest}
        if "hasInstallScript" not in small:
            scripts = manifest.get("scripts") or {}
            if isinstance(scripts, dict) and any(s in scripts for s in INSTALL_SCRIPTS):
                small["hasInstallScript"] = True
        versions[v] = small
    out: dict[str, Any] = {"name": doc.get("name"), "dist-tags": doc.get("dist-tags") or {},
                           "versions": versions}
    modified = doc.get("modified") or (doc.get("time") or {}).get("modified")
    if modified:
        out["modified"] = modified
    return out


def tarball_file(name: str, version: str, manifest: dict[str, Any]) -> str:
    """The file name the upstream gives this version's tarball (`<name>-<version>.tgz` usually)."""
    url = (manifest.get("dist") or {}).get("tarball")
    if isinstance(url, str) and url:
        base = urlsplit(url).path.rsplit("/", 1)[-1]
        if base.endswith(".tgz") and "%" not in base:
            return base
    return f"{unscoped(name)}-{version}.tgz"


def version_for_file(doc: dict[str, Any], name: str, file: str) -> str | None:
    versions = doc.get("versions") or {}
    guess = file[len(unscoped(name)) + 1:-4] if file.startswith(unscoped(name) + "-") else ""
    if guess in versions and tarball_file(name, guess, versions[guess]) == file:
        return guess
    for v, manifest in versions.items():
        if tarball_file(name, v, manifest) == file:
            return v
    return None


def sha512_of(dist: dict[str, Any]) -> Digest | None:
    """The sha512 digest from `dist.integrity` (an SRI string that may list several hashes)."""
    integrity = dist.get("integrity")
    if not isinstance(integrity, str):
        return None
    for token in integrity.split():
        if token.startswith("sha512-"):
            try:
                return digest_from_sri(token.split("?", 1)[0])
            except InvalidDigest:
                return None
    return None


def sha1_of(dist: dict[str, Any]) -> str | None:
    shasum = dist.get("shasum")
    return shasum.lower() if isinstance(shasum, str) and _SHA1.match(shasum.lower()) else None


def sri(digest: str) -> str:
    """'sha512:<hex>' -> 'sha512-<base64>'."""
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{base64.b64encode(bytes.fromhex(hexpart)).decode()}"


def rewrite(doc: dict[str, Any], name: str, base: str) -> dict[str, Any]:
    """A copy of `doc` whose every dist.tarball points at `base` (this node's /npm/ URL)."""
    out = dict(doc)
    versions = {}
    for v, manifest in (doc.get("versions") or {}).items():
        versions[v] = rewrite_version(manifest, name, v, base)
    out["versions"] = versions
    out.pop("_attachments", None)
    return out


def rewrite_version(manifest: dict[str, Any], name: str, version: str, base: str) -> dict[str, Any]:
    m = dict(manifest)
    dist = dict(m.get("dist") or {})
    dist["tarball"] = f"{base}/{name}/-/{tarball_file(name, version, manifest)}"
    m["dist"] = dist
    return m


def resolve_ref(doc: dict[str, Any], ref: str) -> str | None:
    """A version or dist-tag -> a version present in the packument."""
    versions = doc.get("versions") or {}
    if ref in versions:
        return ref
    tagged = (doc.get("dist-tags") or {}).get(ref)
    return tagged if tagged in versions else None
