"""`beiran npm warm`: resolve package specs (npm ranges, dist-tags, dependencies) or lockfile entries
to exact versions, then fetch their tarballs into the cluster, reporting progress as it goes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, BeiranError, NotFound
from beiran_plugins.npm.metadata import sha512_of, sri
from beiran_plugins.npm.names import is_tag

if TYPE_CHECKING:
    from beiran_plugins.npm.plugin import NPMPlugin

MAX_PACKAGES = 5000
PARALLEL = 4


@dataclass(frozen=True)
class Target:
    name: str
    version: str
    integrity: str | None = None  # from a lockfile: must agree with the registry


def split_spec(spec: str) -> tuple[str, str]:
    """'foo@^1.2', '@s/foo@next', 'foo' -> (name, range-or-tag)."""
    spec = spec.strip()
    at = spec.find("@", 1)
    if at < 0:
        return spec, "latest"
    return spec[:at], spec[at + 1:] or "latest"


def pick_version(doc: dict[str, Any], rng: str) -> str | None:
    """npm's choice for a range: the `latest` tag if it satisfies, else the highest match."""
    versions = list((doc.get("versions") or {}).keys())
    tags = doc.get("dist-tags") or {}
    rng = rng.strip() or "*"
    if rng in tags and is_tag(rng):
        return tags[rng] if tags[rng] in versions else None
    latest = tags.get("latest")
    logging.getLogger("nodesemver").setLevel(logging.WARNING)  # it logs every regex it compiles
    import nodesemver

    try:
        if latest in versions and nodesemver.satisfies(latest, rng, loose=True):
            return latest
        return nodesemver.max_satisfying(versions, rng, loose=True)
    except (ValueError, TypeError):
        raise BadRequest(f"invalid version range {rng[:60]!r}") from None


def registry_dep(spec: str) -> tuple[str | None, str]:
    """A dependency value -> (alias target or None, range); ('', '') when not from a registry."""
    if spec.startswith("npm:"):
        name, rng = split_spec(spec[4:])
        return name, rng
    if ":" in spec or ("/" in spec and not spec.startswith(("<", ">", "=", "~", "^"))):
        return "", ""  # git, file:, link:, http(s):, workspace:, github shorthand
    return None, spec


async def resolve(plugin: NPMPlugin, specs: list[str], deps: bool) -> tuple[list[Target], list[dict]]:
    queue: list[tuple[str, str]] = [split_spec(s) for s in specs]
    seen_ranges: set[tuple[str, str]] = set()
    found: dict[tuple[str, str], Target] = {}
    errors: list[dict] = []
    while queue:
        name, rng = queue.pop(0)
        if (name, rng) in seen_ranges:
            continue
        seen_ranges.add((name, rng))
        try:
            plugin.check_name(name)
            p = await plugin.packuments.get(name, "abbr")
            version = pick_version(p.doc, rng)
            if version is None:
                raise NotFound(f"no version of {name} matches {rng!r}")
        except BeiranError as exc:
            errors.append({"package": f"{name}@{rng}", "error": exc.message, "code": exc.code, "status": exc.status})
            continue
        if (name, version) in found:
            continue
        found[(name, version)] = Target(name, version)
        if len(found) > MAX_PACKAGES:
            raise BadRequest(f"more than {MAX_PACKAGES} packages to warm: narrow the request")
        if deps:
            manifest = p.manifest(version) or {}
            for field in ("dependencies", "optionalDependencies"):
                for dep, spec in (manifest.get(field) or {}).items():
                    if not isinstance(spec, str):
                        continue
                    alias, dep_rng = registry_dep(spec)
                    if alias != "":
                        queue.append((alias or dep, dep_rng))
    return list(found.values()), errors


def lockfile_targets(entries: list[Any]) -> list[Target]:
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("version"), str):
            raise BadRequest("lockfile entries must be objects with name and version")
        integrity = e.get("integrity") if isinstance(e.get("integrity"), str) else None
        out.append(Target(e["name"], e["version"], integrity))
    return out


async def tarball_of(plugin: NPMPlugin, t: Target) -> tuple[str, dict[str, Any]]:
    """A target's tarball digest (its sha512 integrity) and the source any node resolves it with."""
    ref = f"{t.name}@{t.version}"
    plugin.check_name(t.name)
    p, version = await plugin.packuments.any_with_version(t.name, version=t.version)
    digest = sha512_of((p.manifest(version) or {}).get("dist") or {})
    if digest is None:
        raise BadRequest(f"{ref} has no sha512 integrity: it cannot be shared")
    if t.integrity and t.integrity.startswith("sha512-") and t.integrity.split()[0] != sri(str(digest)):
        raise BadRequest(f"{ref}: the lockfile's integrity differs from the registry's")
    return str(digest), {"plugin": "npm", "package": t.name, "version": version}


async def warm(plugin: NPMPlugin, targets: list[Target], errors: list[dict]) -> AsyncIterator[dict[str, Any]]:
    """Fetch every target through the cluster; yields one progress dict per finished tarball."""
    total = len(targets)
    yield {"stage": "fetching", "total": total, "done_count": 0, "errors": errors}
    sem = asyncio.Semaphore(PARALLEL)

    async def one(t: Target) -> dict[str, Any]:
        ref = f"{t.name}@{t.version}"
        async with sem:
            try:
                digest, source = await tarball_of(plugin, t)
                job = await plugin.ctx.fetcher.start(digest, None, source)
                entry = await asyncio.shield(job.done)
                await plugin.pin(digest, t.name, source["version"])
                return {"package": ref, "ok": True, "size": entry.size, "sources": dict(job.bytes_from)}
            except BeiranError as exc:
                return {"package": ref, "ok": False, "error": exc.message}

    tasks = [asyncio.ensure_future(one(t)) for t in targets]
    failed = list(errors)
    done = fetched_bytes = 0
    try:
        for fut in asyncio.as_completed(tasks):
            result = await fut
            done += 1
            if result["ok"]:
                fetched_bytes += result["size"]
            else:
                failed.append({"package": result["package"], "error": result["error"]})
            yield {**result, "done_count": done, "total": total}
    finally:
        for t in tasks:
            t.cancel()
    yield {"done": True, "total": total, "fetched": done - (len(failed) - len(errors)), "bytes": fetched_bytes,
           "failed": failed}

