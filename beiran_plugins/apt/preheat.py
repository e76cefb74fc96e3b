"""`beiran apt preheat PKG[=VERSION]...`: package names turned into the pool files the verified
indexes this node learned describe (digest, size, archive), handed to the core's preheat.

The source of each .deb is the archive its index came from: a peer resolves it only against the
archives it has seen itself, so the preheat is seeded here first and such a peer gets the .deb from
this node (see `beiran.preheat.run`)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from beiran import preheat as core_preheat
from beiran.errors import BadRequest, NotFound, PluginError
from beiran.models.base import dict_rows
from beiran_plugins.apt import trust
from beiran_plugins.apt.archive import Blob
from beiran_plugins.apt.depends import Closure, DbRows, closure, usable
from beiran_plugins.apt.models import AptPackage

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin

MAX_PACKAGES = 256  # named in one request
MAX_CLOSURE = core_preheat.MAX_BLOBS  # with their dependencies (each is one blob to preheat)
#: Debian policy: package names, versions ([epoch:]upstream[-revision]) and architecture names
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]{1,128}$")
_ARCH = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_HINT = ("Run `apt-get update` through this node's apt proxy first (`beiran apt sources` lists the "
         "archives it learned)")


@dataclass(frozen=True)
class Spec:
    name: str
    version: str | None

    def __str__(self) -> str:
        return self.name + (f"={self.version}" if self.version else "")


def parse_spec(text: Any) -> Spec:
    if not isinstance(text, str):
        raise BadRequest("packages must be PKG or PKG=VERSION strings")
    name, eq, version = text.strip().partition("=")
    if not _NAME.match(name) or (eq and not _VERSION.match(version)):
        raise BadRequest(f"{text[:80]!r} is not a package name (PKG or PKG=VERSION, e.g. hello=2.10-3)")
    return Spec(name, version or None)


def parse_specs(packages: Any) -> list[Spec]:
    if not isinstance(packages, list) or not packages or len(packages) > MAX_PACKAGES:
        raise BadRequest(f"packages must be a list of 1 to {MAX_PACKAGES} PKG[=VERSION] strings")
    return list(dict.fromkeys(parse_spec(p) for p in packages))


def native_arch() -> str:
    """This machine's apt architecture (what its apt-get would install)."""
    return str(trust.apt_pkg().config.find("APT::Architecture") or trust.apt_pkg().get_architectures()[0])


def check_arch(arch: Any) -> str:
    if arch is None or arch == "":
        return native_arch()
    if not isinstance(arch, str) or not _ARCH.match(arch) or arch in ("source", "all"):
        raise BadRequest(f"{str(arch)[:40]!r} is not a Debian architecture (e.g. amd64, arm64)")
    return arch


_init_lock = threading.Lock()
_system_ready = False


def version_compare() -> Callable[[str, str], int]:
    """dpkg's version order (apt_pkg's needs its "system" chosen once; blocking)."""
    global _system_ready
    mod = trust.apt_pkg()
    with _init_lock:
        if not _system_ready:
            try:
                mod.init_system()
            except SystemError as exc:  # no dpkg here: apt's order is unknown, a named version still works
                raise PluginError(f"apt cannot compare versions on this machine ({exc}): name the version, "
                                  "PKG=VERSION") from None
            _system_ready = True
    return mod.version_compare


def pick(spec: Spec, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Blocking. The row for `spec` among its candidates: that exact version, else the newest
    (apt's order)."""
    if spec.version is not None:
        exact = [r for r in rows if r["version"] == spec.version]
        return exact[0] if exact else None
    compare = version_compare()
    best: dict[str, Any] | None = None
    for r in rows:
        if best is None or compare(r["version"], best["version"]) > 0:
            best = r
    return best


def _blob(row: dict[str, Any]) -> Blob:
    return Blob(f"sha256:{row['sha256']}", row["size"], row["base"], row["path"], row["package"], row["version"],
                row["arch"])


async def resolve(plugin: AptPlugin, specs: list[Spec], arch: str) -> list[dict[str, Any]]:
    """One index row (a .deb) per spec from this node's verified indexes; NotFound naming every miss."""
    names = sorted({s.name for s in specs})
    archs = [arch, "all"]

    def rows() -> list[dict[str, Any]]:
        return dict_rows(AptPackage.select().where(AptPackage.package.in_(names) & AptPackage.arch.in_(archs)))
    found = await plugin.ctx.run_db(rows)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in found:
        if usable(r, plugin.archive.bases):
            by_name.setdefault(r["package"], []).append(r)
    chosen, missing = [], []
    for spec in specs:
        candidates = by_name.get(spec.name, [])
        row = await plugin.ctx.run_blocking(pick, spec, candidates)
        if row is None:
            known = sorted({r["version"] for r in candidates})
            missing.append(f"{spec}" + (f" (known versions: {', '.join(known[:5])})" if known else ""))
            continue
        chosen.append(row)
    if missing:
        raise NotFound(f"not in the apt indexes this node learned (for {arch}): {'; '.join(missing)}. {_HINT}")
    return list({r["sha256"]: r for r in chosen}.values())


def check_options(with_deps: Any, include_required: Any, max_packages: Any) -> int:
    """The closure cap asked for (default and most: what one preheat may carry)."""
    for name, value in (("with_deps", with_deps), ("include_required", include_required)):
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false")
    if include_required and not with_deps:
        raise BadRequest("include_required applies to dependencies: use it with with_deps (--with-deps)")
    if max_packages is None:
        return MAX_CLOSURE
    if not with_deps:
        raise BadRequest("max_packages caps the dependencies: use it with with_deps (--with-deps)")
    if not isinstance(max_packages, int) or isinstance(max_packages, bool) or not 1 <= max_packages <= MAX_CLOSURE:
        raise BadRequest(f"max_packages must be a whole number from 1 to {MAX_CLOSURE} (--max-packages)")
    return max_packages


def _describe(b: Blob, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"package": b.package, "version": b.version, "arch": b.arch, "digest": b.digest, "size": b.size,
            "source": b.source, **(extra or {})}


async def preheat(plugin: AptPlugin, packages: Any, arch: Any, nodes: Any, emit: core_preheat.Emit,
                  with_deps: Any = False, include_required: Any = False, max_packages: Any = None) -> dict[str, Any]:
    """Resolve (with the dependency closure, if asked), then have every chosen node fetch the .debs
    (seeded on this node)."""
    specs = parse_specs(packages)
    arch = check_arch(arch)
    cap = check_options(with_deps, include_required, max_packages)
    targets = await core_preheat.targets(plugin.ctx, nodes, plugin="apt")  # "all": the nodes that run apt
    roots = await resolve(plugin, specs, arch)
    deps = Closure()
    if with_deps:
        deps = await closure(DbRows(plugin), roots, arch, cap, include_required)
    blobs = list({b.digest: b for b in map(_blob, [*roots, *deps.added])}.values())
    needed_by = {f"sha256:{r['sha256']}": r["needed_by"] for r in deps.added}
    added = [_describe(_blob(r), {"needed_by": r["needed_by"]}) for r in deps.added]
    extra = {"added": added, "skipped": deps.skipped, "unresolved": deps.unresolved} if with_deps else {}
    items = [core_preheat.Item(b.digest, b.size, b.source) for b in blobs]
    await emit({"event": "resolved", "arch": arch, "nodes": targets,
                "packages": [_describe(b, {"needed_by": needed_by[b.digest]} if b.digest in needed_by else None)
                             for b in blobs], **extra})
    summary = await core_preheat.run(plugin.ctx, items, targets, emit, seed=True)
    if plugin.ctx.identity.uuid in targets:  # asked for here too: pinned and listed like a proxied .deb
        for b in blobs:
            if plugin.ctx.store.has(b.digest):
                await plugin.archive.record_deb(b, via="preheat")
    return {**summary, "arch": arch, "packages": [f"{b.package}={b.version}" for b in blobs], **extra}
