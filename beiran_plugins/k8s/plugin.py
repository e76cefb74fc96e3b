"""The k8s plugin: a CRI ImageService for kubelet on a unix socket, backed by the node's runtime.

Config (`[plugins.k8s]`):
    socket            where kubelet connects (default $run_dir/beiran-cri.sock)
    runtime_endpoint  the runtime's CRI socket (default unix:///run/containerd/containerd.sock)
    mirror            this node's registry mirror as the runtime reaches it (default from `listen`)
    hosts_dir         containerd's config_path for `configure-containerd` (default /etc/containerd/certs.d)
    registries        extra registries `configure-containerd` writes hosts.toml for
    platform          os/arch picked from multi-platform images (default: this machine)
    runtime_timeout, pull_timeout (seconds); grant_ttl is accepted and ignored (peers' grants no
    longer count: see access.py)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beiran.errors import ConfigError
from beiran.models.base import dict_rows
from beiran.plugin import BaseInterfacePlugin
from beiran_plugins.k8s import __version__
from beiran_plugins.k8s.containerd import DEFAULT_HOSTS_DIR
from beiran_plugins.k8s.metrics import CRIMetrics

log = logging.getLogger("beiran.k8s")
DEFAULT_RUNTIME = "unix:///run/containerd/containerd.sock"
SETTINGS = {"enabled", "socket", "runtime_endpoint", "mirror", "hosts_dir", "registries", "platform",
            "runtime_timeout", "pull_timeout", "grant_ttl"}


class K8sPlugin(BaseInterfacePlugin):
    """Kubernetes: a CRI image service for kubelet."""

    name = "k8s"
    version = __version__
    config_keys = frozenset(SETTINGS)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.counts: dict[str, int] = {}
        self.cri_metrics = CRIMetrics(ctx.metrics.registry)
        self.server: Any = None
        self.runtime: Any = None
        self._remove_policy: Any = None

    async def init(self, config: dict[str, Any]) -> None:
        from beiran_plugins.docker.manifest import host_platform, normalize_platform
        from beiran_plugins.k8s.access import AccessPolicy
        from beiran_plugins.k8s.pull import Puller
        from beiran_plugins.k8s.runtime import RuntimeClient

        self.config = config
        cfg = self.ctx.config
        self.socket_path = Path(config.get("socket") or (cfg.run_dir or cfg.data_dir) / "beiran-cri.sock")
        self.runtime_endpoint = str(config.get("runtime_endpoint") or DEFAULT_RUNTIME)
        if not self.runtime_endpoint.startswith(("unix://", "/")):
            raise ConfigError("[plugins.k8s] runtime_endpoint must be a unix socket (unix:///path)")
        host = cfg.listen_host if cfg.listen_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self.mirror = str(config.get("mirror") or f"http://{host}:{cfg.listen_port}").rstrip("/")
        if not self.mirror.startswith(("http://", "https://")):
            raise ConfigError("[plugins.k8s] mirror must be an http(s):// URL")
        self.hosts_dir = str(config.get("hosts_dir") or DEFAULT_HOSTS_DIR)
        registries = config.get("registries") or []
        if not isinstance(registries, list) or not all(isinstance(r, str) for r in registries):
            raise ConfigError("[plugins.k8s] registries must be a list of registry names")
        self.registries = registries
        self.platform = normalize_platform(str(config.get("platform") or host_platform()))
        try:
            timeout = float(config.get("runtime_timeout", 30))
            pull_timeout = float(config.get("pull_timeout", 600))
        except (TypeError, ValueError):
            raise ConfigError("[plugins.k8s] runtime_timeout and pull_timeout are seconds") from None
        self.runtime = RuntimeClient(self.runtime_endpoint, timeout, pull_timeout)
        self.access = AccessPolicy(self.ctx)
        await self.access.load()
        # Before any listener accepts a peer: private blobs are guarded from the first request on.
        self._remove_policy = self.ctx.store.add_access_policy(self.access.policy)
        self.puller = Puller(self)

    async def start(self) -> None:
        from beiran_plugins.k8s.server import CRIServer, ImageService

        self.server = CRIServer(ImageService(self), self.socket_path)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self.runtime is not None:
            await self.runtime.close()

    def status_info(self) -> dict[str, Any]:
        return {"socket": str(getattr(self, "socket_path", "")), "mirror": getattr(self, "mirror", ""),
                "runtime_endpoint": getattr(self, "runtime_endpoint", ""), "cri_calls": dict(self.counts)}

    async def health(self) -> str | None:
        return await self.runtime.probe() if self.runtime is not None else None

    # -- used by the handlers ----------------------------------------------------------------------
    async def record_for(self, image_id: str, repo_digests: Sequence[str] = ()) -> dict[str, Any] | None:
        """The newest K8sImage row for a runtime image (by ID, else by manifest digest)."""
        from beiran_plugins.k8s.models import K8sImage

        digests = [d.rsplit("@", 1)[1] for d in repo_digests if "@" in d]

        def db() -> dict[str, Any] | None:
            q = K8sImage.select().where((K8sImage.image_id == image_id) | (K8sImage.digest.in_(digests or [""])))
            rows = dict_rows(q.order_by(K8sImage.pulled.desc()).limit(1))
            return rows[0] if rows else None
        return await self.ctx.run_db(db)

    async def beiran_info(self, image: Any) -> dict[str, Any]:
        """What Beiran knows about a runtime image, for ImageStatus(verbose) `info["beiran"]`."""
        row = await self.record_for(image.id, list(image.repo_digests))
        info: dict[str, Any] = {"node": self.ctx.identity.uuid, "pulled_through_beiran": row is not None}
        if row is None:
            return info
        digests = [b["digest"] for b in row["blobs"]]
        view = self.ctx.availability.cluster_view(digests)
        info.update({
            "reference": row["image"], "manifest": row["digest"], "index": row["index_digest"] or None,
            "pulled": row["pulled"], **self.access.info(f"{row['registry']}/{row['repository']}", digests),
            "blobs": [{"digest": b["digest"], "size": b["size"], "media_type": b["media_type"],
                       "local": self.ctx.store.has(b["digest"]),
                       "peers": sorted(view.get(b["digest"], {}).get("nodes", {}))} for b in row["blobs"]],
        })
        return info

    async def forget(self, image: str) -> None:
        """After RemoveImage: unpin the image's blobs (they stay for the cluster until evicted; their
        access restrictions stay too, as long as the rows that carry them)."""
        from beiran_plugins.k8s.models import K8sImage

        rows = await self.ctx.run_db(lambda: dict_rows(K8sImage.select().where(
            (K8sImage.image == image) | (K8sImage.image_id == image))))
        for row in rows:
            await self.ctx.store.unpin("k8s", row["image"])


PLUGIN = K8sPlugin
