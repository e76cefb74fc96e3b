"""HTTP routes of the k8s plugin (all under /k8s/): the CLI's views. Peers' private-image grants are
not accepted any more (see access.py)."""

from __future__ import annotations

from typing import Any

import grpc

from beiran.errors import BadRequest, BeiranError
from beiran.handlers import BaseHandler


def _http_error(exc: Any, runtime: Any = None) -> BeiranError:
    """A CRIError (runtime trouble) as the HTTP error the CLI prints: one line."""
    if runtime is not None and exc.code == grpc.StatusCode.UNAVAILABLE:
        return BeiranError(f"{runtime.unreachable(exc.message)}; is it running? ([plugins.k8s] runtime_endpoint)",
                           status=503, code="runtime_unavailable")
    status = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.NOT_FOUND: 404,
              grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504}.get(exc.code, 502)
    return BeiranError(exc.message, status=status, code="runtime_error")


class ImagesHandler(BaseHandler):
    """`GET /k8s/images[?all=true]`: the runtime's images; with all, which nodes hold each one's blobs."""

    async def get(self) -> None:
        from beiran_plugins.k8s.proto import api_pb2 as pb
        from beiran_plugins.k8s.status import CRIError

        plugin = self.plugin
        show_all = self.get_query_argument("all", "false").lower() in ("1", "true", "yes")
        try:
            resp = await plugin.runtime.list_images(pb.ListImagesRequest())
        except CRIError as exc:
            raise _http_error(exc, plugin.runtime) from None
        me = self.ctx.identity.uuid
        images = []
        for im in resp.images:
            row = await plugin.record_for(im.id, list(im.repo_digests))
            item: dict[str, Any] = {"id": im.id, "tags": list(im.repo_tags), "digests": list(im.repo_digests),
                                    "size": im.size, "pinned": im.pinned, "beiran": row is not None,
                                    "private": bool(row and row["private"])}
            if show_all:
                item["nodes"] = self._nodes(me, row)
            images.append(item)
        self.write_json({"node": me, "runtime_endpoint": plugin.runtime_endpoint, "images": images})

    def _nodes(self, me: str, row: dict[str, Any] | None) -> dict[str, str]:
        """uuid -> complete | partial for nodes holding this image's blobs (this node: in the runtime)."""
        nodes = {me: "runtime"}
        if row is None:
            return nodes
        digests = [b["digest"] for b in row["blobs"]]
        view = self.ctx.availability.cluster_view(digests)
        held: dict[str, int] = {}
        for d in digests:
            for node, state in view.get(d, {}).get("nodes", {}).items():
                if state == "complete":
                    held[node] = held.get(node, 0) + 1
                else:
                    held.setdefault(node, 0)
        for node, n in held.items():
            nodes[node] = "complete" if n == len(digests) else "partial"
        return nodes


class ContainerdConfigHandler(BaseHandler):
    """`GET /k8s/containerd-config[?dir=..&registry=..]`: the hosts.toml files for this node's mirror."""

    def get(self) -> None:
        from beiran_plugins.docker.plugin import DockerPlugin
        from beiran_plugins.docker.reference import validate_registry
        from beiran_plugins.k8s.containerd import plan

        plugin = self.plugin
        registries: dict[str, str] = {}
        docker = self.ctx.plugins.get_as("docker", DockerPlugin)
        upstream = docker.upstream if docker is not None else None
        for name, ep in (upstream.endpoints if upstream is not None else {}).items():
            registries[name] = ep.url
        extra = [*plugin.registries, *self.get_query_arguments("registry")]
        for name in extra:
            try:
                name = validate_registry(name)
            except BeiranError as exc:
                raise BadRequest(exc.message) from None
            if name not in registries:
                registries[name] = upstream.endpoint(name).url if upstream is not None else ""
        if not registries:
            registries["docker.io"] = ""
        hosts_dir = self.get_query_argument("dir", None) or plugin.hosts_dir
        if not hosts_dir.startswith("/"):
            raise BadRequest("dir must be an absolute path")
        self.write_json(plan(registries, plugin.mirror, hosts_dir))


ROUTES = [
    (r"/k8s/images", ImagesHandler),
    (r"/k8s/containerd-config", ContainerdConfigHandler),
]
