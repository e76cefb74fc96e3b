"""The docker plugin: a registry mirror served from the cluster, image pulls into the store and the
Docker engine, and containerd's existing content shared with peers."""

from __future__ import annotations

import logging
import os
import re
from typing import Any, ClassVar

from beiran.errors import BadRequest, BeiranError, ConfigError, Forbidden
from beiran.plugin import BasePackagePlugin, OriginStream
from beiran_plugins.docker import __version__
from beiran_plugins.docker.errors import InvalidReference, ManifestInvalid
from beiran_plugins.docker.manifest import DEFAULT_ACCEPT, MAX_MANIFEST, merge_accept
from beiran_plugins.docker.mirror import Mirror
from beiran_plugins.docker.reference import (
    DOCKER_HUB,
    Reference,
    parse_reference,
    validate_registry,
    validate_repository,
)
from beiran_plugins.docker.upstream import Upstream

log = logging.getLogger("beiran.docker")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+$")
SETTINGS = {"enabled", "default_registry", "registries", "allow_unconfigured", "upstream_timeout", "pin_mirrored",
            "containerd_content_dir", "containerd_scan_interval", "docker_host", "engine", "prefetch"}


class DockerPlugin(BasePackagePlugin):
    """Docker/OCI images: a registry mirror served from the cluster."""

    name = "docker"
    version = __version__
    config_keys = frozenset(SETTINGS)
    extra_route_prefixes: ClassVar[tuple[str, ...]] = ("/v2/",)

    async def init(self, config: dict[str, Any]) -> None:
        self.config = config
        try:
            self.default_registry = validate_registry(str(config.get("default_registry", DOCKER_HUB)))
        except BeiranError as exc:
            raise ConfigError(f"[plugins.docker] default_registry: {exc.message}") from None
        self.upstream = Upstream(config)
        self.mirror = Mirror(self)
        self.engine: Any = None
        self.content: Any = None

    async def start(self) -> None:
        await self.mirror.load()
        content_dir = self.config.get("containerd_content_dir")
        if content_dir:
            from beiran_plugins.docker.content import ContentIndexer

            self.content = ContentIndexer(self.ctx, str(content_dir),
                                          float(self.config.get("containerd_scan_interval", 30)))
            self.content.start()
        if self.config.get("engine", True):
            from beiran_plugins.docker.engine import Engine

            host = self.config.get("docker_host") or os.environ.get("DOCKER_HOST") or None
            self.engine = Engine(self.ctx, host)
            await self.engine.start()

    async def stop(self) -> None:
        if self.content is not None:
            await self.content.stop()
        if self.engine is not None:
            await self.engine.stop()

    def counters(self) -> dict[str, int]:
        out = {"manifests_prefetched": self.mirror.prefetched}
        if self.content is not None:
            out.update(containerd_blobs_indexed=self.content.indexed, containerd_blobs_rejected=self.content.rejected)
        return out

    def status_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"default_registry": self.default_registry,
                                "registries": sorted(self.upstream.endpoints),
                                "manifests_known": len(self.mirror.known),
                                "prefetching": len(self.mirror._prefetching), "prefetched": self.mirror.prefetched}
        if self.engine is not None:
            info["engine"] = {"reachable": self.engine.reachable, "images": len(self.engine.images)}
        if self.content is not None:
            info["containerd_content"] = {"dir": str(self.content.root), "indexed": self.content.indexed,
                                          "rejected": self.content.rejected}
        return info

    def parse_ref(self, text: Any) -> Reference:
        if not isinstance(text, str):
            raise InvalidReference("ref must be a string such as alpine:3.19")
        return parse_reference(text, self.default_registry)

    # -- the fetcher's side ----------------------------------------------------------------------
    def validate_source(self, params: dict[str, Any], *, from_peer: bool) -> dict[str, Any]:
        """Only well-formed names, no URLs, no extra keys. A peer's source must name a registry
        this node's config names (allow_unconfigured is for this node's own clients), and is read
        anonymously: credentials are never used on a peer's behalf."""
        extra = set(params) - {"registry", "repository", "kind", "media_type"}
        if extra:
            raise BadRequest(f"docker source: unexpected keys {', '.join(sorted(extra))[:80]}")
        registry = validate_registry(str(params.get("registry", "")))
        if from_peer and not self.upstream.configured(registry, self.default_registry):
            raise Forbidden(f"registry {registry} is not configured on this node; it is not fetched for peers")
        repository = validate_repository(str(params.get("repository", "")))
        kind = params.get("kind")
        if kind not in ("blob", "manifest"):
            raise BadRequest("docker source: kind must be blob or manifest")
        out = {"registry": registry, "repository": repository, "kind": kind}
        media_type = params.get("media_type")
        if media_type is not None:
            if not isinstance(media_type, str) or len(media_type) > 255 or not _MEDIA_TYPE.match(media_type):
                raise BadRequest("docker source: bad media_type")
            out["media_type"] = media_type
        return out

    async def open_origin(self, params: dict[str, Any], digest: str, offset: int, *,
                          from_peer: bool) -> OriginStream:
        registry, repository = params["registry"], params["repository"]
        up = self.upstream.anonymous(registry) if from_peer else self.upstream  # never credentials for peers
        if params["kind"] == "blob":
            return await up.open_blob(registry, repository, digest, offset)
        accept = merge_accept([params.get("media_type") or "", DEFAULT_ACCEPT])
        data, media_type, _ = await up.get_manifest(registry, repository, digest, accept)
        if len(data) > MAX_MANIFEST:
            raise ManifestInvalid(f"manifest {digest[:19]} exceeds {MAX_MANIFEST} bytes")

        async def one():
            yield data[offset:]
        return OriginStream(one(), size=len(data), media_type=media_type,
                            restricted=up.used_credentials(registry, repository))

    # -- the engine ------------------------------------------------------------------------------
    async def load_into_engine(self, ref: Reference, digest: str) -> dict[str, Any]:
        """Load a pulled image into the Docker engine, if one is reachable."""
        from beiran_plugins.docker import archive, images

        if self.engine is None:
            return {"loaded": False, "engine": "engine support is off ([plugins.docker] engine = false)"}
        await self.engine.refresh()
        if not self.engine.reachable:
            return {"loaded": False, "engine": f"no Docker engine reachable at {self.engine.describe()} "
                                               f"({self.engine.error}); the image stays in Beiran's store"}
        rows = [r for r in await images.find(self, ref) if r["digest"] == digest]
        if not rows:
            rows = await images.find(self, Reference(ref.registry, ref.repository, None, digest))
        tag = images.repo_tag({"registry": ref.registry, "repository": ref.repository, "tag": ref.tag})
        members = images.members(rows[0], [tag] if tag else [])
        store = self.ctx.store

        def open_blob(d: str):
            entry = store.get(d)
            if entry is None:
                raise OSError(f"blob {d[:19]} is no longer in the store")
            return open(store.file_of(entry), "rb")

        try:
            loaded = await self.engine.load(archive.iter_sync(members, open_blob))
        except Exception as exc:  # noqa: BLE001 - the SDK raises many types; the pull itself succeeded
            return {"loaded": False, "engine": f"loading into the Docker engine failed: {str(exc)[:300]}"}
        return {"loaded": True, "engine": f"loaded into the Docker engine as {', '.join(loaded)}"}


PLUGIN = DockerPlugin
