"""Signed apt repositories built with the real Debian tools, and a counting HTTP(S) server for them.

A repo is `ROOT/www/<name>/{pool,dists}` (dpkg-deb, dpkg-scanpackages, apt-ftparchive), signed with a
throwaway ed25519 key made in a temp GNUPGHOME (InRelease and Release + Release.gpg), optionally with
by-hash copies of the index files. `RepoServer` serves `ROOT/www` like an archive mirror would:
Last-Modified / If-Modified-Since, Range, per-path request and status counts, failures on command.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import lzma
import os
import random
import re
import shutil
import ssl
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip() or "amd64"


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, **kw) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@dataclass
class Package:
    name: str
    version: str
    path: Path  # the .deb inside the pool
    pool_path: str  # relative to the archive base, as in Packages' Filename

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256

    @property
    def filename(self) -> str:
        return self.path.name


class AptRepo:
    """One signed archive: `deb [signed-by=KEY] URL/<name> stable main`."""

    def __init__(self, root: Path, name: str = "debian", suite: str = "stable", component: str = "main") -> None:
        self.root, self.name, self.suite, self.component = root, name, suite, component
        self.www = root / "www"
        self.base = self.www / name
        self.gnupg = root / "gnupg"
        self.build_dir = root / "build"
        self.packages: dict[str, Package] = {}
        for d in (self.base / "pool", self.gnupg, self.build_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.gnupg, 0o700)
        self.keyring = root / "archive-key.gpg"
        self._make_key()

    # -- key -----------------------------------------------------------------------------------
    def _gpg(self, *args: str) -> str:
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        return run(["gpg", "--batch", "--quiet", "--no-tty", "--pinentry-mode", "loopback",
                    "--passphrase", "", *args], env=env)

    def _stop_agent(self) -> None:
        """gpg starts an agent per GNUPGHOME; stop this one (only it) once signing is done."""
        subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "all"], capture_output=True,
                       timeout=30, env={**os.environ, "GNUPGHOME": str(self.gnupg)})

    def _make_key(self) -> None:
        self._gpg("--quick-gen-key", "Beiran Test Archive <archive@beiran.test>", "ed25519", "sign", "never")
        out = self._gpg("--with-colons", "--list-keys")
        self.fingerprint = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        data = subprocess.run(["gpg", "--batch", "--export", self.fingerprint], env=env,
                              capture_output=True, check=True, timeout=60).stdout
        self.keyring.write_bytes(data)
        self._stop_agent()

    # -- packages --------------------------------------------------------------------------------
    def add(self, name: str, version: str = "1.0", depends: str | None = None, payload: int = 2048,
            seed: int = 0, compress: str = "gzip", fields: dict[str, str] | None = None) -> Package:
        """Build `name_version_all.deb` into the pool, with `payload` bytes of incompressible data
        (`fields`: more control fields, e.g. Provides, Pre-Depends, Essential, Priority)."""
        rel = f"pool/{self.component}/{name[0]}/{name}/{name}_{version}_all.deb"
        out = build_deb(self.base / rel, name, version, depends, payload, seed, compress, self.build_dir, fields)
        pkg = Package(name, version, out, rel)
        self.packages[name] = pkg
        return pkg

    # -- indexes ---------------------------------------------------------------------------------
    @property
    def dists(self) -> Path:
        return self.base / "dists" / self.suite

    @property
    def packages_dir(self) -> Path:
        return self.dists / self.component / f"binary-{ARCH}"

    def build(self, by_hash: bool = True, sign: bool = True, inrelease: bool = True) -> None:
        """Packages (plain, .gz, .xz), Release, InRelease, Release.gpg, and by-hash copies."""
        if self.dists.exists():
            shutil.rmtree(self.dists)
        self.packages_dir.mkdir(parents=True)
        text = run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=self.base)
        raw = text.encode()
        (self.packages_dir / "Packages").write_bytes(raw)
        (self.packages_dir / "Packages.gz").write_bytes(gzip.compress(raw, 9, mtime=0))
        (self.packages_dir / "Packages.xz").write_bytes(lzma.compress(raw))
        if by_hash:
            self._by_hash(self.packages_dir)
        self.release(by_hash=by_hash, sign=sign, inrelease=inrelease)

    def _by_hash(self, directory: Path) -> None:
        dest = directory / "by-hash" / "SHA256"
        dest.mkdir(parents=True, exist_ok=True)
        for f in directory.iterdir():
            if f.is_file():
                shutil.copyfile(f, dest / hashlib.sha256(f.read_bytes()).hexdigest())

    def release(self, by_hash: bool = True, sign: bool = True, inrelease: bool = True) -> None:
        opts = [f"-oAPT::FTPArchive::Release::{k}={v}" for k, v in {
            "Origin": "Beiran", "Label": "Beiran Test", "Suite": self.suite, "Codename": self.suite,
            "Architectures": ARCH, "Components": self.component,
            "Description": "Beiran test archive"}.items()]
        opts += ["-oAPT::FTPArchive::SHA512=false", "-oAPT::FTPArchive::SHA1=false"]
        if by_hash:
            opts.append("-oAPT::FTPArchive::Release::Acquire-By-Hash=yes")
        for name in ("InRelease", "Release", "Release.gpg"):
            (self.dists / name).unlink(missing_ok=True)
        text = run(["apt-ftparchive", *opts, "release", "."], cwd=self.dists)
        # by-hash copies are reachable only through their hash; apt-ftparchive lists them anyway
        text = "\n".join(line for line in text.splitlines() if "/by-hash/" not in line) + "\n"
        (self.dists / "Release").write_text(text)
        if sign:
            if inrelease:
                self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA256", "--clearsign",
                          "-o", str(self.dists / "InRelease"), str(self.dists / "Release"))
            self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA256", "-abs",
                      "-o", str(self.dists / "Release.gpg"), str(self.dists / "Release"))
            self._stop_agent()

    def expected(self, *names: str) -> dict[str, str]:
        """File name -> sha256 of these packages' .debs, as AptClient.debs() reports them."""
        return {self.packages[n].filename: self.packages[n].sha256 for n in names}

    def packages_hash(self, name: str = "Packages.xz") -> str:
        """SHA256 of an index file, as its by-hash name."""
        return hashlib.sha256((self.packages_dir / name).read_bytes()).hexdigest()

    def source_line(self, url: str, signed: bool = True) -> str:
        """`url` is what apt should use for the archive base (origin, or a proxy mirror path)."""
        opt = f"[signed-by={self.keyring}] " if signed else "[trusted=yes] "
        return f"deb {opt}{url.rstrip('/')}/{self.name} {self.suite} {self.component}"

    def url_path(self, rel: str) -> str:
        """The server path of a file relative to the archive base."""
        return f"/{self.name}/{rel.lstrip('/')}"


def build_deb(out: Path, name: str, version: str = "1.0", depends: str | None = None, payload: int = 2048,
              seed: int = 0, compress: str = "gzip", build_dir: Path | None = None,
              fields: dict[str, str] | None = None) -> Path:
    """A real .deb (dpkg-deb) with a control file and `payload` bytes under /usr/share/<name>/."""
    src = (build_dir or out.parent) / f".build-{name}_{version}-{seed}"
    if src.exists():
        shutil.rmtree(src)
    (src / "DEBIAN").mkdir(parents=True)
    control = {"Package": name, "Version": version, "Architecture": "all",
               "Maintainer": "Beiran Tests <tests@beiran.test>", "Description": f"test package {name}",
               "Section": "misc", "Priority": "optional"}
    if depends:
        control["Depends"] = depends
    control.update(fields or {})
    (src / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    share = src / "usr" / "share" / name
    share.mkdir(parents=True)
    (share / "payload").write_bytes(_noise(payload, f"{name}-{version}-{seed}"))
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "--root-owner-group", f"-Z{compress}", "--build", str(src), str(out)])
    shutil.rmtree(src)
    return out


def _noise(size: int, seed: str) -> bytes:
    """Incompressible, deterministic bytes: a .deb of `size` payload is about `size` long."""
    return random.Random(seed).randbytes(size)


def build_repo(root: Path, count: int = 20, payload: int = 4096) -> AptRepo:
    """`count` packages: hello (depends on libhello), libhello, and pkg03..pkgNN."""
    repo = AptRepo(root)
    repo.add("libhello", payload=payload, seed=1)
    repo.add("hello", depends="libhello (>= 1.0)", payload=payload, seed=2)
    for i in range(3, count + 1):
        repo.add(f"pkg{i:02d}", payload=payload, seed=i)
    repo.build()
    return repo


# -- the server --------------------------------------------------------------------------------
class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-answer (proxies do) is not worth a traceback."""


class RepoServer:
    """Serves a directory over HTTP or HTTPS, counting requests per path and answers per status."""

    def __init__(self, root: Path, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None,
                 port: int = 0) -> None:
        self.root = root
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.fail: dict[str, int] = {}  # path (or "*") -> status to answer
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
                with server.lock:
                    server.statuses[(path, status)] += 1
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                path = unquote(self.path.split("?")[0])
                with server.lock:
                    server.requests[path] += 1
                status = server.fail.get(path) or server.fail.get("*")
                if status:
                    self._answer(path, status)
                    return
                f = server.root / path.lstrip("/")
                if ".." in path.split("/") or not f.is_file():
                    self._answer(path, 404)
                    return
                st = f.stat()
                mtime = int(st.st_mtime)
                ims = self.headers.get("If-Modified-Since")
                if ims:
                    try:
                        if int(email.utils.parsedate_to_datetime(ims).timestamp()) >= mtime:
                            self._answer(path, 304)
                            return
                    except (TypeError, ValueError):
                        pass
                start, end = 0, st.st_size
                rng = self.headers.get("Range")
                m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
                headers = {"Last-Modified": email.utils.formatdate(mtime, usegmt=True),
                           "Content-Type": "application/octet-stream"}
                code = 200
                if m and int(m.group(1)) < st.st_size:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1, st.st_size) if m.group(2) else st.st_size
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{st.st_size}"
                    code = 206
                headers["Content-Length"] = str(end - start)
                with server.lock:
                    server.statuses[(path, code)] += 1
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if head:
                    return
                with open(f, "rb") as fh:
                    fh.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = fh.read(min(1 << 20, left))
                        try:
                            self.wfile.write(chunk)
                        except OSError:
                            return
                        left -= len(chunk)

        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.running = False

    def start(self) -> RepoServer:
        self.thread.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()

    def count(self, suffix: str = ".deb", status: int | None = None) -> int:
        """Requests for paths ending in `suffix` (answered with `status`, when given)."""
        with self.lock:
            if status is None:
                return sum(n for p, n in self.requests.items() if p.endswith(suffix))
            return sum(n for (p, s), n in self.statuses.items() if p.endswith(suffix) and s == status)

    def debs_served(self) -> Counter[str]:
        """How many times each .deb was sent in full or in part (200/206)."""
        with self.lock:
            out: Counter[str] = Counter()
            for (p, s), n in self.statuses.items():
                if p.endswith(".deb") and s in (200, 206):
                    out[p.rsplit("/", 1)[-1]] += n
            return out

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
