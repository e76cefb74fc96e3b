"""PullImage: access check at the registry with kubelet's credentials, blobs through the cluster,
then the runtime's own pull, served by this node's mirror over loopback.

1. Resolve the reference at the upstream with the credentials kubelet passed (a fresh client per
   pull: credentials and tokens never outlive the request or leak to other pulls). A refusal ends
   the pull with the registry's own meaning (401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED).
2. An anonymous probe tells whether the image is private; if so its blobs are never served to peers
   (see access.py): every node reads them from the registry itself.
3. Manifests go into the store (so the mirror answers the runtime by digest), every blob is fetched
   through the core fetcher: public ones from peers, the rendezvous owner or the origin once;
   private ones with a local-only opener carrying kubelet's credentials (never sent to peers), so
   a concurrent request for the same blob (the runtime through the mirror) joins the one download.
4. The runtime pulls: its hosts.toml (see `beiran k8s configure-containerd`) lists this node's
   mirror first, which serves everything from the store. For a public image this runs alongside
   step 3 (the mirror joins the fetches and streams bytes as they arrive); a private image's blobs
   are all local first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from beiran.errors import BeiranError, NotFound
from beiran.store.digest import digest_bytes
from beiran_plugins.docker.errors import DigestMismatch, RegistryUnavailable
from beiran_plugins.docker.manifest import DEFAULT_ACCEPT, parse_manifest, pick_platform
from beiran_plugins.docker.reference import Reference, parse_reference
from beiran_plugins.docker.upstream import Upstream
from beiran_plugins.k8s.models import K8sImage
from beiran_plugins.k8s.proto import api_pb2 as pb
from beiran_plugins.k8s.status import CRIError, from_beiran

if TYPE_CHECKING:
    from beiran_plugins.docker.plugin import DockerPlugin
    from beiran_plugins.k8s.plugin import K8sPlugin

log = logging.getLogger("beiran.k8s")
PARALLEL_BLOBS = 4


@dataclass
class Resolved:
    """What the registry said the reference is, for this node's platform."""

    ref: Reference
    digest: str
    data: bytes
    media_type: str
    blobs: list[dict[str, Any]]  # config + layers: {"digest", "size", "media_type"}
    index: tuple[str, bytes, str] | None = None  # (digest, bytes, media type) of a multi-platform index
    private: bool = False
    sources: dict[str, int] = field(default_factory=dict)
    name: str = ""  # the image as kubelet named it (the pin's ref)
    upstream: Upstream | None = None  # the pull's own client, authenticated by the access check


def credentials(auth: pb.AuthConfig | None, registry: str) -> dict[str, str] | None:
    """The registry settings kubelet's AuthConfig stands for (username and password, an identity
    token or a registry token), as in [plugins.docker.registries]; None when it holds none."""
    if auth is None:
        return None
    if auth.username or auth.password:
        return {"username": auth.username, "password": auth.password}
    if auth.auth:
        try:
            user, sep, password = base64.b64decode(auth.auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise CRIError(grpc.StatusCode.INVALID_ARGUMENT, "auth.auth is not base64 of user:password") from None
        if not sep:
            raise CRIError(grpc.StatusCode.INVALID_ARGUMENT, "auth.auth is not base64 of user:password")
        return {"username": user, "password": password}
    if auth.identity_token:
        return {"identity_token": auth.identity_token}
    if auth.registry_token:
        return {"registry_token": auth.registry_token}
    return None


class Puller:
    def __init__(self, plugin: K8sPlugin) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def docker(self) -> DockerPlugin:
        from beiran_plugins.docker.plugin import DockerPlugin

        docker = self.ctx.plugins.get_as("docker", DockerPlugin)
        if docker is None:
            raise CRIError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the docker plugin is not running on this node; Beiran's CRI pulls go through it")
        return docker

    async def pull(self, req: pb.PullImageRequest) -> pb.PullImageResponse:
        try:
            ref = parse_reference(req.image.image)
        except BeiranError as exc:
            raise CRIError(grpc.StatusCode.INVALID_ARGUMENT, f"image: {exc.message}") from None
        creds = credentials(req.auth if req.HasField("auth") else None, ref.registry)
        started = time.monotonic()
        async with self._locks[str(ref)]:
            resolved = await self.resolve(ref, creds)
            resolved.name = req.image.image
            await self.prepare(resolved)
            fetching = asyncio.ensure_future(self.fetch_blobs(resolved))
            if resolved.private:
                await fetching  # every private blob is local before the mirror is asked for one
            else:
                await asyncio.sleep(0)  # the fetches start first; the runtime's pull joins them
            try:
                resp = await self.plugin.runtime.pull_image(req)
            except BaseException:
                if fetching.done() and not fetching.cancelled() and (error := fetching.exception()) is not None:
                    raise error from None  # the fetch's error says more than the runtime's
                fetching.cancel()
                raise
            try:
                await fetching
            except (BeiranError, CRIError) as exc:  # the runtime has the image all the same
                log.warning("CRI pull %s: the runtime has it, but Beiran's copy failed: %s", req.image.image, exc)
            await self.save(req.image.image, resolved, resp.image_ref)
        log.info("CRI pull %s -> %s (%s) in %.2fs: blobs %s", req.image.image, resp.image_ref[:19],
                 "private" if resolved.private else "public", time.monotonic() - started,
                 ", ".join(f"{k} {v}" for k, v in resolved.sources.items()) or "none")
        return resp

    # -- 1. the access check -------------------------------------------------------------------------
    def _upstream(self, registry: str, creds: dict[str, str] | None, anonymous: bool = False) -> Upstream:
        """A client of its own for one pull, at the endpoint the docker plugin uses for `registry`."""
        base = self.docker.upstream
        ep = base.endpoint(registry)
        section: dict[str, Any] = {"url": ep.url}
        if ep.ca_file:
            section["ca_file"] = ep.ca_file
        if ep.token_realms:
            section["token_realms"] = list(ep.token_realms)  # where credentials may go, as configured
        if not anonymous:
            given: Mapping[str, str | None] = creds or {"username": ep.username, "password": ep.password,
                              "identity_token": ep.identity_token, "registry_token": ep.registry_token}
            section.update({k: v for k, v in given.items() if v})
        return Upstream({"upstream_timeout": base.timeout, "registries": {registry: section}})

    async def resolve(self, ref: Reference, creds: dict[str, str] | None) -> Resolved:
        up = self._upstream(ref.registry, creds)
        try:
            data, media_type, said = await up.get_manifest(ref.registry, ref.repository, ref.reference,
                                                           DEFAULT_ACCEPT)
            digest = self._check(ref, ref.reference, data, said)
            parsed = parse_manifest(data, media_type)
            index = None
            if parsed.kind == "index":
                index = (digest, data, parsed.media_type)
                child = pick_platform(parsed.children, self.plugin.platform)
                if child is None:
                    raise NotFound(f"{ref} has no image for platform {self.plugin.platform}")
                data, media_type, said = await up.get_manifest(ref.registry, ref.repository, child.digest,
                                                               DEFAULT_ACCEPT)
                digest = self._check(ref, child.digest, data, said)
                parsed = parse_manifest(data, media_type)
        except BeiranError as exc:
            raise self._registry_error(ref, exc, creds) from None
        blobs = [{"digest": b.digest, "size": b.size, "media_type": b.media_type} for b in parsed.blobs]
        resolved = Resolved(ref, digest, data, parsed.media_type, blobs, index, upstream=up)
        resolved.private = await self._is_private(ref, index[0] if index else digest, creds)
        return resolved

    @staticmethod
    def _check(ref: Reference, asked: str, data: bytes, said: str | None) -> str:
        digest = digest_bytes(data)
        if asked.startswith("sha256:") and asked != digest:
            raise DigestMismatch(f"registry {ref.registry} sent a manifest for {asked[:19]} that hashes to "
                                 f"{digest[:19]}")
        if said and said.startswith("sha256:") and said != digest:
            raise DigestMismatch(f"registry {ref.registry} says {ref} is {said[:19]} but its bytes hash to "
                                 f"{digest[:19]}")
        return digest

    @staticmethod
    def _registry_error(ref: Reference, exc: BeiranError, creds: dict[str, str] | None) -> CRIError:
        who = "the credentials kubelet passed" if creds else "no credentials (none were passed)"
        if exc.status == 401:
            return CRIError(grpc.StatusCode.UNAUTHENTICATED,
                            f"registry {ref.registry} refused {ref} (401 Unauthorized) with {who}: {exc.message}")
        if exc.status == 403:
            return CRIError(grpc.StatusCode.PERMISSION_DENIED,
                            f"registry {ref.registry} denied {ref} (403 Forbidden) with {who}: {exc.message}")
        if exc.status == 404:
            return CRIError(grpc.StatusCode.NOT_FOUND, f"{ref} not found: {exc.message}")
        if isinstance(exc, RegistryUnavailable) or exc.status in (502, 503, 504):
            return CRIError(grpc.StatusCode.UNAVAILABLE, f"registry {ref.registry} unavailable for {ref}: "
                                                         f"{exc.message}")
        return from_beiran(exc, f"pulling {ref}: ")

    async def _is_private(self, ref: Reference, digest: str, creds: dict[str, str] | None) -> bool:
        """Could anyone read it? An anonymous HEAD of the manifest digest at the registry."""
        if creds is None:
            ep = self.docker.upstream.endpoint(ref.registry)
            if not (ep.username or ep.identity_token or ep.registry_token):
                return False  # it was just read without credentials
        try:
            await self._upstream(ref.registry, None, anonymous=True).head_manifest(
                ref.registry, ref.repository, digest, DEFAULT_ACCEPT)
            return False
        except BeiranError as exc:
            log.info("%s is private: anonymous access answered %s (%s)", ref, exc.status, exc.message)
            return True

    # -- 2 and 3: restrictions, manifests and blobs ---------------------------------------------------
    async def prepare(self, r: Resolved) -> None:
        """Restrictions, then the manifests into the store (the mirror serves them by digest)."""
        digests = [b["digest"] for b in r.blobs] + [r.digest] + ([r.index[0]] if r.index else [])
        await self.plugin.access.mark(r.ref.name, digests, r.private)  # in the database before any blob
        await self.save(r.name, r, "")
        await self._store_manifests(r)

    async def fetch_blobs(self, r: Resolved) -> None:
        """Every blob into the store, then pinned. For a public image the runtime's pull runs alongside:
        the mirror joins these fetches and streams the bytes as they arrive."""
        # Private blobs come from the registry with the client that passed the access check (its
        # credentials are already accepted, so concurrent blob requests need no new auth round).
        up = r.upstream if r.private else None
        sem = asyncio.Semaphore(PARALLEL_BLOBS)

        async def one(blob: dict[str, Any]) -> None:
            async with sem:
                how = await self._fetch_blob(r, blob, up)
                r.sources[how] = r.sources.get(how, 0) + 1
        results = await asyncio.gather(*(one(b) for b in r.blobs), return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            exc = errors[0]
            if isinstance(exc, BeiranError):
                raise from_beiran(exc, f"fetching the blobs of {r.ref}: ")
            raise exc
        digests = [b["digest"] for b in r.blobs] + [r.digest] + ([r.index[0]] if r.index else [])
        for d in digests:
            await self.ctx.store.pin(d, "k8s", r.name)

    async def _store_manifests(self, r: Resolved) -> None:
        mirror = self.docker.mirror
        tag = r.ref.tag
        manifests = [(r.index, {}), ((r.digest, r.data, r.media_type),
                                     {"index_digest": r.index[0] if r.index else "",
                                      "platform": self.plugin.platform if r.index else ""})]
        for item, extra in manifests:
            if item is None:
                continue
            digest, data, media_type = item
            if not self.ctx.store.has(digest):
                await self.ctx.store.add_stream(_one(data), "sha256", len(data))
            await mirror.record(r.ref.registry, r.ref.repository, digest, data, media_type, tag=tag, via="pull",
                                **extra)

    async def _fetch_blob(self, r: Resolved, blob: dict[str, Any], up: Upstream | None) -> str:
        """Make one blob local; returns where it came from (local, cluster, origin)."""
        digest, size = blob["digest"], blob["size"]
        if self.ctx.store.has(digest):
            return "local"
        if up is None:
            job = await self.ctx.fetcher.start(digest, size, self.docker.mirror.source(r.ref.registry,
                                                                                       r.ref.repository, "blob"))
        else:
            async def opener(d: str, offset: int) -> Any:  # kubelet's credentials: this node only
                return await up.open_blob(r.ref.registry, r.ref.repository, d, offset)
            job = await self.ctx.fetcher.start(digest, size, None, opener=opener)
        try:
            await asyncio.shield(job.done)
        except BeiranError as exc:
            if up is None:
                raise
            raise self._registry_error(r.ref, exc, {"given": "yes"}) from None
        return "origin" if job.bytes_from.get("origin") else ("cluster" if job.bytes_from.get("peer") else "local")

    # -- 4. the record ---------------------------------------------------------------------------------
    async def save(self, image: str, r: Resolved, image_id: str) -> None:
        row = {"registry": r.ref.registry, "repository": r.ref.repository, "tag": r.ref.tag or "",
               "digest": r.digest, "index_digest": r.index[0] if r.index else "", "blobs": r.blobs,
               "private": r.private, "pulled": time.time()}
        if image_id:
            row["image_id"] = image_id

        def db() -> None:
            K8sImage.insert(image=image, **row).on_conflict(
                conflict_target=[K8sImage.image],
                update={getattr(K8sImage, k): v for k, v in row.items()}).execute()
        await self.ctx.run_db(db)


async def _one(data: bytes):
    yield data
