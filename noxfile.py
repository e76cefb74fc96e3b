"""Build, lint and test Beiran: `nox` runs lint, build and one test session per distribution.

    nox                      # everything (what scripts/test and CI run)
    nox -s build             # the seven wheels into dist/
    nox -s lint
    nox -s typecheck         # mypy: strict on beiran/, checked on beiran_plugins/ (config: pyproject.toml)
    nox -s "tests(npm)"      # core wheel + beiran-npm wheel only: tests/core (each_plugin) + tests/plugins/npm
    nox -t tests             # every test session
    nox -s "tests(dns)" -- -k heartbeat -x     # extra arguments go to pytest
    nox -s "tests(integration)"   # every wheel at once: tests/integration (plugins together)
    nox -s bench -- docker_pull   # one bench/ script, every wheel installed

Each test session installs wheels from dist/ (never the source tree) into a fresh venv and runs
pytest from a scratch directory, so `beiran_plugins` holds exactly the plugins that session
installed. The apt session runs on Debian's /usr/bin/python3 with system site packages, where
python3-apt (`apt_pkg`) lives.

`typecheck` runs mypy over the source tree (not the wheels) in a venv holding the run-time
dependencies of the core and of every plugin (read from their pyproject.toml files) plus the
typeshed stubs of those that ship none. Which modules are strict and which are relaxed "to tighten"
is in `[tool.mypy]` of pyproject.toml, so `mypy` run by hand checks the same.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
DIST = ROOT / "dist"
PLUGINS = ["docker", "apt", "npm", "dns", "zeroconf", "k8s"]
#: plugins whose wheel depends on another plugin's wheel
PLUGIN_DEPENDS = {"k8s": ["docker"]}
#: what every test venv gets besides the wheels
TEST_TOOLS = ["pytest>=8", "pytest-timeout", "pytest-xdist>=3.5"]
#: pytest-xdist workers for a whole test session (BEIRAN_TEST_WORKERS overrides; 0 runs in-process).
#: The suite mostly waits (on daemons starting, peers, clients, timeouts), not computes: tests(core)
#: used ~210 s of CPU in ~400 s of wall time on one worker, so on two cores three workers overlap
#: the waits. Every test already runs on its own 127.x subnet, ports, data dirs and namespaces.
TEST_WORKERS = 3
DEBIAN_PYTHON = "/usr/bin/python3"
#: sources that go into each wheel (a wheel older than any of them is rebuilt)
SOURCE_SUFFIXES = {".py", ".proto", ".json", ".toml", ".html", ".js", ".css"}

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "build", "tests", "tests(apt)", "tests(integration)"]
nox.options.reuse_venv = "no"
_LOCK_FD: int | None = None


def _lock_checkout() -> None:
    """One nox run at a time per checkout: two would recreate each other's venvs under .nox/ and
    rebuild dist/ under each other's tests. A second run waits for the first."""
    global _LOCK_FD
    if any(a in ("-l", "--list", "--list-sessions") for a in sys.argv[1:]):
        return
    (ROOT / ".nox").mkdir(exist_ok=True)
    fd = os.open(ROOT / ".nox" / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        print(f"nox: another nox run (pid {holder}) is using {ROOT}; waiting for it to finish",
              file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCK_FD = fd  # held until this process exits


_lock_checkout()


def _project_dir(dist: str) -> Path:
    return ROOT if dist == "core" else ROOT / "beiran_plugins" / dist


def _wheel_glob(dist: str) -> str:
    return "beiran-[0-9]*.whl" if dist == "core" else f"beiran_{dist}-[0-9]*.whl"


def _find_wheel(dist: str) -> Path | None:
    found = sorted(DIST.glob(_wheel_glob(dist)), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _sources(dist: str) -> list[Path]:
    if dist == "core":
        files = [ROOT / "pyproject.toml", ROOT / "README.md"]
        files += (ROOT / "beiran").rglob("*")
    else:
        files = list(_project_dir(dist).rglob("*"))
    return [f for f in files if f.is_file() and f.suffix in SOURCE_SUFFIXES | {".md"}
            and "__pycache__" not in f.parts]


def _stale(dist: str) -> bool:
    wheel = _find_wheel(dist)
    if wheel is None:
        return True
    built = wheel.stat().st_mtime
    return any(f.stat().st_mtime > built for f in _sources(dist))


def _uv(session: nox.Session) -> None:
    """Make `uv` runnable in this session (the uv backend provides it already)."""
    if session.venv_backend != "uv" and not shutil.which("uv", path=session.bin):
        session.install("uv")


def _build(session: nox.Session, dists: list[str]) -> None:
    _uv(session)
    DIST.mkdir(exist_ok=True)
    for dist in dists:
        for old in DIST.glob(_wheel_glob(dist)):
            old.unlink()
        session.run("uv", "build", "--wheel", "--out-dir", str(DIST), str(_project_dir(dist)))
        if _find_wheel(dist) is None:
            session.error(f"building {dist} produced no wheel in {DIST}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over the code, the tests, the benchmarks and this file."""
    session.install("ruff")
    targets = [t for t in ("beiran", "beiran_plugins", "tests", "bench", "noxfile.py") if (ROOT / t).exists()]
    # Extension-less Python scripts are not picked up from a directory: name them.
    targets += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "bench").glob("*"))
                if p.is_file() and not p.suffix and p.read_bytes()[:64].startswith(b"#!")
                and b"python" in p.read_bytes().split(b"\n", 1)[0]]
    session.run("ruff", "check", *targets, *session.posargs)


#: typeshed stubs for dependencies that ship no types of their own (the type checker's only;
#: peewee ships its own, and types-peewee would replace them with older ones: see pyproject.toml)
TYPE_STUBS = ["types-docker", "types-grpcio", "types-protobuf"]


def _runtime_dependencies() -> list[str]:
    """What the core's and every plugin's wheel needs at run time, minus the beiran wheels
    themselves (mypy reads those from the source tree)."""
    deps: list[str] = []
    for dist in ["core", *PLUGINS]:
        project = tomllib.loads((_project_dir(dist) / "pyproject.toml").read_text())["project"]
        deps += [d for d in project.get("dependencies", []) if not d.lower().startswith("beiran")]
    return sorted(set(deps))


@nox.session(python=DEBIAN_PYTHON, venv_params=["--system-site-packages"])
def typecheck(session: nox.Session) -> None:
    """mypy over beiran/ (strict) and beiran_plugins/ (checked); Debian's Python, whose system
    site packages hold python3-apt and its stubs."""
    session.install("mypy>=1.13", *TYPE_STUBS, *_runtime_dependencies())
    session.run("mypy", *session.posargs, env=_clean_env())


@nox.session
def build(session: nox.Session) -> None:
    """All seven wheels into a clean dist/."""
    if DIST.exists():
        shutil.rmtree(DIST)
    _build(session, ["core", *PLUGINS])
    wheels = sorted(p.name for p in DIST.glob("*.whl"))
    session.log("built: " + " ".join(wheels))
    if len(wheels) != 1 + len(PLUGINS):
        session.error(f"expected {1 + len(PLUGINS)} wheels in dist/, got {wheels}")


def _clean_env() -> dict[str, str | None]:
    """Drop what could point the tests back at the source tree or at someone's daemon/config:
    PYTHONPATH and every BEIRAN_* variable of the calling shell (None unsets it for nox)."""
    env: dict[str, str | None] = {}
    env.update({k: None for k in os.environ if k == "PYTHONPATH" or k.startswith("BEIRAN_")})
    return env


CHECK_NAMESPACE = """\
import importlib, pkgutil, sys
import beiran
expected = sorted(sys.argv[2:])
try:
    names = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module("beiran_plugins").__path__))
except ImportError:
    names = []
print("beiran from", beiran.__file__, "- beiran_plugins holds", names)
if names != expected:
    sys.exit(f"beiran_plugins holds {names}, expected {expected}: something leaks the source tree in")
if beiran.__file__.startswith(sys.argv[1]):
    sys.exit("beiran is imported from the source tree, not from the installed wheel")
"""


def _check_namespace(session: nox.Session, expected: list[str], cwd: Path) -> None:
    """The venv sees exactly the plugins installed into it, and beiran from site-packages."""
    script = cwd / "check_namespace.py"
    script.write_text(CHECK_NAMESPACE)
    with session.chdir(cwd):
        session.run("python", script.name, str(ROOT / "beiran"), *expected, env=_clean_env())
    script.unlink()


def _install(session: nox.Session, plugins: list[str]) -> None:
    """The core wheel and these plugins' wheels, pytest and the test-only tools they need
    (tests/requirements.txt, tests/plugins/<name>/requirements.txt) into the session's venv."""
    # every stale wheel, not only these: tests/core/test_packaging.py checks all seven
    stale = [d for d in ["core", *PLUGINS] if _stale(d)]
    if stale:
        session.log(f"dist/ lacks or has stale wheels for {', '.join(stale)}: building them")
        _build(session, stale)
    reqs = [ROOT / "tests" / "requirements.txt", *(ROOT / "tests" / "plugins" / p / "requirements.txt"
                                                   for p in plugins)]
    extra = [arg for r in reqs if r.is_file() for arg in ("-r", str(r))]
    # Compiled at install time: PYTHONDONTWRITEBYTECODE=1 (set on this machine and in CI) stops
    # Python writing .pyc on first import, so every daemon, CLI call and pytest worker compiled
    # tornado, peewee, click and beiran from source again: a daemon's start-up cost 0.65 s of CPU
    # instead of 0.25 s, and tests(core) starts ~190 daemons. pip compiles by default; uv needs this.
    session.install(*(str(_find_wheel(d)) for d in ["core", *plugins]), *TEST_TOOLS, *extra,
                    env={"UV_COMPILE_BYTECODE": "1"})
    _sync_wheels(session, ["core", *plugins])


def _sync_wheels(session: nox.Session, dists: list[str]) -> None:
    """Reinstall each of these wheels the venv does not have as built now. `-R` (nox's
    --no-install) skips `session.install`, and a reused venv takes a rebuilt wheel of the same
    version as installed already: either way tests and benches ran the code of the venv's first
    install (a bench comparing a change against main compared main with main). A stamp file in
    the venv names the wheels (file and build time) it last got; `uv pip install` through
    `session.run` runs under -R too."""
    stamp = Path(session.virtualenv.location) / "beiran-wheels.txt"
    had = stamp.read_text().split() if stamp.is_file() else []
    wheels = [w for d in dists if (w := _find_wheel(d)) is not None]
    now = [f"{w.name}@{w.stat().st_mtime_ns}" for w in wheels]
    changed = [str(w) for w, tag in zip(wheels, now, strict=True) if tag not in had]
    if not changed:
        return
    _uv(session)
    session.run("uv", "pip", "install", "--python", str(Path(session.bin) / "python"), "--reinstall",
                "--no-deps", "--quiet", *changed, env={"UV_COMPILE_BYTECODE": "1"}, silent=True)
    kept = [t for t in had if t.split("@", 1)[0] not in {Path(c).name for c in changed}]
    stamp.write_text("\n".join(sorted({*kept, *now})) + "\n")


def _run_tests(session: nox.Session, dist: str) -> None:
    if dist == "core":
        plugins = []
    elif dist == "integration":
        plugins = list(PLUGINS)
    else:
        plugins = [*PLUGIN_DEPENDS.get(dist, []), dist]
    _install(session, plugins)

    # A scratch cwd: neither the repo root (which would put the source beiran_plugins/, with
    # every plugin, on sys.path for `python -c` and subprocesses) nor anything under it.
    # (Not session.create_tmp(): it is under .nox/ and sets TMPDIR there, and unix socket paths
    # under pytest's tmp_path would grow past the 108-byte limit.)
    scratch = Path(tempfile.mkdtemp(prefix=f"beiran-nox-{dist}-"))
    try:
        _check_namespace(session, plugins, scratch)
        _pytest(session, dist, plugins, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pytest(session: nox.Session, dist: str, plugins: list[str], scratch: Path) -> None:
    """tests(core) runs every core test; a plugin's session runs the core tests marked `each_plugin`
    (start-up, plugin discovery, the CLI, the console: what an installed plugin changes) and then all
    of the plugin's own. The rest of the core does not change with a plugin and runs once, in
    tests(core): running it again per plugin doubled CI's time."""
    # (paths, selection, how xdist shares the run out: see _workers)
    runs: list[tuple[list[str], list[str], str]] = []
    if dist == "integration":
        runs.append(([str(ROOT / "tests" / "integration")], [], "worksteal"))
    elif dist == "core":
        runs.append(([str(ROOT / "tests" / "core")], [], "worksteal"))
    else:
        runs.append(([str(ROOT / "tests" / "core")], ["-m", "each_plugin and not slow"], "serial"))
        plugin_tests = ROOT / "tests" / "plugins" / dist
        if plugin_tests.is_dir():
            runs.append(([str(plugin_tests)], [], "loadfile"))
        else:
            session.log(f"{plugin_tests.relative_to(ROOT)} does not exist yet: running the core tests only")
    env = _clean_env()
    env.update({"BEIRAN_DIST": str(DIST), "BEIRAN_TEST_PLUGINS": ",".join(plugins),
                "BEIRAN_TEST_REPO": str(ROOT)})  # the checkout, for the README walk-through's clone
    with session.chdir(scratch):
        for paths, select, share in runs:
            workers, temp = _workers(session.posargs, share), _basetemp(session.posargs)
            # pytest exits 5 when it collected (or kept) no test, e.g. `-k` matching only the
            # other run's tests: not a failure.
            session.run("pytest", "--import-mode=importlib", "-p", "no:cacheprovider", "-ra", *workers, *temp,
                        *paths, *select, *session.posargs, env=env, success_codes=[0, 5])
            if temp:  # kept when the run failed (session.run raised): the daemons' logs are there
                shutil.rmtree(temp[0].removeprefix("--basetemp="), ignore_errors=True)


def _basetemp(posargs: list[str]) -> list[str]:
    """A short `--basetemp` (/tmp/btXXXXXXXX, under which xdist adds popen-gwN/): unix socket
    paths under tmp_path (daemon and CRI sockets, gpg-agent's) must stay under 108 bytes, and
    pytest's /tmp/pytest-of-USER/pytest-NNNN/popen-gwN/ took 41 of them."""
    if any(a.startswith("--basetemp") for a in posargs):
        return []
    return [f"--basetemp={tempfile.mkdtemp(prefix='bt', dir='/tmp')}"]


def _workers(posargs: list[str], share: str) -> list[str]:
    """pytest-xdist options for one pytest run: TEST_WORKERS workers (BEIRAN_TEST_WORKERS=N
    overrides, 0 runs in-process) sharing the tests out by `share`:
    - "worksteal": test by test, an idle worker takes queued tests from a busy one (tests(core),
      tests(integration): independent tests of very different lengths);
    - "loadfile": file by file (a plugin's tests: tests/plugins/k8s sets up three daemons with a
      containerd each per module, and one test there reads what an earlier one pulled);
    - "serial": in-process (the ~20 `each_plugin` core tests: starting workers costs more).
    None when the arguments pick tests (`-k NAME`, a path, a node id), ask for `--pdb` or `-s`,
    or set xdist's own `-n`/`-p`/`--dist`: a dev loop on one test starts no workers.
    (Not `--dist loadgroup`: pytest 9 ignores the node id suffix pytest-xdist 3.8 groups by.)"""
    if any(a in ("-n", "--numprocesses", "-p", "--dist") or a.startswith(("-n", "--numprocesses=", "--dist="))
           for a in posargs):
        return []
    setting = os.environ.get("BEIRAN_TEST_WORKERS", "").strip()
    if setting:
        n = int(setting)
    elif share == "serial" or any(a in ("-k", "--pdb", "-s", "--capture=no") or a.startswith("-k") or "::" in a
                                  or a.startswith(("tests/", "/")) for a in posargs):
        n = 0
    else:
        n = TEST_WORKERS
    return ["-n", str(n), "--dist", "load" if share == "serial" else share] if n > 0 else []


@nox.session(tags=["tests"])
@nox.parametrize("dist", [nox.param(d, id=d) for d in ["core", *(p for p in PLUGINS if p != "apt")]])
def tests(session: nox.Session, dist: str) -> None:
    """Core wheel + one plugin wheel (k8s also gets docker's) in a fresh venv: core + that plugin's tests."""
    _run_tests(session, dist)


@nox.session(name="tests(apt)", python=DEBIAN_PYTHON, venv_params=["--system-site-packages"], tags=["tests"])
def tests_apt(session: nox.Session) -> None:
    """The apt plugin on Debian's Python, whose system site packages hold python3-apt."""
    session.run("python", "-c", "import apt_pkg", silent=True)  # fails loudly when python3-apt is missing
    _run_tests(session, "apt")


@nox.session(python=DEBIAN_PYTHON, venv_params=["--system-site-packages"])
def bench(session: nox.Session) -> None:
    """One benchmark in a venv with all seven wheels and the test kit's tools:
    `nox -s bench -- docker_pull --rounds 3` (no argument: list them)."""
    names = sorted(p.name for p in (ROOT / "bench").iterdir() if p.is_file() and os.access(p, os.X_OK))
    if not session.posargs or session.posargs[0] not in names:
        session.error(f"name a benchmark: nox -s bench -- NAME [ARGS]; NAME is one of {', '.join(names)}")
    _install(session, list(PLUGINS))
    name, *args = session.posargs
    session.run("python", str(ROOT / "bench" / name), *args, env=_clean_env())


@nox.session(name="tests(integration)", python=DEBIAN_PYTHON, venv_params=["--system-site-packages"],
             tags=["tests"])
def tests_integration(session: nox.Session) -> None:
    """Every wheel at once: tests/integration, what plugins show only together (a node found by
    zeroconf, DNS and static config is one node). Debian's Python, for the apt plugin."""
    _run_tests(session, "integration")


if __name__ == "__main__":  # `python noxfile.py` works too
    sys.exit(nox.main())
