"""`preheat --with-deps` against the real thing: this machine's Debian indexes (read-only, from
/var/lib/apt/lists) resolved by the daemon's resolver, and the real apt-get's own plan for the same
packages (`-s`, in a private APT_CONFIG that never touches the machine's apt state). They must match
package for package: on an empty system (--include-required) and on the base system, as apt itself
lays it down from every Essential/required package."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from beiran_testkit.aptindex import IndexRows

LISTS = Path("/var/lib/apt/lists")
SOURCES = Path("/etc/apt/sources.list.d")
PACKAGES = ["nginx", "build-essential"]  # each apt-get -s over the full lists takes ~2 s of CPU
_FILES = sorted(LISTS.glob("*_Packages*")) if LISTS.is_dir() else []
pytestmark = pytest.mark.skipif(not _FILES or not SOURCES.is_dir(),
                                reason="no Debian package lists on this machine (run apt-get update once)")


def _apt(tmp: Path) -> tuple[dict[str, str], Path]:
    state = tmp / "state"
    (state / "lists").mkdir(parents=True)
    for f in _FILES:
        (state / "lists" / f.name).symlink_to(f)
    status = state / "status"
    status.touch()
    for d in ("cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d", "log"):
        (tmp / d).mkdir(parents=True)
    conf = {"Dir::Etc::main": "/dev/null", "Dir::Etc::parts": tmp / "etc/apt.conf.d",
            "Dir::Etc::sourcelist": "/dev/null", "Dir::Etc::sourceparts": SOURCES,
            "Dir::Etc::preferences": tmp / "etc/preferences", "Dir::Etc::preferencesparts": tmp / "etc/preferences.d",
            "Dir::State": state, "Dir::State::status": status, "Dir::Cache": tmp / "cache", "Dir::Log": tmp / "log",
            "APT::Sandbox::User": "root"}
    (tmp / "apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in conf.items()))
    return {**os.environ, "APT_CONFIG": str(tmp / "apt.conf"), "LC_ALL": "C"}, status


def _plan(env: dict[str, str], *packages: str) -> dict[str, str]:
    """apt-get's own choice: package -> version it would download (new installs and upgrades)."""
    proc = subprocess.run(["apt-get", "-s", "-q", "install", "--no-install-recommends", *packages], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["Inst"] and not parts[2].startswith("["):  # not a reinstall of the same version
            out[parts[1]] = parts[2].lstrip("(")
    return out


@pytest.mark.slow
def test_the_closure_is_what_apt_get_itself_would_download_on_debians_own_indexes(tmp_path):
    from beiran_plugins.apt import depends, trust
    from beiran_plugins.apt.preheat import Spec, native_arch, pick

    arch = native_arch()
    rows = [{**r, "base": f.name.split("_dists_")[0]}
            for f in _FILES for r in trust.parse_packages(f, f.name.rsplit("_", 1)[-1], tmp_path)]
    index = IndexRows(rows)
    env, status = _apt(tmp_path / "apt")

    def ours(name: str, include_required: bool) -> dict[str, str]:
        root = pick(Spec(name, None), [r for r in index.by_name[name] if r["arch"] in (arch, "all")])
        assert root is not None, name
        out = asyncio.run(depends.closure(index, [root], arch, 512, include_required))
        assert out.unresolved == [], out.unresolved
        return {root["package"]: root["version"], **{r["package"]: r["version"] for r in out.added}}

    everything = {name: ours(name, True) for name in PACKAGES}
    for name in PACKAGES:  # an empty system: everything
        assert everything[name] == _plan(env, name), name
    base = _plan(env, *sorted({r["package"] for r in rows if r["required"] and r["arch"] in (arch, "all")}))
    arch_of = {(r["package"], r["version"]): r["arch"] for r in rows}
    status.write_text("".join(f"Package: {n}\nStatus: install ok installed\nVersion: {v}\nArchitecture: "
                              f"{arch_of.get((n, v), arch)}\nMaintainer: x\nDescription: x\n\n"
                              for n, v in base.items()))
    for name in PACKAGES:  # the base system every Debian machine has: left out
        plan = _plan(env, name)
        assert ours(name, False) == plan and len(plan) < len(everything[name]), name
