"""The dependency closure `beiran apt preheat --with-deps` adds: what `apt-get install PKG` would
download on a machine that has only the base system, resolved from the verified indexes this node
learned (so a peer's claims never widen it).

apt's rules, with one version per package: Pre-Depends and Depends; in an or-group an alternative
already chosen wins, else the first one the indexes can satisfy (the newest version meeting the
constraint, else a package that Provides it, versioned Provides checked); `:any`/`:native` mean the
target architecture, `:ARCH` that one; arch `all` matches any. The base system every Debian machine
has (Essential and Priority: required packages, and what they depend on) is left out unless asked
for. A dependency nothing satisfies is reported, not dropped. Cycles end because each package is
chosen once; the size is capped.

`Resolver` blocks (python-apt); `closure` drives it level by level, loading rows as it goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from beiran.errors import BadRequest
from beiran.models.base import dict_rows
from beiran.preheat import MAX_BLOBS
from beiran_plugins.apt import trust
from beiran_plugins.apt.models import AptPackage

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin

Row = dict[str, Any]
#: names per database query (sqlite's variable limit is far above; keeps one query small)
_BATCH = 400
#: the base system's closure (Debian's: ~100 packages); beyond it, only the required ones count
MAX_BASE = 2048
_STALE = ("its index was learned before dependencies were kept: run `apt-get update` through this "
          "node again")


@dataclass(frozen=True)
class Alt:
    """One alternative of an or-group: `name[:arch] (op version)`."""

    name: str
    arch: str | None  # a `:ARCH` qualifier; None for none, `:any` and `:native`
    op: str
    version: str

    def __str__(self) -> str:
        text = self.name + (f":{self.arch}" if self.arch else "")
        return text + (f" ({_OPS.get(self.op, self.op)} {self.version})" if self.op else "")


_OPS = {"<": "<<", ">": ">>"}  # apt_pkg reports << and >> as < and >


@dataclass
class Closure:
    added: list[Row] = field(default_factory=list)  # each with "needed_by": "PKG=VERSION"
    skipped: list[str] = field(default_factory=list)  # base-system packages left out, PKG=VERSION
    unresolved: list[dict[str, Any]] = field(default_factory=list)  # {package, depends, missing, why}


def label(row: Row) -> str:
    return f"{row['package']}={row['version']}"


def _same(a: Row, b: Row) -> bool:
    return (a["base"], a["path"]) == (b["base"], b["path"])


def usable(row: Row, bases: set[str]) -> bool:
    """A .deb from an archive this node verified (what preheat can hand to the cluster)."""
    return row["base"] in bases and row["path"].endswith((".deb", ".udeb")) and row["arch"] != "source"


class Resolver:
    """Chooses the closure, one level at a time. Blocking: python-apt parses and compares."""

    def __init__(self, arch: str, cap: int, include_required: bool = False, like: Resolver | None = None) -> None:
        """`like`: share what another resolver (the base system's) loaded and parsed."""
        from beiran_plugins.apt.preheat import version_compare

        version_compare()  # apt_pkg imported, its version system chosen
        self.arch, self.cap, self.include_required = arch, cap, include_required
        self.apt = trust.apt_pkg()
        self.known: dict[str, list[Row]] = like.known if like else {}  # package name -> its rows
        #: virtual name -> (row, provided version)
        self.providers: dict[str, list[tuple[Row, str]]] = like.providers if like else {}
        self.chosen: dict[str, Row] = {}  # key -> row
        self.base: dict[str, Row] = {}  # key -> a base-system row (on every machine: not added)
        self._skipped: dict[str, None] = {}
        self.out = Closure()

    # -- what it knows -------------------------------------------------------------------------
    def learn(self, names: list[str], rows: list[Row]) -> None:
        for name in names:
            self.known.setdefault(name, [])
        for r in rows:
            self.known.setdefault(r["package"], []).append(r)

    def learn_provides(self, rows: list[Row]) -> None:
        for r in rows:
            try:
                groups = self.apt.parse_depends(r["provides"] or "", False)
            except ValueError:
                continue  # a Provides apt could not parse provides nothing, as for apt
            for group in groups:
                for name, version, _ in group:
                    self.providers.setdefault(name.split(":", 1)[0], []).append((r, version))

    def key(self, row: Row) -> str:
        return row["package"] if row["arch"] in (self.arch, "all") else f"{row['package']}:{row['arch']}"

    # -- choosing ------------------------------------------------------------------------------
    def start(self, roots: list[Row]) -> list[Row]:
        """The named packages (kept even when in the base system): the first level to expand."""
        for r in roots:
            if self.key(r) not in self.chosen:
                self._take(r)
        return list(self.chosen.values())

    def newest_each(self, rows: list[Row]) -> list[Row]:
        """The newest row of each package (for the target architecture)."""
        by_key: dict[str, list[Row]] = {}
        for r in rows:
            if r["arch"] in (self.arch, "all"):
                by_key.setdefault(self.key(r), []).append(r)
        return [self._newest(v) for v in by_key.values()]

    def assume_installed(self, rows: list[Row]) -> None:
        """The base system: satisfies dependencies without being added."""
        self.base.update((self.key(r), r) for r in rows)

    def parse(self, frontier: list[Row]) -> list[tuple[Row, list[list[Alt]]]]:
        """Each row's or-groups; a row whose Depends is unknown or unparsable is reported."""
        out = []
        for r in frontier:
            if r.get("depends") is None:
                self._unresolved(r, "", [], _STALE)
                continue
            try:
                groups = self.apt.parse_depends(r["depends"], False)
            except ValueError:
                self._unresolved(r, r["depends"][:200], [], "apt cannot parse its Depends")
                continue
            out.append((r, [[self._alt(*a) for a in g] for g in groups if g]))
        return out

    def unknown(self, parsed: list[tuple[Row, list[list[Alt]]]]) -> list[str]:
        """Names the next `choose` needs rows for that are not loaded yet."""
        return sorted({a.name for _, groups in parsed for g in groups for a in g} - self.known.keys())

    def choose(self, parsed: list[tuple[Row, list[list[Alt]]]]) -> list[Row]:
        """Satisfy every group; returns the rows added (the next level)."""
        added: list[Row] = []
        for parent, groups in parsed:
            for group in groups:
                if any(self._have(a) for a in group):
                    continue
                row = next((r for r in map(self._candidate, group) if r is not None), None)
                if row is None:
                    self._unresolved(parent, " | ".join(map(str, group)), sorted({a.name for a in group}),
                                     "nothing in this node's indexes satisfies it")
                elif row["required"] and not self.include_required:  # required, yet not in the base found
                    self.base[self.key(row)] = row
                    self._skip(row)
                else:
                    self._take(row, parent)
                    added.append(row)
        return added

    def _take(self, row: Row, parent: Row | None = None) -> None:
        if len(self.chosen) >= self.cap:
            more = ", or raise --max-packages" if self.cap < MAX_BLOBS else ""
            raise BadRequest(f"with its dependencies this preheat needs more than {self.cap} packages (the cap: "
                             f"--max-packages, at most {MAX_BLOBS}): preheat fewer packages at once{more}")
        self.chosen[self.key(row)] = row
        if parent is not None:
            self.out.added.append({**row, "needed_by": label(parent)})

    def _alt(self, name: str, version: str, op: str) -> Alt:
        base, _, qualifier = name.partition(":")
        return Alt(base, None if qualifier in ("", "any", "native") else qualifier, op, version)

    def _arch_ok(self, alt: Alt, row: Row) -> bool:
        return row["arch"] in (alt.arch or self.arch, "all")

    def _meets(self, alt: Alt, version: str) -> bool:
        return not alt.op or (bool(version) and bool(self.apt.check_dep(version, alt.op, alt.version)))

    def _skip(self, row: Row) -> None:
        if label(row) not in self._skipped:
            self._skipped[label(row)] = None
            self.out.skipped.append(label(row))

    def _have(self, alt: Alt) -> bool:
        """Already satisfied by a package chosen, else by the base system (then reported as left out)."""
        for picked in (self.chosen, self.base):
            for r in self.known.get(alt.name, []):
                p = picked.get(self.key(r))
                if p is not None and self._arch_ok(alt, p) and self._meets(alt, p["version"]):
                    return self._found(picked, p)
            for r, provided in self.providers.get(alt.name, []):
                p = picked.get(self.key(r))
                if p is not None and _same(p, r) and self._arch_ok(alt, r) and self._meets(alt, provided):
                    return self._found(picked, p)
        return False

    def _found(self, picked: dict[str, Row], row: Row) -> bool:
        if picked is self.base:
            self._skip(row)
        return True

    def _candidate(self, alt: Alt) -> Row | None:
        """The newest version of `alt.name` that meets it, else a package providing it (a base-system
        package whose version does not meet it may be chosen anew: apt would upgrade it)."""
        real = [r for r in self.known.get(alt.name, [])
                if self._arch_ok(alt, r) and self.key(r) not in self.chosen and self._meets(alt, r["version"])]
        if real:
            return self._newest(real)
        providers = [r for r, provided in self.providers.get(alt.name, [])
                     if self._arch_ok(alt, r) and self.key(r) not in self.chosen and self._meets(alt, provided)]
        if not providers:
            return None
        first = min(r["package"] for r in providers)  # several: the same choice every time
        return self._newest([r for r in providers if r["package"] == first])

    def _newest(self, rows: list[Row]) -> Row:
        best = rows[0]
        for r in rows[1:]:
            if self.apt.version_compare(r["version"], best["version"]) > 0:
                best = r
        return best

    def _unresolved(self, row: Row, depends: str, missing: list[str], why: str) -> None:
        self.out.unresolved.append({"package": label(row), "depends": depends, "missing": missing, "why": why})


# -- driving it -----------------------------------------------------------------------------------
class Rows(Protocol):
    """Where the resolver's rows come from (this node's database; a list in tests)."""

    async def named(self, names: list[str]) -> list[Row]: ...
    async def providing(self) -> list[Row]: ...
    async def required(self) -> list[Row]: ...
    def blocking(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...


async def _expand(rows: Rows, resolver: Resolver, frontier: list[Row]) -> None:
    while frontier:
        parsed = await rows.blocking(resolver.parse, frontier)
        names = resolver.unknown(parsed)
        if names:
            resolver.learn(names, await rows.named(names))
        frontier = await rows.blocking(resolver.choose, parsed)


async def closure(rows: Rows, roots: list[Row], arch: str, cap: int, include_required: bool = False) -> Closure:
    """`roots` and everything they need, within `cap` packages in all (BadRequest beyond)."""
    base = await rows.blocking(Resolver, arch, MAX_BASE, True)  # imports apt_pkg: off the loop
    await rows.blocking(base.learn_provides, await rows.providing())
    if not include_required:
        required = await rows.blocking(base.newest_each, await rows.required())
        try:
            await _expand(rows, base, base.start(required))
        except BadRequest:  # a base system this large is not Debian's: only the required packages count
            base.chosen = {base.key(r): r for r in required}
    resolver = Resolver(arch, cap, include_required, like=base)
    if not include_required:
        resolver.assume_installed(list(base.chosen.values()))
    await _expand(rows, resolver, resolver.start(roots))
    return resolver.out


class DbRows:
    """The rows of this node's verified indexes, for archives it knows (`AptPackage`)."""

    def __init__(self, plugin: AptPlugin) -> None:
        self.ctx, self.bases = plugin.ctx, plugin.archive.bases

    async def _query(self, where: Any) -> list[Row]:
        found = await self.ctx.run_db(lambda: dict_rows(AptPackage.select().where(where
                                                                                  & (AptPackage.arch != "source"))))
        return [r for r in found if usable(r, self.bases)]

    async def named(self, names: list[str]) -> list[Row]:
        out: list[Row] = []
        for i in range(0, len(names), _BATCH):
            out += await self._query(AptPackage.package.in_(names[i:i + _BATCH]))
        return out

    async def providing(self) -> list[Row]:
        return await self._query(AptPackage.provides.is_null(False) & (AptPackage.provides != ""))

    async def required(self) -> list[Row]:
        return await self._query(AptPackage.required == True)  # noqa: E712 - peewee builds SQL from ==

    def blocking(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return self.ctx.run_blocking(fn, *args)
