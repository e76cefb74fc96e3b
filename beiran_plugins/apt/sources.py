"""This machine's apt sources (sources.list(5): one-line `.list` and deb822 `.sources`), read for one
thing: which keys apt would check each archive's Release with (`signed-by`: keyring files, key
fingerprints, or in deb822 an embedded key block). Blocking; re-read when a file changes.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from beiran.errors import BeiranError
from beiran_plugins.apt.urls import parse_request

_FPR = re.compile(r"^[0-9A-Fa-f]{16,40}!?$")
_KEY_BLOCK = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class SignedBy:
    """`signed-by` of one source: keyring files (or an embedded key) and fingerprints."""

    files: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    key_block: str | None = None
    where: str = ""  # the sources file it came from


@dataclass
class SourceEntry:
    uris: list[str]
    suites: list[str]
    signed_by: SignedBy | None
    file: str
    components: list[str] = field(default_factory=list)

    def release_dirs(self, proxy_port: int | None = None) -> list[str]:
        """The upstream release directory URLs (`<uri>/dists/<suite>/`, or `<uri>/<suite>` for a
        flat repository) this entry covers; mirror paths through this proxy are turned into the
        upstream they name."""
        out = []
        for given in self.uris:
            uri = upstream_of(given, proxy_port)
            if uri is None:
                continue
            for suite in self.suites:
                if suite.endswith("/"):  # flat: the suite is a path below the URI ("./" is the URI)
                    segs = [s for s in suite.split("/") if s not in ("", ".")]
                    out.append("/".join([uri.rstrip("/"), *segs]) + "/")
                else:
                    out.append(f"{uri.rstrip('/')}/dists/{suite}/")
        return out


def upstream_of(uri: str, proxy_port: int | None) -> str | None:
    """A source URI as the proxy keys it: `http://PROXY/https/host/x` -> `https://host/x`."""
    try:
        target = parse_request(uri.rstrip("/") + "/x")
    except BeiranError:
        return None
    if proxy_port and target.port == proxy_port:
        segs = target.path.strip("/").split("/")
        if len(segs) > 2 and segs[0] in ("http", "https"):
            try:
                target = parse_request("/" + "/".join(segs))
            except BeiranError:
                return None
    return target.url[:-1]


def parse_signed_by(value: str, where: str) -> SignedBy | None:
    value = value.strip()
    if not value:
        return None
    if _KEY_BLOCK in value:
        return SignedBy(key_block=value, where=where)
    files, fprs = [], []
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        if item.startswith("/"):
            files.append(item)
        elif _FPR.match(item):
            fprs.append(item.upper())
    return SignedBy(tuple(files), tuple(fprs), where=where)


def parse_one_line(text: str, where: str) -> list[SourceEntry]:
    """`deb [opt=v ...] uri suite [component...]` lines (`deb-src` too)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith(("deb ", "deb-src ", "deb\t", "deb-src\t")):
            continue
        rest = line.split(None, 1)[1].strip() if len(line.split(None, 1)) > 1 else ""
        options: dict[str, str] = {}
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                k, _, v = opt.partition("=")
                options[k.strip().lower()] = v.strip()
        parts = rest.split()
        if len(parts) < 2:
            continue
        signed = parse_signed_by(options.get("signed-by", ""), where)
        out.append(SourceEntry([parts[0]], [parts[1]], signed, where, parts[2:]))
    return out


def parse_deb822(text: str, where: str) -> list[SourceEntry]:
    """deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Components:`, `Signed-By:`, `Enabled:`); a
    continuation line of ` .` is an empty line of a multi-line value (an embedded key block)."""
    out = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        types = stanza.get("types", "").split()
        if not any(t in ("deb", "deb-src") for t in types):
            continue
        uris, suites = stanza.get("uris", "").split(), stanza.get("suites", "").split()
        if not uris or not suites:
            continue
        signed = parse_signed_by(stanza.get("signed-by", ""), where)
        out.append(SourceEntry(uris, suites, signed, where, stanza.get("components", "").split()))
    return out


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
            continue
        if line[0] in " \t" and key is not None:
            cont = line.strip()
            cur[key] += "\n" + ("" if cont == "." else cont)
            continue
        k, sep, v = line.partition(":")
        if not sep:
            continue
        key = k.strip().lower()
        cur[key] = v.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


class Sources:
    """sources.list + sources.list.d/*.list|*.sources under apt_dir, cached by file mtimes."""

    def __init__(self, apt_dir: str, proxy_port: int | None = None) -> None:
        self.apt_dir = Path(apt_dir)
        self.proxy_port = proxy_port
        self._stamp: tuple = ()
        self._by_dir: dict[str, SignedBy | None] = {}

    def files(self) -> list[Path]:
        main = self.apt_dir / "sources.list"
        parts = self.apt_dir / "sources.list.d"
        found = [main] if main.is_file() else []
        if parts.is_dir():
            found += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
        return found

    def _reload(self) -> None:
        files = self.files()
        stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        if stamp == self._stamp:
            return
        by_dir: dict[str, SignedBy | None] = {}
        for f in files:
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            parse = parse_deb822 if f.suffix == ".sources" else parse_one_line
            for entry in parse(text, str(f)):
                for rdir in entry.release_dirs(self.proxy_port):
                    by_dir.setdefault(rdir, entry.signed_by)
        self._by_dir, self._stamp = by_dir, stamp

    def signed_by(self, release_dir: str) -> tuple[bool, SignedBy | None]:
        """(whether this machine's sources name that release dir, its signed-by if any)."""
        self._reload()
        if release_dir in self._by_dir:
            return True, self._by_dir[release_dir]
        return False, None


def key_block_file(block: str, workdir: Path) -> str:
    """An embedded deb822 key block as a file gpgv can read (armored: prepare_keyrings dearmors)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / ("inline-" + hashlib.sha256(block.encode()).hexdigest()[:24] + ".asc")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(block + "\n")
        os.replace(tmp, out)
    return str(out)
