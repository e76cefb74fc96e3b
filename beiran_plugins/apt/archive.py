"""What this node knows about the archives its clients use, and how much of it to trust.

Release files are verified (gpgv) before their hashes count; an index file's hashes are used only
when it matches the verified Release that lists it (or its URL is under `trusted_sources`). From those
indexes come pool path -> SHA256 + size, which turn .deb requests into cluster fetches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest
from beiran.models.base import dict_rows
from beiran.store.dbbatch import Insert
from beiran_plugins.apt import trust
from beiran_plugins.apt.models import AptDeb, AptLearnedIndex, AptPackage, AptRelease, AptSource
from beiran_plugins.apt.trust import BAD_SIGNATURE, KEY_MISSING
from beiran_plugins.apt.urls import Kind, Target, clean_path, parse_url

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin, KeyChoice

log = logging.getLogger("beiran.apt")
LOOKUP_CACHE = 4096
#: the row of each .deb stored, SQL made once (peewee builds each query in Python: see the core store)
_INSERT_DEB = Insert(AptDeb, ("digest", "package", "version", "arch", "size", "filename", "via", "added"), "IGNORE")
#: an index's pool files, all in one executemany (peewee's insert_many: ~5 s of CPU for Debian main)
_INSERT_PACKAGE = Insert(AptPackage, ("base", "path", "sha256", "size", "package", "version", "arch", "depends",
                                      "provides", "required"), "REPLACE")
#: the pool file apt asks for -> (sha256, size, package, version, arch): plain SQL made once, since
#: every .deb not asked for before (all of them, in a real install) is looked up once
_PACKAGE_COLUMNS = ("sha256", "size", "package", "version", "arch")
_SELECT_PACKAGE = "SELECT {} FROM \"{}\" WHERE \"base\" = ? AND \"path\" = ? LIMIT 1".format(
    ", ".join(f'"{AptPackage._meta.fields[c].column_name}"' for c in _PACKAGE_COLUMNS), AptPackage._meta.table_name)


def _select_packages(wanted: list[tuple[str, str]]) -> list[tuple[Any, ...] | None]:
    """Blocking (the database thread): the row of each (base, pool file), None where no index
    listed it; all in one hop to the database thread (apt asks for up to 10 at once, pipelined)."""
    database = AptPackage._meta.database
    return [next(iter(database.execute_sql(_SELECT_PACKAGE, key).fetchall()), None) for key in wanted]


@dataclass
class Blob:
    """A file the cluster can deliver: its digest, size, and the source peers can resolve."""

    digest: str
    size: int
    base: str
    path: str  # relative to base
    package: str = ""
    version: str = ""
    arch: str = ""
    index_name: str = ""  # by-hash only: the index file name it stands for (Packages.xz, ...)

    @property
    def source(self) -> dict[str, Any]:
        return {"plugin": "apt", "base": self.base, "path": self.path}


def split_base(target: Target, bases: set[str]) -> tuple[str, str] | None:
    """(base key, path relative to it) for the longest known base the target lies under."""
    segs = target.path.strip("/").split("/")
    for i in range(len(segs) - 1, -1, -1):
        key = base_key(target, "/".join(segs[:i]))
        if key in bases:
            return key, "/".join(segs[i:])
    return None


def base_key(target: Target, dir_path: str) -> str:
    t = Target(target.scheme, target.host, target.port, "/" + dir_path.strip("/"), target.mode)
    return t.url.rstrip("/") + "/"


def release_dirs(target: Target) -> tuple[str, str]:
    """(release dir, archive base) for an InRelease/Release URL; flat repos have them equal."""
    dir_path = target.path.rsplit("/", 1)[0]
    release_dir = base_key(target, dir_path)
    i = dir_path.rfind("/dists/")
    base = base_key(target, dir_path[:i]) if i >= 0 else release_dir
    return release_dir, base


def _forget_indexes_without_depends() -> None:
    """Indexes learned before their Depends/Provides were kept are learned again (the next
    `apt-get update`, even one apt answers `Hit`), so `preheat --with-deps` can use them."""
    if AptPackage.select().where(AptPackage.depends.is_null() & (AptPackage.arch != "source")).exists():
        AptLearnedIndex.delete().execute()


class Archive:
    def __init__(self, plugin: AptPlugin) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.workdir: Path = plugin.root / "work"
        self.bases: set[str] = set()
        self.releases: dict[str, dict[str, Any]] = {}  # release dir -> row dict
        self.learned: dict[str, str] = {}  # index URL -> sha256 of the copy learned from
        self.stats: Counter[str] = Counter()
        self._lookups: OrderedDict[str, Blob | None] = OrderedDict()  # pool URL -> package(), LRU
        self.trust_states: dict[str, str] = {}  # base -> trust (for /metrics)
        self.learned_indexes: set[str] = set()  # sha256 of index files whose pool files are known
        self._catching_up: dict[str, asyncio.Task] = {}  # release dir -> learn_missing_indexes
        self._recording: dict[str, asyncio.Task] = {}  # digest -> record_deb's writes under way
        self._urgent: set[str] = set()  # ...that someone waits for (not deferred)

    async def load(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.ctx.run_db(_forget_indexes_without_depends)
        sources, rels, learned = await self.ctx.run_db(lambda: (
            [(s.key, s.trust) for s in AptSource.select(AptSource.key, AptSource.trust)],
            dict_rows(AptRelease.select()), [r.sha256 for r in AptLearnedIndex.select(AptLearnedIndex.sha256)]))
        self.bases = {k for k, _ in sources}
        self.trust_states = dict(sources)
        self.releases = {r["url"]: r for r in rels}
        self.learned_indexes = set(learned)

    # -- trust -----------------------------------------------------------------------------------
    def trusted_prefix(self, url: str) -> bool:
        return any(url.startswith(p) for p in self.plugin.cfg.trusted_sources)

    def release_for(self, url: str) -> dict[str, Any] | None:
        best = None
        for rdir, rel in self.releases.items():
            if url.startswith(rdir) and (best is None or len(rdir) > len(best["url"])):
                best = rel
        return best

    async def learn(self, target: Target, path: Path, sha256: str, from_peer: bool = False) -> None:
        """Digest a freshly fetched index file (or a copy a peer had); never raises."""
        if self.learned.get(target.url) == sha256:
            return
        try:
            if target.kind == Kind.RELEASE:
                await self._learn_release(target, path, from_peer)
            else:
                await self._learn_index(target, path, sha256, target.name, from_peer)
            self.learned[target.url] = sha256
        except Exception as exc:  # noqa: BLE001 - a bad index must never break the proxying of it
            log.warning("apt: could not use %s: %s", target.url, exc)
            self.stats["index_errors"] += 1

    async def _learn_release(self, target: Target, path: Path, from_peer: bool) -> None:
        release_dir, base = release_dirs(target)
        keys = await self.ctx.run_blocking(self.plugin.keys_for, release_dir)
        keyrings, work = keys.keyrings, self.workdir
        trusted_src = self.trusted_prefix(target.url) and not from_peer
        if target.name == "InRelease":
            v = await self.ctx.run_blocking(trust.verify_clearsigned, path, keyrings, work)
            data_path = path
        elif target.name == "Release.gpg":
            cached = await self.plugin.indexes.cache.get(release_dir + "Release")
            if cached is None:
                return
            data_path = cached.path
            v = await self.ctx.run_blocking(trust.verify_detached, data_path, path, keyrings, work)
        else:  # plain Release: counts once its Release.gpg verifies, or under trusted_sources
            v = trust.Verification(False, error="waiting for Release.gpg")
            data_path = path
        if v.ok and not trust.signer_allowed(v, keys.fingerprints):
            wanted = ", ".join(keys.fingerprints)
            v = trust.Verification(False, error=f"signed by key {v.signer}, not by {wanted} ({keys.where})",
                                   reason=KEY_MISSING, missing_key=keys.fingerprints[0].rstrip("!"))
        if v.ok:
            text, trust_state = v.text or "", "signed"
            self.stats["releases_verified"] += 1
        elif trusted_src:
            text, trust_state = await self.ctx.run_blocking(trust.unsigned_text, data_path), "trusted_sources"
        else:
            if target.name != "Release":
                await self._rejected(target, base, v, keys)
            return
        info = await self.ctx.run_blocking(trust.parse_release, text)
        row = {"url": release_dir, "base": base, "trusted": True, "trust": trust_state, "signer": v.signer,
               "fetched": time.time(), "by_hash": info.by_hash, "entries": info.entries}
        self.releases[release_dir] = row
        await self.ctx.run_db(lambda: AptRelease.insert(**row).on_conflict_replace().execute())
        await self._save_source(base, target.mode, trust_state, v.signer, None)
        log.info("apt: %s %s (%d index files)", release_dir, trust_state, len(info.entries))

    async def _rejected(self, target: Target, base: str, v: trust.Verification, keys: KeyChoice) -> None:
        """A Release that did not verify: a key that is not installed (said with its id and where
        it was looked for) is told apart from a signature that is bad."""
        reason = v.reason or BAD_SIGNATURE
        self.stats["releases_rejected"] += 1
        self.stats[f"releases_{reason}"] += 1
        if reason == KEY_MISSING:
            error = f"{v.error}: looked in {', '.join(keys.places) or '(no keyrings)'} ({keys.where})"
            log.warning("apt: %s: %s; its hashes are not used until that key is installed", target.url, error)
            await self._save_source(base, target.mode, KEY_MISSING, None, error, v.missing_key, keys.places)
        else:
            log.warning("apt: %s has a bad signature (%s): its hashes are not used", target.url, v.error)
            await self._save_source(base, target.mode, BAD_SIGNATURE, None, f"bad signature: {v.error}")

    async def _save_source(self, base: str, mode: str, trust_state: str, signer: str | None,
                           error: str | None, missing_key: str | None = None,
                           looked_in: list[str] | None = None) -> None:
        now = time.time()
        self.bases.add(base)
        self.trust_states[base] = trust_state

        def db() -> None:
            AptSource.insert(key=base, mode=mode, created=now, last_refresh=now, trust=trust_state,
                             signer=signer, last_error=error, missing_key=missing_key,
                             looked_in=looked_in).on_conflict(
                conflict_target=[AptSource.key],
                update={AptSource.mode: mode, AptSource.last_refresh: now, AptSource.trust: trust_state,
                        AptSource.signer: signer, AptSource.last_error: error,
                        AptSource.missing_key: missing_key, AptSource.looked_in: looked_in}).execute()
        await self.ctx.run_db(db)

    async def refreshed(self, target: Target) -> None:
        """The upstream confirmed (304) the Release this node has."""
        _, base = release_dirs(target)
        if base in self.bases:
            now = time.time()
            await self.ctx.run_db(lambda: AptSource.update(last_refresh=now).where(AptSource.key == base).execute())

    async def _learn_index(self, target: Target, path: Path, sha256: str, name: str, from_peer: bool,
                           size: int | None = None) -> None:
        if not (name.startswith("Packages") or name.startswith("Sources")):
            return
        url = target.url
        rel = self.release_for(url)
        ok, base = False, None
        if rel is not None and rel["trusted"]:
            relpath = url[len(rel["url"]):]
            entry = rel["entries"].get(relpath)
            if target.kind == Kind.BY_HASH:
                ok = True  # the caller matched its hash against the verified Release already
            elif entry and entry.get("sha256") == sha256:
                ok = True
            base = rel["base"]
        if not ok and self.trusted_prefix(url) and not from_peer:
            ok = True
            i = url.rfind("/dists/")
            base = base or (url[:i + 1] if i >= 0 else url.rsplit("/", 1)[0] + "/")
        if not ok or base is None:
            self.stats["indexes_rejected"] += 1
            log.warning("apt: %s does not match a verified Release: its hashes are not used", url)
            return
        parse = trust.parse_packages if name.startswith("Packages") else trust.parse_sources
        rows = await self.ctx.run_blocking(parse, path, name, self.workdir)
        clean = []
        for r in rows:
            try:
                r["path"] = clean_path("/" + r["path"]).lstrip("/")
            except Exception:  # noqa: BLE001 - a weird Filename is skipped, not fatal
                continue
            r["base"] = base
            clean.append(r)
        self.bases.add(base)

        values = [tuple(r.get(c) for c in _INSERT_PACKAGE.columns) for r in clean]

        def db() -> None:
            database = AptPackage._meta.database
            with database.atomic():
                database.cursor().executemany(_INSERT_PACKAGE.sql, values)  # Debian main, 63k rows: ~1.2 s CPU
                AptLearnedIndex.insert(sha256=sha256, url=url, learned=time.time()).on_conflict_replace().execute()
        await self.ctx.run_db(db)
        self.learned_indexes.add(sha256)
        self._lookups.clear()  # answers (and misses) given before this index are out of date
        self.stats["indexes_used"] += 1
        log.info("apt: %s: %d files known", url, len(clean))

    async def learn_by_hash(self, target: Target, blob: Blob, path: Path) -> None:
        """A by-hash index the core fetched (so verified against the Release hash) -> its pool files."""
        if self.learned.get(target.url) == blob.digest:
            return
        try:
            await self._learn_index(target, path, blob.digest.split(":", 1)[1], blob.index_name, False)
            self.learned[target.url] = blob.digest
        except Exception as exc:  # noqa: BLE001
            log.warning("apt: could not use %s: %s", target.url, exc)
            self.stats["index_errors"] += 1

    # -- indexes apt did not ask for -------------------------------------------------------------
    def catch_up(self, target: Target) -> None:
        """apt was just told its copy of this Release is current (`Hit`), so it will not ask for
        the index files: learn the ones this node does not know yet itself (from the cluster by
        hash, else the upstream), verified against the Release as always."""
        release_dir, _ = release_dirs(target)
        rel = self.releases.get(release_dir)
        if rel is None or not rel["trusted"] or release_dir in self._catching_up:
            return
        missing = [(name, e) for name, e in self._wanted_indexes(rel) if e.get("sha256") not in self.learned_indexes]
        if not missing:
            return
        task = self.plugin._spawn(self._learn_missing(rel, missing))
        self._catching_up[release_dir] = task
        task.add_done_callback(lambda _: self._catching_up.pop(release_dir, None))

    def _wanted_indexes(self, rel: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """One Packages file per directory (xz, else gz, else plain) for this machine's apt
        architectures: what apt itself would have fetched."""
        if not hasattr(self, "_archs"):
            self._archs = {*trust.apt_pkg().get_architectures(), "all"}
        best: dict[str, tuple[int, str, dict[str, Any]]] = {}
        for name, entry in (rel.get("entries") or {}).items():
            directory, _, fname = name.rpartition("/")
            rank = {"Packages.xz": 0, "Packages.gz": 1, "Packages": 2}.get(fname)
            last = directory.rsplit("/", 1)[-1]
            if rank is None or not entry.get("sha256") or (
                    last.startswith("binary-") and last[len("binary-"):] not in self._archs):
                continue
            if directory not in best or rank < best[directory][0]:
                best[directory] = (rank, name, entry)
        return [(name, entry) for _, name, entry in best.values()]

    async def _learn_missing(self, rel: dict[str, Any], missing: list[tuple[str, dict[str, Any]]]) -> None:
        for name, entry in missing:
            directory = name.rpartition("/")[0]
            try:
                if rel["by_hash"]:
                    target = parse_url(f"{rel['url']}{directory + '/' if directory else ''}by-hash/SHA256/"
                                       f"{entry['sha256']}")
                    blob = self.by_hash(target)
                    if blob is None:
                        continue
                    stored = await self.ctx.fetcher.fetch(blob.digest, blob.size, blob.source)
                    await self.ctx.store.unpin("apt", f"index:{target.url}")
                    await self.ctx.store.pin(blob.digest, "apt", f"index:{target.url}")
                    await self.learn_by_hash(target, blob, Path(self.ctx.store.file_of(stored)))
                else:
                    await self.plugin.indexes.get(parse_url(rel["url"] + name))
                self.stats["indexes_caught_up"] += 1
                log.info("apt: learned %s%s, which apt already had", rel["url"], name)
            except Exception as exc:  # noqa: BLE001 - apt's own next update will try again
                log.warning("apt: could not learn %s%s: %s", rel["url"], name, exc)

    # -- lookups -------------------------------------------------------------------------------
    async def package(self, target: Target) -> Blob | None:
        """The trusted description of a pool file, or None (then it is passed through)."""
        return (await self.packages([target]))[0]

    async def packages(self, targets: list[Target]) -> list[Blob | None]:
        """`package` of each target, those not known yet looked up in one database hop. Recent
        answers are kept: a pipelined request is looked up once for its prefetch, then again."""
        found: list[Blob | None] = [None] * len(targets)
        wanted: dict[int, tuple[str, str]] = {}
        for i, target in enumerate(targets):
            if target.url in self._lookups:
                self._lookups.move_to_end(target.url)
                found[i] = self._lookups[target.url]
            elif (where := split_base(target, self.bases)) is not None:
                wanted[i] = where
        if not wanted:
            return found
        rows = await self.ctx.run_db(_select_packages, list(wanted.values()))
        bases = {base for base, _ in wanted.values()}
        pending = [t for rdir, t in self._catching_up.items() if self.releases.get(rdir, {}).get("base") in bases]
        if pending and not all(rows):  # apt asks right after a `Hit` update: the index is on its way
            await asyncio.wait(pending, timeout=self.plugin.cfg.upstream_timeout)
            rows = await self.ctx.run_db(_select_packages, list(wanted.values()))
        for (i, (base, rel)), row in zip(wanted.items(), rows, strict=True):
            blob = None
            if row is not None:
                sha256, size, package, version, arch = row
                blob = Blob(f"sha256:{sha256}", size, base, rel, package, version, arch)
            found[i] = self._lookups[targets[i].url] = blob
        while len(self._lookups) > LOOKUP_CACHE:
            self._lookups.popitem(last=False)
        return found

    def by_hash(self, target: Target) -> Blob | None:
        """`.../by-hash/SHA256/<hex>` listed by a verified Release -> a content-addressed blob."""
        rel = self.release_for(target.url)
        if rel is None or not rel["trusted"]:
            return None
        relpath = target.url[len(rel["url"]):]
        directory, _, rest = relpath.partition("by-hash/")
        alg_name, _, hexd = rest.partition("/")
        alg = {"SHA256": "sha256", "SHA512": "sha512"}.get(alg_name)
        if alg is None:
            return None
        for name, entry in rel["entries"].items():
            if entry.get(alg) == hexd and name.startswith(directory) and "/" not in name[len(directory):]:
                found = split_base(target, {rel["base"]})
                if found is None:
                    return None
                return Blob(f"{alg}:{hexd}", entry["size"], rel["base"], found[1],
                            index_name=name[len(directory):])
        return None

    def origin_url(self, params: dict[str, Any], digest: str) -> str:
        """Where a peer's fetch source points, if this node knows that archive itself."""
        base, path = params["base"], params["path"]
        if base not in self.bases:
            raise BadRequest("apt: this node has never seen that archive; it will not fetch from it")
        from urllib.parse import quote

        return base + quote(path, safe="/~+@:,=")

    async def check_digest(self, params: dict[str, Any], digest: str) -> None:
        base, path = params["base"], params["path"]
        rows = await self.ctx.run_db(lambda: [r.sha256 for r in AptPackage.select(AptPackage.sha256).where(
            (AptPackage.base == base) & (AptPackage.path == path))])
        if rows and f"sha256:{rows[0]}" != digest:
            raise BadRequest(f"apt: {path} is {rows[0][:12]} in this node's index, not {digest[:19]}")

    async def record_deb(self, blob: Blob, via: str = "proxy", *, defer: bool = False) -> None:
        """Pin a stored .deb for apt and list it (once: the first way it came in is kept). A second
        caller while the first one's writes are under way waits for them. `defer`: the rows may
        wait for the next batch (a prefetch; the pin holds in memory at once)."""
        ref = _deb_ref(blob)
        task = self._recording.get(blob.digest)
        if task is None:
            if ("apt", ref) in self.ctx.store.pins.get(blob.digest, set()):
                return
            task = asyncio.ensure_future(self._record(blob, ref, via, defer))
            self._recording[blob.digest] = task
            task.add_done_callback(lambda _: self._recorded(blob.digest))
        elif not defer:  # someone waits for a deferred record now: its rows go at once, whether
            self._urgent.add(blob.digest)  # they are queued already or about to be
            self.ctx.store.db_batch.hurry()
        await asyncio.shield(task)

    def _recorded(self, digest: str) -> None:
        self._recording.pop(digest, None)
        self._urgent.discard(digest)

    def recorded(self, blob: Blob) -> bool:
        """The .deb is pinned (in memory, so never evicted) and its rows are queued or written:
        nothing is left to wait for before apt has the file."""
        return ("apt", _deb_ref(blob)) in self.ctx.store.pins.get(blob.digest, ())

    async def _record(self, blob: Blob, ref: str, via: str, defer: bool) -> None:
        def db() -> None:
            _INSERT_DEB(blob.digest, blob.package, blob.version, blob.arch, blob.size,
                        blob.path.rsplit("/", 1)[-1], via, time.time())
        # both in one metadata transaction: the row is queued before the pin's own write (no task
        # per write: a gather of the two cost two tasks per .deb)
        defer = defer and blob.digest not in self._urgent
        row = self.ctx.store.db_batch.submit(db, defer=defer)
        try:
            await self.ctx.store.pin(blob.digest, "apt", ref, defer=defer)
        finally:
            await asyncio.shield(row)


def _deb_ref(blob: Blob) -> str:
    return f"{blob.package}_{blob.version}_{blob.arch}" if blob.package else blob.path.rsplit("/", 1)[-1]
