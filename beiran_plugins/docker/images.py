"""Images this node holds: listing (with the cluster's), one image's record, removal, and the
members of its `docker save` archive."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from beiran.errors import BeiranError, Conflict, NotFound
from beiran.models.base import dict_rows
from beiran_plugins.docker import archive
from beiran_plugins.docker.models import DockerImage, DockerManifest
from beiran_plugins.docker.reference import DOCKER_HUB, Reference

if TYPE_CHECKING:
    from beiran_plugins.docker.plugin import DockerPlugin


def image_name(row: dict[str, Any]) -> str:
    name = f"{row['registry']}/{row['repository']}"
    return name + (f":{row['tag']}" if row.get("tag") else f"@{row['digest']}")


def repo_tag(row: dict[str, Any]) -> str | None:
    """The tag `docker images` would show (docker.io names in their short form)."""
    if not row.get("tag"):
        return None
    name = f"{row['registry']}/{row['repository']}"
    if row["registry"] == DOCKER_HUB:
        name = row["repository"].removeprefix("library/")
    return f"{name}:{row['tag']}"


def _rows() -> list[dict[str, Any]]:
    manifests = {m["digest"]: m for m in dict_rows(DockerManifest.select().where(DockerManifest.kind == "image"))}
    out = []
    for img in dict_rows(DockerImage.select().order_by(DockerImage.pulled.desc())):
        m = manifests.get(img["digest"])
        if m is None:
            continue
        out.append({**img, "config": m["config"], "layers": m["layers"], "media_type": m["media_type"],
                    "manifest_size": m["size"]})
    return out


async def records(plugin: DockerPlugin) -> list[dict[str, Any]]:
    """This node's image records with their manifests' config and layer descriptors."""
    return await plugin.ctx.run_db(_rows)


async def local_images(plugin: DockerPlugin) -> list[dict[str, Any]]:
    """This node's images: one row per (name, tag, manifest digest)."""
    store = plugin.ctx.store
    me = plugin.ctx.identity.uuid
    rows = await plugin.ctx.run_db(_rows)
    out = []
    for r in rows:
        blobs = [r["config"], *r["layers"]] if r["config"] else r["layers"]
        have = sum(1 for b in blobs if store.has(b["digest"]))
        if not r["platform"] and r["config"]:
            r["platform"] = await platform_of_config(plugin, r["config"]["digest"])
        out.append({"ref": image_name(r), "registry": r["registry"], "repository": r["repository"],
                    "tag": r["tag"] or None, "digest": r["digest"], "index_digest": r["index_digest"] or None,
                    "platform": r["platform"] or None, "media_type": r["media_type"], "via": r["via"],
                    "pulled": r["pulled"], "size": sum(b.get("size") or 0 for b in blobs),
                    "layers": len(r["layers"]), "blobs_local": have, "complete": have == len(blobs),
                    "config": (r["config"] or {}).get("digest"), "source": "beiran", "nodes": [me]})
    return out


async def find(plugin: DockerPlugin, ref: Reference) -> list[dict[str, Any]]:
    """Rows naming `ref`: by tag, or by manifest / index digest."""
    rows = await plugin.ctx.run_db(_rows)
    found = []
    for r in rows:
        if (r["registry"], r["repository"]) != (ref.registry, ref.repository):
            continue
        if ref.digest:
            if ref.digest in (r["digest"], r["index_digest"]):
                found.append(r)
        elif r["tag"] == (ref.tag or "latest"):
            found.append(r)
    return found


async def info(plugin: DockerPlugin, ref: Reference) -> dict[str, Any]:
    rows = await find(plugin, ref)
    if not rows:
        raise NotFound(f"image {ref} is not on this node")
    r = rows[0]
    store, avail = plugin.ctx.store, plugin.ctx.availability
    me = plugin.ctx.identity.uuid
    config = None
    cfg = r["config"] or {}
    if cfg.get("digest") and store.has(cfg["digest"]):
        config = json.loads(await read_small(plugin, cfg["digest"]))
    manifest = None
    if store.has(r["digest"]):
        manifest = json.loads(await read_small(plugin, r["digest"]))

    def where(digest: str) -> list[str]:
        complete, _ = avail.holders(digest)
        return ([me] if store.has(digest) else []) + complete

    layers = [{**lay, "nodes": where(lay["digest"])} for lay in r["layers"]]
    return {"ref": image_name(r), "registry": r["registry"], "repository": r["repository"], "tag": r["tag"] or None,
            "digest": r["digest"], "index_digest": r["index_digest"] or None, "media_type": r["media_type"],
            "platform": r["platform"] or _platform_of(config), "via": r["via"], "pulled": r["pulled"],
            "manifest": manifest, "config": config, "config_descriptor": {**cfg, "nodes": where(cfg.get("digest", ""))},
            "layers": layers, "size": sum(x.get("size") or 0 for x in [cfg, *r["layers"]])}


_PLATFORMS: dict[str, str] = {}  # config digest -> os/arch (configs never change)


async def platform_of_config(plugin: DockerPlugin, digest: str) -> str:
    """os/arch[/variant] from an image's config blob, when this node has it."""
    entry = plugin.ctx.store.get(digest)
    if digest not in _PLATFORMS and entry is not None and entry.size <= (4 << 20):
        try:
            _PLATFORMS[digest] = _platform_of(json.loads(await read_small(plugin, digest))) or ""
        except (ValueError, BeiranError, OSError):
            _PLATFORMS[digest] = ""
    return _PLATFORMS.get(digest, "")


def _platform_of(config: dict[str, Any] | None) -> str | None:
    if not isinstance(config, dict) or not config.get("os"):
        return None
    return "/".join(str(x) for x in (config.get("os"), config.get("architecture"), config.get("variant")) if x)


async def read_small(plugin: DockerPlugin, digest: str) -> bytes:
    store = plugin.ctx.store
    async with store.use(digest) as target:
        return b"".join([c async for c in store.read(target)])


async def remove(plugin: DockerPlugin, ref: Reference) -> dict[str, Any]:
    """Forget the image, unpin its blobs, and delete those nothing else pins."""
    rows = await find(plugin, ref)
    if not rows:
        raise NotFound(f"image {ref} is not on this node")
    ids = [r["id"] for r in rows]
    await plugin.ctx.run_db(lambda: DockerImage.delete().where(DockerImage.id.in_(ids)).execute())
    remaining = await plugin.ctx.run_db(_rows)
    still = {r["digest"] for r in remaining}
    store = plugin.ctx.store
    removed = 0
    for r in rows:
        if r["digest"] in still:
            continue
        await store.unpin("docker", f"{r['registry']}/{r['repository']}@{r['digest']}")
        blobs = [r["digest"], *(b["digest"] for b in ([r["config"]] if r["config"] else []) + r["layers"])]
        for d in blobs:
            entry = store.get(d)
            if entry is None or entry.state != "complete" or store.pins.get(d):
                continue
            try:
                await store.remove(d)
                removed += 1
            except (Conflict, BeiranError):
                pass
    return {"removed": [image_name(r) for r in rows], "blobs_removed": removed}


def members(row: dict[str, Any], repo_tags: list[str]) -> list[archive.Member]:
    cfg = row["config"] or {}
    if not cfg.get("digest") or cfg.get("size") is None:
        raise NotFound(f"image {image_name(row)} has no config descriptor")
    return archive.plan(cfg["digest"], cfg["size"], [(x["digest"], x["size"]) for x in row["layers"]], repo_tags)


async def local_layers(plugin: DockerPlugin) -> list[dict[str, Any]]:
    """Layers of this node's images, with where each one is (this node and peers that announced it)."""
    store, avail = plugin.ctx.store, plugin.ctx.availability
    me = plugin.ctx.identity.uuid
    layers: dict[str, dict[str, Any]] = {}
    for r in await plugin.ctx.run_db(_rows):
        for lay in r["layers"]:
            item = layers.setdefault(lay["digest"], {"digest": lay["digest"], "size": lay.get("size"),
                                                     "media_type": lay.get("media_type"), "images": []})
            if image_name(r) not in item["images"]:
                item["images"].append(image_name(r))
    for item in layers.values():
        entry = store.get(item["digest"])
        item["state"] = entry.state if entry else "missing"
        complete, _ = avail.holders(item["digest"])
        item["nodes"] = ([me] if entry else []) + complete
    return sorted(layers.values(), key=lambda x: x["digest"])


async def cluster_layers(plugin: DockerPlugin, node: str | None = None) -> list[dict[str, Any]]:
    me = plugin.ctx.identity.uuid
    if node == me:
        return await local_layers(plugin)
    nodes = [node] if node else await plugin.ctx.peers.reachable("docker")
    answers = await asyncio.gather(*(plugin.mirror.peer_json(n, "/docker/layers") for n in nodes))
    if node and not isinstance(answers[0], dict):
        raise NotFound(f"node {node[:40]} is not online or did not answer")
    merged = {} if node else {x["digest"]: x for x in await local_layers(plugin)}
    for ans in answers:
        for lay in (ans or {}).get("layers") or [] if isinstance(ans, dict) else []:
            if not isinstance(lay, dict) or not isinstance(lay.get("digest"), str):
                continue
            have = merged.setdefault(lay["digest"], dict(lay))
            have["images"] = sorted(set(have.get("images") or []) | set(lay.get("images") or []))
            have["nodes"] = sorted(set(have.get("nodes") or []) | set(lay.get("nodes") or []))
    return sorted(merged.values(), key=lambda x: x["digest"])


async def cluster_images(plugin: DockerPlugin, node: str | None = None) -> list[dict[str, Any]]:
    """All reachable nodes' images (or one node's), merged: each row lists the nodes holding it."""
    me = plugin.ctx.identity.uuid
    nodes = [node] if node else await plugin.ctx.peers.reachable("docker")
    answers = await asyncio.gather(*(plugin.mirror.peer_json(n, "/docker/images") for n in nodes if n != me))
    merged: dict[tuple, dict[str, Any]] = {}
    lists = ([] if node and node != me else [await local_images(plugin)])
    lists += [a.get("images") or [] for a in answers if isinstance(a, dict)]
    if node and node != me and not any(isinstance(a, dict) for a in answers):
        raise NotFound(f"node {node[:40]} is not online or did not answer")
    for lst in lists:
        for img in lst:
            if not isinstance(img, dict) or img.get("source") != "beiran":
                continue
            key = (img.get("registry"), img.get("repository"), img.get("tag"), img.get("digest"))
            if key in merged:
                merged[key]["nodes"] = sorted(set(merged[key]["nodes"]) | set(img.get("nodes") or []))
            else:
                merged[key] = dict(img)
    return list(merged.values())
