"""The mirror's logic: tags resolved at the upstream (when it is down: this node's own last answer, else
one enough peers agree on), manifests and blobs through the core fetcher, and the records of what was seen."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from beiran import offline
from beiran.errors import BadRequest, BeiranError, NotFound
from beiran.models.base import dict_rows
from beiran.store.digest import digest_bytes, parse_digest
from beiran.tasks import spawn
from beiran_plugins.docker.errors import DigestMismatch, ManifestInvalid, RegistryUnavailable
from beiran_plugins.docker.manifest import (
    MAX_MANIFEST,
    ParsedManifest,
    media_type_of,
    merge_accept,
    parse_manifest,
)
from beiran_plugins.docker.models import DockerImage, DockerManifest, DockerTag
from beiran_plugins.docker.upstream import ManifestHead

if TYPE_CHECKING:
    from beiran_plugins.docker.plugin import DockerPlugin

log = logging.getLogger("beiran.docker")
PEER_TAG_TIMEOUT = 3.0
MAX_TAG_ANSWER = 64 << 10
PREFETCH_PARALLEL = 1  # in manifest order: the layer a sequential client (skopeo) reads next goes first


@dataclass
class TagInfo:
    digest: str
    media_type: str
    size: int | None
    offline: str | None = None  # answered during an outage: the X-Beiran-Offline header value


class Mirror:
    def __init__(self, plugin: DockerPlugin) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.known: dict[str, tuple[str, int]] = {}  # manifest digest -> (media type, size)
        self.blob_sizes: dict[str, int] = {}  # from the descriptors of manifests seen
        self.blob_repo: dict[str, tuple[str, str]] = {}  # blob -> (registry, repository) it came from
        self._prefetching: set[str] = set()
        self.prefetched = 0
        self._prefetch_slots = asyncio.Semaphore(PREFETCH_PARALLEL)
        self.offline = offline.OfflineAnswers(self.ctx, "docker")

    async def load(self) -> None:
        rows = await self.ctx.run_db(lambda: dict_rows(DockerManifest.select()))
        for r in rows:
            self._remember(r["digest"], r["media_type"], r["size"], r["registry"], r["repository"],
                           [r["config"], *(r["layers"] or [])] if r["config"] else r["layers"] or [])

    def _remember(self, digest: str, media_type: str, size: int, registry: str, repository: str,
                  blobs: list[dict[str, Any]]) -> None:
        self.known[digest] = (media_type, size)
        for b in blobs:
            if b and b.get("size") is not None:
                self.blob_sizes[b["digest"]] = int(b["size"])
                self.blob_repo.setdefault(b["digest"], (registry, repository))

    @staticmethod
    def source(registry: str, repository: str, kind: str, media_type: str | None = None) -> dict[str, Any]:
        src = {"plugin": "docker", "registry": registry, "repository": repository, "kind": kind}
        if media_type:
            src["media_type"] = media_type
        return src

    # -- tags ------------------------------------------------------------------------------------
    async def resolve_tag(self, registry: str, repository: str, tag: str, accept: list[str]) -> TagInfo:
        """tag -> digest at the upstream; when it cannot be reached, an offline answer (cluster_tag)."""
        up = self.plugin.upstream
        accept_hdr = merge_accept(accept)
        try:
            try:
                head = await up.head_manifest(registry, repository, tag, accept_hdr)
            except NotFound:  # a HEAD has no body: GET tells which is unknown (name or manifest)
                head = ManifestHead(None, "", None)
            if head.digest:
                parse_digest(head.digest)
                info = TagInfo(head.digest, head.media_type, head.size)
            else:  # registries that do not say the digest on HEAD: fetch and hash
                info = await self._get_by_tag(registry, repository, tag, accept_hdr)
        except RegistryUnavailable as exc:
            known = await self.cluster_tag(registry, repository, tag)
            if known is None:
                raise
            log.info("registry %s unreachable (%s); %s:%s answered offline", registry, exc.message,
                     repository, tag)
            return known
        except BadRequest as exc:  # a malformed Docker-Content-Digest
            raise RegistryUnavailable(f"registry {registry} sent a bad digest: {exc.message}") from None
        await self._save_tag(registry, repository, tag, info)
        return info

    async def _get_by_tag(self, registry: str, repository: str, tag: str, accept: str) -> TagInfo:
        data, media_type, said = await self.plugin.upstream.get_manifest(registry, repository, tag, accept)
        digest = digest_bytes(data, "sha512" if (said or "").startswith("sha512:") else "sha256")
        if said and said != digest:
            raise DigestMismatch(f"registry {registry} says {repository}:{tag} is {said[:19]} but its bytes "
                                 f"hash to {digest[:19]}")
        if not self.ctx.store.has(digest):
            await self.ctx.store.add_stream(_one(data), digest.split(":")[0], len(data))
        return TagInfo(digest, media_type or media_type_of(data), len(data))

    async def _save_tag(self, registry: str, repository: str, tag: str, info: TagInfo) -> None:
        values = {"digest": info.digest, "media_type": info.media_type, "size": info.size, "updated": time.time()}

        def db() -> None:
            DockerTag.insert(registry=registry, repository=repository, tag=tag, **values).on_conflict(
                conflict_target=[DockerTag.registry, DockerTag.repository, DockerTag.tag],
                update={getattr(DockerTag, k): v for k, v in values.items()}).execute()
        await self.ctx.run_db(db)

    async def local_tag(self, registry: str, repository: str, tag: str) -> dict[str, Any] | None:
        rows = await self.ctx.run_db(lambda: [t.to_dict() for t in DockerTag.select().where(
            (DockerTag.registry == registry) & (DockerTag.repository == repository) & (DockerTag.tag == tag))])
        return rows[0] if rows else None

    async def cluster_tag(self, registry: str, repository: str, tag: str) -> TagInfo | None:
        """During an outage: this node's own last upstream answer, else the digest enough online
        peers agree on (beiran/offline.py). A peer's `updated` is never compared."""
        what = f"{registry}/{repository}:{tag}"
        mine = await self.local_tag(registry, repository, tag)
        if mine:
            self.offline.report(offline.OWN, what, mine["digest"])
            return TagInfo(mine["digest"], mine["media_type"], mine["size"], offline.header_value(offline.OWN))
        query = urlencode({"registry": registry, "repository": repository, "tag": tag})
        answers = await self.offline.ask(f"/docker/tags?{query}", _tag_vote, MAX_TAG_ANSWER)
        verdict = offline.agree({n: {"tag": v} for n, v in answers.items()}, self.offline.quorum).get("tag")
        if verdict is None:
            self.offline.report(offline.UNKNOWN, what)
            return None
        if verdict.value is None:
            seen = ", ".join(f"{json.loads(v)[0][:26]} x{n}" for v, n in verdict.counts[:4])
            self.offline.report(offline.REFUSED, what, detail=f"{verdict.answered} answered: {seen}")
            return None
        digest, media_type, size = json.loads(verdict.value)
        self.offline.report(offline.AGREED, what, digest, verdict.agreed)
        return TagInfo(digest, media_type, size, offline.header_value(offline.AGREED, verdict.agreed))

    async def peer_json(self, node: str, path: str) -> Any:
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        url = self.ctx.peers.url_of(node)
        if not url:
            return None
        req = HTTPRequest(url + path, headers=self.ctx.auth.headers("GET", path),
                          connect_timeout=PEER_TAG_TIMEOUT, request_timeout=PEER_TAG_TIMEOUT)
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
            return json.loads(resp.body) if resp.code == 200 else None
        except (OSError, ValueError, TimeoutError):
            return None

    # -- manifests -------------------------------------------------------------------------------
    async def manifest(self, registry: str, repository: str, digest: str, media_type: str = "",
                       size: int | None = None) -> tuple[bytes, str]:
        """Manifest bytes by digest: local store, else through the fetcher (peers, then origin)."""
        known = self.known.get(digest)
        if known:
            media_type, size = media_type or known[0], known[1]
        if size is not None and size > MAX_MANIFEST:
            raise ManifestInvalid(f"manifest {digest[:19]} is {size} bytes; the limit is {MAX_MANIFEST}")
        entry = self.ctx.store.get(digest)
        if entry is None:
            entry = await self.ctx.fetcher.fetch(digest, size, self.source(registry, repository, "manifest",
                                                                            media_type or None))
        if entry.size > MAX_MANIFEST:
            raise ManifestInvalid(f"manifest {digest[:19]} is {entry.size} bytes; the limit is {MAX_MANIFEST}")
        async with self.ctx.store.use(digest) as target:
            data = b"".join([c async for c in self.ctx.store.read(target)])
        return data, media_type or media_type_of(data) or "application/octet-stream"

    async def record(self, registry: str, repository: str, digest: str, data: bytes, media_type: str,
                     tag: str | None = None, via: str = "mirror", index_digest: str = "",
                     platform: str = "") -> ParsedManifest | None:
        """Remember a manifest, pin what it refers to, and list the image it names on this node."""
        try:
            parsed = parse_manifest(data, media_type)
        except BadRequest:
            return None  # served as-is, but nothing to record (e.g. schema 1)
        if digest not in self.known:
            row = {"digest": digest, "media_type": parsed.media_type, "size": len(data), "kind": parsed.kind,
                   "registry": registry, "repository": repository,
                   "config": parsed.config.to_dict() if parsed.config else None,
                   "layers": [d.to_dict() for d in parsed.layers],
                   "children": [d.to_dict() for d in parsed.children], "platform": platform}
            await self.ctx.run_db(lambda: DockerManifest.insert(**row).on_conflict_ignore().execute())
            self._remember(digest, parsed.media_type, len(data), registry, repository,
                           [d.to_dict() for d in parsed.blobs])
        # explicit pulls are kept; what only passed through the mirror stays evictable (LRU under
        # store.max_size) unless pin_mirrored is set
        pin = via == "pull" or bool(self.plugin.config.get("pin_mirrored", False))
        ref = f"{registry}/{repository}@{digest}"
        if pin:
            for d in [digest, *(b.digest for b in parsed.blobs)]:
                await self.ctx.store.pin(d, "docker", ref)
        if parsed.kind == "image":
            if not index_digest and tag is None:
                index_digest, tag = await self._index_of(registry, repository, digest)
            await self.save_image(registry, repository, tag or "", digest, index_digest, platform, via)
        return parsed

    async def _index_of(self, registry: str, repository: str, digest: str) -> tuple[str, str | None]:
        """For a manifest fetched by digest: (the index naming it, the tag naming it or its index).
        Runtimes resolve a tag with HEAD and then GET the manifest by digest."""
        def db() -> tuple[str, str | None]:
            same = (DockerTag.registry == registry) & (DockerTag.repository == repository)
            t = DockerTag.select().where(same & (DockerTag.digest == digest)).order_by(DockerTag.updated.desc())
            if t.exists():
                return "", t.first().tag
            for m in DockerManifest.select().where((DockerManifest.kind == "index")
                                                   & (DockerManifest.registry == registry)
                                                   & (DockerManifest.repository == repository)):
                if any(c.get("digest") == digest for c in m.children or []):
                    t = DockerTag.select().where(same & (DockerTag.digest == m.digest)).order_by(
                        DockerTag.updated.desc()).first()
                    return m.digest, t.tag if t else None
            return "", None
        return await self.ctx.run_db(db)

    async def save_image(self, registry: str, repository: str, tag: str, digest: str, index_digest: str,
                         platform: str, via: str) -> None:
        def db() -> None:
            DockerImage.delete().where((DockerImage.registry == registry) & (DockerImage.repository == repository)
                                       & (DockerImage.tag == tag) & (DockerImage.digest != digest)
                                       & (DockerImage.tag != "")).execute()
            row = DockerImage.get_or_none((DockerImage.registry == registry)
                                          & (DockerImage.repository == repository)
                                          & (DockerImage.tag == tag) & (DockerImage.digest == digest))
            if row is None:
                DockerImage.create(registry=registry, repository=repository, tag=tag, digest=digest,
                                   index_digest=index_digest, platform=platform, via=via)
            else:
                row.pulled = time.time()
                row.index_digest = index_digest or row.index_digest
                row.platform = platform or row.platform
                if via == "pull":
                    row.via = via
                row.save()
        await self.ctx.run_db(db)

    def prefetch(self, registry: str, repository: str, parsed: ParsedManifest) -> None:
        """A client fetched an image manifest, so its blobs come next: start copying those a peer
        already holds (LAN only, never the origin, so a client that has most layers costs no WAN).
        Clients that fetch layers one by one (skopeo) then find them here, not behind a peer hop."""
        if not self.plugin.config.get("prefetch", True) or parsed.kind != "image":
            return
        source = self.source(registry, repository, "blob")
        for blob in parsed.blobs:
            d = blob.digest
            if self.ctx.store.has(d) or d in self.ctx.fetcher.jobs or d in self._prefetching:
                continue
            if not self.ctx.availability.holders(d)[0]:
                continue
            self._prefetching.add(d)
            spawn(self._prefetch_one(d, blob.size, source), f"docker prefetch of {d[:19]}")

    async def _prefetch_one(self, digest: str, size: int | None, source: dict[str, Any]) -> None:
        try:
            async with self._prefetch_slots:
                if self.ctx.store.has(digest):
                    return
                await self.ctx.fetcher.fetch(digest, size, source)
                self.prefetched += 1
        except BeiranError as exc:
            log.debug("prefetch of %s failed: %s", digest[:19], exc.message)
        finally:
            self._prefetching.discard(digest)

    def descriptor_size(self, digest: str) -> int | None:
        entry = self.ctx.store.get(digest)
        if entry is not None:
            return entry.size
        return self.blob_sizes.get(digest)


def _tag_vote(body: bytes) -> str:
    """A peer's `/docker/tags` answer as one comparable value: [digest, media type, size]; its
    `updated` is left out (a peer's clock decides nothing)."""
    ans = json.loads(body)
    if not isinstance(ans, dict):
        raise ValueError("not a JSON object")
    digest = str(parse_digest(str(ans.get("digest"))))
    media_type, size = ans.get("media_type") or "", ans.get("size")
    if not isinstance(media_type, str) or len(media_type) > 255:
        raise ValueError("bad media_type")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_MANIFEST):
        raise ValueError("bad size")
    return json.dumps([digest, media_type, size])


async def _one(data: bytes):
    yield data
