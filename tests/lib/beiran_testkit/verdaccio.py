"""A real npm registry for tests: verdaccio on loopback (put beiran_testkit.counting_proxy in front of
it to count and break things), test packages made and published by the tests, and `npm` runs with a
fresh cache and config.

verdaccio is installed once into a cache dir (~10 s) keyed by its version and reused by later runs:
$BEIRAN_TEST_CACHE, else ~/.cache/beiran-test. 6.8.0 is the newest that runs on Node 20, and it only
installs with node-fetch pinned to 2.7.0 (see shared/lab-notes.md).
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from beiran_testkit.counting_proxy import free_port
from beiran_testkit.procs import stop_process

VERDACCIO_VERSION = "6.8.0"
NPMRC_DEFAULTS = {"audit": "false", "fund": "false", "update-notifier": "false", "loglevel": "warn",
                  "fetch-retries": "0", "progress": "false"}


def cache_root() -> Path:
    return Path(os.environ.get("BEIRAN_TEST_CACHE") or Path.home() / ".cache" / "beiran-test")


def have_npm() -> bool:
    return shutil.which("npm") is not None and shutil.which("node") is not None


def install_verdaccio(version: str = VERDACCIO_VERSION) -> Path:
    """The verdaccio executable, installed on first use (under a lock: parallel runs share it)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"verdaccio-{version}"
    exe = final / "node_modules" / ".bin" / "verdaccio"
    if exe.exists():
        return exe
    with open(root / f".verdaccio-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():
            return exe
        work = root / f".verdaccio-{version}.{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / "package.json").write_text(json.dumps({
            "name": "beiran-test-verdaccio", "version": "1.0.0", "private": True,
            "dependencies": {"verdaccio": version}, "overrides": {"node-fetch": "2.7.0"}}))
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                               "--cache", str(work / ".npm-cache")], cwd=work, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"installing verdaccio {version} failed:\n{proc.stdout}\n{proc.stderr}")
        shutil.rmtree(work / ".npm-cache", ignore_errors=True)
        os.replace(work, final)
    return exe


# -- packages ------------------------------------------------------------------------------------
def make_tarball(name: str, version: str, deps: dict[str, str] | None = None,
                 files: dict[str, bytes] | None = None, extra: dict[str, Any] | None = None) -> bytes:
    """An npm package tarball (package/package.json + files), byte-for-byte reproducible."""
    manifest = {"name": name, "version": version, "main": "index.js", "license": "MIT",
                "dependencies": deps or {}, **(extra or {})}
    content = {"package.json": json.dumps(manifest, indent=2).encode(),
               "index.js": f"module.exports = {json.dumps(name + '@' + version)};\n".encode(),
               **(files or {})}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in sorted(content.items()):
            info = tarfile.TarInfo(f"package/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def sri512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@dataclass
class Published:
    name: str
    version: str
    tarball: bytes
    deps: dict[str, str] = field(default_factory=dict)

    @property
    def integrity(self) -> str:
        return sri512(self.tarball)

    @property
    def digest(self) -> str:
        return "sha512:" + hashlib.sha512(self.tarball).hexdigest()

    @property
    def file(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


# -- verdaccio -----------------------------------------------------------------------------------
class Verdaccio:
    def __init__(self, base: Path, host: str = "127.0.0.1") -> None:
        self.base = base
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.published: dict[tuple[str, str], Published] = {}

    def start(self, timeout: float = 60) -> Verdaccio:
        exe = install_verdaccio()
        self.base.mkdir(parents=True, exist_ok=True)
        storage = self.base / "storage"
        storage.mkdir(exist_ok=True)
        (self.base / "config.yaml").write_text("\n".join([
            f"storage: {storage}",
            "auth:", "  htpasswd:", f"    file: {self.base / 'htpasswd'}", "    max_users: 100",
            "uplinks: {}",
            "packages:",
            "  '@*/*':", "    access: $all", "    publish: $authenticated", "    unpublish: $authenticated",
            "  '**':", "    access: $all", "    publish: $authenticated", "    unpublish: $authenticated",
            "middlewares:", "  audit:", "    enabled: false",
            "server:", "  keepAliveTimeout: 5",
            "max_body_size: 100mb",
            "log: {type: stdout, format: pretty, level: http}",
            f"listen: {self.host}:{self.port}", ""]))
        log = open(self.base / "verdaccio.log", "ab")
        self.proc = subprocess.Popen([str(exe), "--config", str(self.base / "config.yaml")], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"verdaccio exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"verdaccio did not start in {timeout}s: {self.log()[-2000:]}")
        self.token = self.add_user("beiran", "beiran-test-pw")
        return self

    def log(self) -> str:
        p = self.base / "verdaccio.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 10)

    def _call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"verdaccio {method} {path}: {exc.code} {exc.read()[:300]!r}") from None

    def add_user(self, name: str, password: str) -> str:
        answer = self._call("PUT", f"/-/user/org.couchdb.user:{name}",
                            {"name": name, "password": password, "type": "user"}, token="-")
        return answer["token"]

    def publish(self, name: str, version: str, deps: dict[str, str] | None = None, tag: str = "latest",
                files: dict[str, bytes] | None = None, sha1_only: bool = False) -> Published:
        """What `npm publish` sends (PUT /<name> with the tarball attached), without npm's start-up."""
        tarball = make_tarball(name, version, deps, files)
        unscoped = name.rsplit("/", 1)[-1]
        dist: dict[str, Any] = {"shasum": hashlib.sha1(tarball).hexdigest(),
                                "tarball": f"{self.url}/{name}/-/{unscoped}-{version}.tgz"}
        if not sha1_only:
            dist["integrity"] = sri512(tarball)
        doc = {"_id": name, "name": name, "dist-tags": {tag: version},
               "versions": {version: {"name": name, "version": version, "dependencies": deps or {},
                                      "main": "index.js", "license": "MIT", "_id": f"{name}@{version}",
                                      "dist": dist}},
               "_attachments": {f"{unscoped}-{version}.tgz": {
                   "content_type": "application/octet-stream", "length": len(tarball),
                   "data": base64.b64encode(tarball).decode()}}}
        self._call("PUT", "/" + quote(name, safe="@"), doc)
        pub = Published(name, version, tarball, deps or {})
        self.published[(name, version)] = pub
        return pub

    def npm_publish(self, workdir: Path, name: str, version: str, deps: dict[str, str] | None = None) -> Published:
        """A real `npm publish` of a package made in `workdir`."""
        pkg = workdir / f"src-{name.replace('/', '_')}-{version}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "package.json").write_text(json.dumps({"name": name, "version": version, "main": "index.js",
                                                      "license": "MIT", "dependencies": deps or {}}))
        (pkg / "index.js").write_text(f"module.exports = {json.dumps(name + '@' + version)};\n")
        npmrc = workdir / "publish.npmrc"
        write_npmrc(npmrc, self.url + "/", token=self.token)
        proc = subprocess.run(["npm", "publish", "--userconfig", str(npmrc), "--cache", str(workdir / "cache")],
                              cwd=pkg, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"npm publish {name}@{version} failed: {proc.stderr[-2000:]}")
        tarball = self.tarball(name, version)
        pub = Published(name, version, tarball, deps or {})
        self.published[(name, version)] = pub
        return pub

    def tarball(self, name: str, version: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz",
                                    timeout=30) as r:
            return r.read()

    def dist_tag(self, name: str, tag: str, version: str) -> None:
        self._call("PUT", f"/-/package/{quote(name, safe='@')}/dist-tags/{tag}", version)


# -- npm -----------------------------------------------------------------------------------------
def write_npmrc(path: Path, registry: str, token: str | None = None, **extra: str) -> Path:
    settings = {"registry": registry, **NPMRC_DEFAULTS, **extra}
    lines = [f"{k}={v}" for k, v in settings.items()]
    if token:
        host = registry.split("://", 1)[1].rstrip("/")
        lines.append(f"//{host}/:_authToken={token}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_project(path: Path, deps: dict[str, str], name: str = "beiran-test-project") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "package.json").write_text(json.dumps({"name": name, "version": "1.0.0", "private": True,
                                                   "dependencies": deps}, indent=2))
    return path


def npm(args: list[str], cwd: Path, registry: str, cache: Path, timeout: float = 240,
        check: bool = True, npmrc: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run npm with its own npmrc (next to cwd) and cache: nothing of the machine's npm config is used."""
    rc = write_npmrc(cwd.parent / f".npmrc-{cwd.name}", registry, **(npmrc or {}))
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env.update({"npm_config_userconfig": str(rc), "npm_config_globalconfig": str(rc) + ".global",
                "NO_UPDATE_NOTIFIER": "1"})
    proc = subprocess.run(["npm", *args, "--userconfig", str(rc), "--cache", str(cache)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"npm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def installed_tree(project: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under node_modules (what npm unpacked)."""
    out = {}
    root = project / "node_modules"
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".package-lock.json" not in p.name and ".bin" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def lock_packages(project: Path) -> dict[str, dict[str, Any]]:
    """package-lock.json's node_modules/... entries."""
    lock = json.loads((project / "package-lock.json").read_text())
    return {k: v for k, v in lock["packages"].items() if k}


# -- the npm plugin's test packages and daemon config --------------------------------------------
ALPHA = "beiran-test-alpha"
SCOPED = "@beiran-test/scoped"
UTIL = "@beiran-test/util"
BIG = "beiran-test-big"
LEGACY = "beiran-test-legacy"
OTHER_PLUGINS = ("apt", "dns", "docker", "k8s", "zeroconf")


@dataclass
class NpmRegistry:
    verdaccio: Verdaccio
    packages: dict[tuple[str, str], Published] = field(default_factory=dict)
    #: the 30-package project's direct dependencies (20; the first 10 pull in the other 10)
    project30: dict[str, str] = field(default_factory=dict)

    def pub(self, name: str, version: str) -> Published:
        return self.packages[(name, version)]

    def by_file(self) -> dict[str, Published]:
        return {p.file: p for p in self.packages.values()}

    def digests(self) -> set[str]:
        return {p.digest for p in self.packages.values()}


def publish_test_packages(v: Verdaccio, workdir: Path) -> NpmRegistry:
    """Unscoped and scoped packages, several versions, dist-tags, dependencies, one 6 MiB tarball,
    one with only a sha1 shasum, and the 30 packages of `project30`."""
    import random

    rnd = random.Random(8)
    for version in ("1.0.0", "1.1.0", "1.2.0", "2.0.0"):
        v.publish(ALPHA, version)
    v.publish(ALPHA, "3.0.0-beta.1", tag="next")
    v.npm_publish(workdir, SCOPED, "1.0.0", {ALPHA: "^1.0.0"})  # a real `npm publish`
    v.publish(UTIL, "1.0.0")
    v.publish(UTIL, "1.1.0", deps={ALPHA: "~1.1.0"})
    v.publish(BIG, "1.0.0", files={"blob.bin": rnd.randbytes(6 << 20)})
    v.publish(LEGACY, "1.0.0", sha1_only=True)
    for i in range(1, 31):
        deps = {f"beiran-test-p{i + 20:02d}": "^1.0.0"} if i <= 10 else {}
        v.publish(f"beiran-test-p{i:02d}", "1.0.0", deps=deps,
                  files={"data.txt": rnd.randbytes(2048 + 97 * i).hex().encode()})
    return NpmRegistry(v, dict(v.published), {f"beiran-test-p{i:02d}": "^1.0.0" for i in range(1, 21)})


def npm_daemon_config(upstream_url: str, **npm_settings: Any) -> dict[str, Any]:
    """Daemon config with only the npm plugin enabled, proxying `upstream_url`."""
    plugins: dict[str, Any] = {name: {"enabled": False} for name in OTHER_PLUGINS}
    plugins["npm"] = {"upstream": upstream_url, "metadata_ttl": 0, **npm_settings}
    return {"plugins": plugins}
