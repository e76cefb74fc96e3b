"""Image references and names (the grammar of distribution/reference and the OCI spec).

`parse_reference("alpine")` -> docker.io/library/alpine:latest; `localhost:5000/x`,
`host/x:tag@sha256:...`, digests. Kept free of daemon imports: the CLI may use it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from beiran_plugins.docker.errors import InvalidReference, NameInvalid, TagInvalid

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
NAME_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def validate_repository(name: str) -> str:
    """An OCI repository name (`library/alpine`); NameInvalid otherwise."""
    if not isinstance(name, str) or not name:
        raise NameInvalid("repository name is empty")
    if len(name) > NAME_MAX:
        raise NameInvalid(f"repository name is longer than {NAME_MAX} characters")
    if not _REPOSITORY.match(name):
        hint = " (must be lowercase)" if name.lower() != name else ""
        raise NameInvalid(f"invalid repository name {name[:80]!r}{hint}")
    return name


def validate_registry(name: str) -> str:
    """A registry host[:port] (`ghcr.io`, `127.0.0.1:5000`), lowercased; NameInvalid otherwise."""
    if not isinstance(name, str) or not name or len(name) > NAME_MAX or not _REGISTRY.match(name):
        raise NameInvalid(f"invalid registry name {str(name)[:80]!r}")
    port = name.rsplit(":", 1)[1] if ":" in name and not name.endswith("]") else None
    if port is not None and not 0 < int(port) < 65536:
        raise NameInvalid(f"invalid registry port in {name[:80]!r}")
    return canonical_registry(name.lower())


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise TagInvalid(f"invalid tag {str(tag)[:80]!r}")
    return tag


def is_digest(value: str) -> bool:
    return ":" in value and bool(_DIGEST.match(value))


def canonical_registry(name: str) -> str:
    return DOCKER_HUB if name in DOCKER_HUB_ALIASES else name


def upstream_repository(registry: str, repository: str) -> str:
    """Docker Hub keeps official images under `library/`."""
    if registry == DOCKER_HUB and "/" not in repository:
        return f"library/{repository}"
    return repository


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """How `docker images` shows it: no docker.io/, no library/."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = self.repository.removeprefix("library/")
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str, default_registry: str = DOCKER_HUB, default_tag: str | None = "latest") -> Reference:
    """Parse `[registry/]repository[:tag][@digest]`, normalised the way docker does."""
    from beiran.errors import InvalidDigest
    from beiran.store.digest import parse_digest

    if not isinstance(text, str) or not text.strip():
        raise InvalidReference("invalid reference: empty")
    text = text.strip()
    if len(text) > NAME_MAX + 200:
        raise InvalidReference("invalid reference: too long")
    name, _, digest = text.partition("@")
    if digest:
        try:
            digest = str(parse_digest(digest))
        except InvalidDigest as exc:
            raise InvalidReference(f"invalid reference {text[:80]!r}: {exc.message}") from None
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference {text[:80]!r}: bad tag {tag[:40]!r}")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, repository = first, rest
    else:
        registry, repository = default_registry, name
    try:
        registry = validate_registry(registry)
        repository = upstream_repository(registry, repository)
        validate_repository(repository)
    except NameInvalid as exc:
        raise InvalidReference(f"invalid reference {text[:80]!r}: {exc.message}") from None
    if len(registry) + 1 + len(repository) > NAME_MAX:
        raise InvalidReference(f"invalid reference: name longer than {NAME_MAX} characters")
    if tag is None and not digest:
        tag = default_tag
    return Reference(registry, repository, tag, digest or None)
