"""HTTP routes of the k8s plugin (all under /k8s/): the CLI's views, and peers' private-image grants."""

from __future__ import annotations

from typing import Any

import grpc

from beiran.access import Access
from beiran.errors import BadRequest, BeiranError, Forbidden
from beiran.handlers import BaseHandler, JSONEndpoint


def _http_error(exc: Any) -> BeiranError:
    """A CRIError (runtime trouble) as the HTTP error the CLI prints."""
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
            raise _http_error(exc) from None
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
        from beiran_plugins.docker.reference import validate_registry
        from beiran_plugins.k8s.containerd import plan

        plugin = self.plugin
        registries: dict[str, str] = {}
        docker = self.ctx.plugins.get("docker")
        upstream = getattr(docker, "upstream", None)
        for name, ep in (getattr(upstream, "endpoints", None) or {}).items():
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


class GrantsHandler(JSONEndpoint):
    """`POST /k8s/grants` from a peer: "I read private repository `scope` at its registry just now".

    The sender is the node proven by the cluster-token signature; without a token nobody can be
    told apart, so grants (and with them private-blob sharing) need `cluster_token`.
    """

    access = Access.PEER

    async def post(self) -> None:
        from beiran_plugins.docker.reference import validate_registry, validate_repository

        if self.is_unix_socket():
            raise BadRequest("grants come from peers over TCP, not from the local socket")
        node = self.ctx.auth.uuid_of(self.request) if self.ctx.auth else None
        if node is None:
            raise Forbidden("private-image grants need a cluster_token (to know which node asks)")
        if node not in self.ctx.peers.online():
            raise Forbidden(f"node {node[:8]} is not a connected peer")
        body = self.json_object()
        scope = body.get("scope")
        if not isinstance(scope, str) or "/" not in scope:
            raise BadRequest("scope must be registry/repository")
        registry, repository = scope.split("/", 1)
        try:
            scope = f"{validate_registry(registry)}/{validate_repository(repository)}"
        except BeiranError as exc:
            raise BadRequest(f"scope: {exc.message}") from None
        expires = await self.plugin.access.grant(node, scope)
        self.write_json({"node": node, "scope": scope, "expires": expires})


ROUTES = [
    (r"/k8s/images", ImagesHandler),
    (r"/k8s/containerd-config", ContainerdConfigHandler),
    (r"/k8s/grants", GrantsHandler),
]
