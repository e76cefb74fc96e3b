"""npm package names, versions and request paths: everything a client or peer sends is checked here
before it becomes a file name, an upstream URL or a store reference."""

from __future__ import annotations

import re
from dataclasses import dataclass

from beiran.errors import BadRequest, NotFound

MAX_NAME = 214
#: url-safe characters npm allows in a name part (validate-npm-package-name: encodeURIComponent-safe,
#: no ~'!()* for new packages)
_PART = re.compile(r"^[a-z0-9-][a-z0-9._-]*$")
_PART_LEGACY = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE = re.compile(r"^[A-Za-z0-9._+-]{1,300}\.tgz$")
_BLOCKED = {"node_modules", "favicon.ico"}


class InvalidPackageName(BadRequest):
    code = "invalid_package_name"


def validate_name(name: str, allow_uppercase: bool = False) -> str:
    """Return `name` if it is a valid npm package name, else raise a 400 saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidPackageName("package name is empty")
    shown = name[:60] + ("..." if len(name) > 60 else "")
    if len(name) > MAX_NAME:
        raise InvalidPackageName(f"invalid package name {shown!r}: longer than {MAX_NAME} characters")
    if ".." in name.split("/") or "/../" in name or name.startswith(("./", "../")):
        raise InvalidPackageName(f"invalid package name {shown!r}: '..' is not allowed")
    if name.strip() != name or any(c.isspace() for c in name):
        raise InvalidPackageName(f"invalid package name {shown!r}: no spaces allowed")
    if name.startswith((".", "_")):
        raise InvalidPackageName(f"invalid package name {shown!r}: cannot start with '.' or '_'")
    if name.lower() in _BLOCKED:
        raise InvalidPackageName(f"invalid package name {shown!r}: reserved name")
    if name != name.lower() and not allow_uppercase:
        raise InvalidPackageName(f"invalid package name {shown!r}: must be lower case")
    part = _PART_LEGACY if allow_uppercase else _PART
    if name.startswith("@"):
        scope, sep, rest = name[1:].partition("/")
        if not sep or not scope or not rest or "/" in rest:
            raise InvalidPackageName(f"invalid package name {shown!r}: a scoped name is @scope/name")
        parts = [scope, rest]
    else:
        if "/" in name:
            raise InvalidPackageName(f"invalid package name {shown!r}: only scoped names contain '/'")
        parts = [name]
    for p in parts:
        if p in (".", "..") or not part.match(p):
            raise InvalidPackageName(f"invalid package name {shown!r}: only url-safe characters "
                                     "(a-z, 0-9, '-', '.', '_') are allowed")
    return name


def validate_version(version: str) -> str:
    if not isinstance(version, str) or len(version) > 256 or not _VERSION.match(version):
        raise BadRequest(f"invalid version {str(version)[:60]!r}")
    return version


def is_tag(value: str) -> bool:
    return bool(_TAG.match(value)) and not _VERSION.match(value)


def unscoped(name: str) -> str:
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class NpmPath:
    """What a GET under /npm/ asks for."""

    kind: str  # packument | version | tarball | special
    name: str = ""
    ref: str = ""  # version or dist-tag (kind version) / file name (kind tarball) / rest (special)


def parse_path(rest: str, allow_uppercase: bool = False) -> NpmPath:
    """`rest` is the decoded path after /npm/.

    - `-/...` is npm's special namespace (ping, whoami, search, audit, login...);
    - `[prefix/]<name>/-/<file>.tgz` is a tarball: any prefix is ignored, because npm's
      `replace-registry-host` appends the path of the lockfile's `resolved` URL (e.g. `/npm/...`
      of another Beiran node) to this registry's URL;
    - `<name>` is a packument, `<name>/<version-or-tag>` one version's manifest.
    """
    rest = rest.lstrip("/")
    if rest == "-" or rest.startswith("-/"):
        return NpmPath("special", ref=rest[2:])
    if "/-/" in rest:
        before, _, file = rest.rpartition("/-/")
        segs = [s for s in before.split("/") if s]
        if not segs:
            raise InvalidPackageName("tarball path names no package")
        name = "/".join(segs[-2:]) if len(segs) >= 2 and segs[-2].startswith("@") else segs[-1]
        validate_name(name, allow_uppercase)
        if not _FILE.match(file) or ".." in file:
            raise BadRequest(f"invalid tarball file name {file[:80]!r}")
        return NpmPath("tarball", name, file)
    segs = rest.split("/")
    if segs[0].startswith("@"):
        name, more = "/".join(segs[:2]), segs[2:]
    else:
        name, more = segs[0], segs[1:]
    validate_name(name, allow_uppercase)
    if not more or more == [""]:
        return NpmPath("packument", name)
    if len(more) == 1 and (_VERSION.match(more[0]) or is_tag(more[0])):
        return NpmPath("version", name, more[0])
    raise NotFound(f"no such registry path /{rest[:120]}")
