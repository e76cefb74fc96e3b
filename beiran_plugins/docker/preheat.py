"""`beiran docker preheat REF --nodes ...`: the image's blobs (config and layers of one platform),
handed to the core's preheat, which has every chosen node fetch them now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beiran import preheat as core_preheat
from beiran_plugins.docker.pull import resolve_image
from beiran_plugins.docker.reference import Reference

if TYPE_CHECKING:
    from beiran_plugins.docker.plugin import DockerPlugin


async def preheat(plugin: DockerPlugin, ref: Reference, platform: str | None, nodes: Any,
                  emit: core_preheat.Emit) -> dict[str, Any]:
    targets = await core_preheat.targets(plugin.ctx, nodes)
    digest, _, parsed, plat, _ = await resolve_image(plugin, ref, platform)
    source = plugin.mirror.source(ref.registry, ref.repository, "blob")
    items = [core_preheat.Item(b.digest, b.size, source) for b in {b.digest: b for b in parsed.blobs}.values()]
    await emit({"event": "manifest", "ref": str(ref), "digest": digest, "platform": plat,
                "blobs": [i.digest for i in items], "nodes": targets})
    summary = await core_preheat.run(plugin.ctx, items, targets, emit)
    return {**summary, "ref": str(ref), "digest": digest, "platform": plat}
