"""`beiran docker pull`: the manifest (this node's platform picked from an index), then every blob into
the store through the fetcher, reporting progress per layer; optionally loaded into the engine."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, BeiranError, NotFound
from beiran_plugins.docker.errors import ManifestInvalid, PlatformMismatch
from beiran_plugins.docker.manifest import (
    Descriptor,
    ParsedManifest,
    host_platform,
    normalize_platform,
    parse_manifest,
    pick_platform,
)
from beiran_plugins.docker.reference import Reference

if TYPE_CHECKING:
    from beiran_plugins.docker.plugin import DockerPlugin

Emit = Callable[[dict[str, Any]], Awaitable[None]]
PARALLEL = 4
TICK = 0.25


async def resolve_image(plugin: DockerPlugin, ref: Reference, platform: str | None = None,
                        via: str | None = None) -> tuple[str, str, ParsedManifest, str, str]:
    """(manifest digest, index digest or "", parsed image manifest, platform, media type) for `ref`."""
    mirror = plugin.mirror
    reg, repo = ref.registry, ref.repository
    plat = normalize_platform(platform or host_platform())
    media_type, size = "", None
    if ref.digest:
        digest = ref.digest
    else:
        info = await mirror.resolve_tag(reg, repo, ref.tag or "latest", [])
        digest, media_type, size = info.digest, info.media_type, info.size
    data, media_type = await mirror.manifest(reg, repo, digest, media_type, size)
    parsed = _parse(data, media_type, ref)
    index_digest = ""
    if parsed.kind == "index":
        if via:
            await mirror.record(reg, repo, digest, data, media_type, tag=ref.tag, via=via)
        child = pick_platform(parsed.children, plat)
        if child is None:
            have = ", ".join(sorted({c.platform for c in parsed.children if c.platform})) or "none"
            raise NotFound(f"{ref} has no image for {plat} (it has: {have})")
        index_digest, digest = digest, child.digest
        data, media_type = await mirror.manifest(reg, repo, child.digest, child.media_type, child.size)
        parsed = _parse(data, media_type, ref)
        if parsed.kind != "image":
            raise ManifestInvalid(f"{ref}: the {plat} entry of the index is not an image manifest")
    if via:
        await mirror.record(reg, repo, digest, data, media_type, tag=ref.tag, via=via, index_digest=index_digest,
                            platform=plat if index_digest else "")
    return digest, index_digest, parsed, plat, media_type


def _parse(data: bytes, media_type: str, ref: Reference) -> ParsedManifest:
    try:
        return parse_manifest(data, media_type)
    except BadRequest as exc:
        raise ManifestInvalid(f"{ref}: {exc.message}") from None


async def pull(plugin: DockerPlugin, ref: Reference, platform: str | None, emit: Emit) -> dict[str, Any]:
    """Pull `ref` into the store; `emit` gets NDJSON-able progress events. Returns the summary."""
    ctx = plugin.ctx
    started = time.monotonic()
    digest, index_digest, parsed, plat, _ = await resolve_image(plugin, ref, platform, via="pull")
    if platform and not index_digest and parsed.config:
        await _check_platform(plugin, ref, parsed, plat)
    blobs = parsed.blobs
    await emit({"event": "manifest", "ref": str(ref), "digest": digest, "index_digest": index_digest or None,
                "platform": plat, "blobs": [{"digest": b.digest, "size": b.size,
                                             "kind": "config" if b is parsed.config else "layer"} for b in blobs]})
    source = plugin.mirror.source(ref.registry, ref.repository, "blob")
    jobs: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    sem = asyncio.Semaphore(PARALLEL)

    async def one(digest_: str, size: int | None) -> None:
        async with sem:
            try:
                job = await ctx.fetcher.start(digest_, size, source)
                jobs[digest_] = job
                await asyncio.shield(job.done)
            except BeiranError as exc:
                errors[digest_] = exc
            except Exception as exc:  # noqa: BLE001 - reported per layer, the pull fails as a whole
                errors[digest_] = exc

    unique = list({b.digest: b for b in blobs}.values())
    tasks = [asyncio.ensure_future(one(b.digest, b.size)) for b in unique]
    while not all(t.done() for t in tasks):
        await asyncio.wait(tasks, timeout=TICK)
        await emit({"event": "progress", "layers": [_progress(b, jobs.get(b.digest), errors.get(b.digest))
                                                    for b in unique]})
    sources: Counter[str] = Counter()
    for job in jobs.values():
        if not job.failed:
            sources.update(job.bytes_from)
    if not index_digest and parsed.config:  # a single-platform image: its config says which
        from beiran_plugins.docker.images import platform_of_config

        plat = await platform_of_config(plugin, parsed.config.digest) or plat
    if errors:
        first = next(iter(errors.values()))
        if isinstance(first, BeiranError):
            raise first
        raise BeiranError(f"pull of {ref} failed: {first}")
    return {"event": "done", "ref": str(ref), "digest": digest, "index_digest": index_digest or None,
            "platform": plat, "layers": len(parsed.layers), "size": sum(b.size or 0 for b in unique),
            "sources": dict(sources), "elapsed": round(time.monotonic() - started, 3)}


async def _check_platform(plugin: DockerPlugin, ref: Reference, parsed: ParsedManifest, wanted: str) -> None:
    """A single-platform image asked for with `--platform`: its config (fetched first, it is small)
    must say that platform, before any layer is fetched."""
    from beiran_plugins.docker.images import platform_of_config

    config = parsed.config
    if config is None:  # an index: the platform is picked from its entries, nothing to check here
        return
    source = plugin.mirror.source(ref.registry, ref.repository, "blob")
    job = await plugin.ctx.fetcher.start(config.digest, config.size, source)
    await asyncio.shield(job.done)
    have = await platform_of_config(plugin, config.digest)
    if have and pick_platform([Descriptor(digest=config.digest, media_type="", size=0, platform=have)],
                              wanted) is None:
        raise PlatformMismatch(f"{ref} is built for {have} only, not {wanted}: drop --platform or pick "
                               f"an image built for {wanted}")


def _progress(blob: Any, job: Any, error: BaseException | None) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": blob.digest, "total": blob.size, "bytes": 0, "done": False}
    if job is not None:
        p = job.progress()
        out.update(bytes=p["bytes"], total=p["total"] or blob.size, done=p["done"] and not job.failed,
                   sources=p["sources"])
    if error is not None:
        out["error"] = getattr(error, "message", str(error))
    return out
