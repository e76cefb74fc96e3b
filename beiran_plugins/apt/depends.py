"""The dependency closure `beiran apt preheat --with-deps` adds: what `apt-get install PKG` would
download on a machine that has only the Essential/required base, resolved from the verified indexes
this node learned (so a peer's claims never widen it).

apt's rules, simplified to one version per package: Pre-Depends and Depends; in an or-group the
first alternative already chosen wins, else the first one the indexes can satisfy (newest version
that meets the constraint, else a package that Provides it, with versioned Provides checked);
`:any`/`:native` mean the target architecture, `:ARCH` that one; arch `all` matches any. Essential
and Priority: required packages are left out unless asked for. A dependency nothing satisfies is
reported, not dropped. Cycles end because each package is chosen once; the size is capped.

`Resolver` blocks (python-apt): the async driver `closure` calls it through `ctx.run_blocking` and
loads rows from the database level by level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest
from beiran.models.base import dict_rows
from beiran_plugins.apt import trust
from beiran_plugins.apt.models import AptPackage

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin

Row = dict[str, Any]
#: names per database query (sqlite's variable limit is far above; keeps one query small)
_BATCH = 400
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
    skipped: list[str] = field(default_factory=list)  # Essential/required left out, PKG=VERSION
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

    def __init__(self, arch: str, cap: int, include_required: bool = False) -> None:
        from beiran_plugins.apt.preheat import version_compare

        version_compare()  # apt_pkg imported, its version system chosen
        self.arch, self.cap, self.include_required = arch, cap, include_required
        self.apt = trust.apt_pkg()
        self.known: dict[str, list[Row]] = {}  # package name -> its rows (loaded)
        self.providers: dict[str, list[tuple[Row, str]]] = {}  # virtual name -> (row, provided version)
        self.chosen: dict[str, Row] = {}  # key -> row
        self.left_out: dict[str, Row] = {}  # key -> an Essential/required row not added
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
        """The named packages (kept even when required): the first level to expand."""
        for r in roots:
            if self.key(r) not in self.chosen:
                self._take(r)
        return list(self.chosen.values())

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
                elif row["required"] and not self.include_required:
                    self.left_out[self.key(row)] = row
                    self.out.skipped.append(label(row))
                else:
                    self._take(row, parent)
                    added.append(row)
        return added

    def _take(self, row: Row, parent: Row | None = None) -> None:
        if len(self.chosen) >= self.cap:
            raise BadRequest(f"with its dependencies this preheat needs more than {self.cap} packages (the cap, "
                             "--max-packages): preheat fewer packages at once")
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

    def _picked(self, row: Row) -> Row | None:
        """The row chosen (or left out as required) for this row's package, if any."""
        k = self.key(row)
        return self.chosen.get(k) or self.left_out.get(k)

    def _have(self, alt: Alt) -> bool:
        """Already satisfied by a package chosen (or left out as one every system has)."""
        for r in self.known.get(alt.name, []):
            p = self._picked(r)
            if p is not None and self._arch_ok(alt, p) and self._meets(alt, p["version"]):
                return True
        for r, provided in self.providers.get(alt.name, []):
            p = self._picked(r)
            if p is not None and _same(p, r) and self._arch_ok(alt, r) and self._meets(alt, provided):
                return True
        return False

    def _candidate(self, alt: Alt) -> Row | None:
        """The newest version of `alt.name` that meets it, else a package providing it."""
        real = [r for r in self.known.get(alt.name, [])
                if self._arch_ok(alt, r) and self._picked(r) is None and self._meets(alt, r["version"])]
        if real:
            return self._newest(real)
        providers = [r for r, provided in self.providers.get(alt.name, [])
                     if self._arch_ok(alt, r) and self._picked(r) is None and self._meets(alt, provided)]
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


# -- the database side -----------------------------------------------------------------------------
def load_rows(names: list[str]) -> list[Row]:
    out: list[Row] = []
    for i in range(0, len(names), _BATCH):
        out += dict_rows(AptPackage.select().where(AptPackage.package.in_(names[i:i + _BATCH])
                                                   & (AptPackage.arch != "source")))
    return out


def load_providers() -> list[Row]:
    return dict_rows(AptPackage.select().where(AptPackage.provides.is_null(False) & (AptPackage.provides != "")
                                               & (AptPackage.arch != "source")))


async def closure(plugin: AptPlugin, roots: list[Row], arch: str, cap: int,
                  include_required: bool = False) -> Closure:
    """`roots` and everything they need, within `cap` packages in all (BadRequest beyond)."""
    ctx, bases = plugin.ctx, plugin.archive.bases
    resolver = await ctx.run_blocking(Resolver, arch, cap, include_required)  # imports apt_pkg: off the loop
    providers = [r for r in await ctx.run_db(load_providers) if usable(r, bases)]
    await ctx.run_blocking(resolver.learn_provides, providers)
    frontier = resolver.start(roots)
    while frontier:
        parsed = await ctx.run_blocking(resolver.parse, frontier)
        names = resolver.unknown(parsed)
        if names:
            rows = [r for r in await ctx.run_db(load_rows, names) if usable(r, bases)]
            resolver.learn(names, rows)
        frontier = await ctx.run_blocking(resolver.choose, parsed)
    return resolver.out
