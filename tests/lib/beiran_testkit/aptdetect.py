"""How other hosts find an apt proxy, with the real tools, run inside a test's network namespace.

- Debian's `auto-apt-proxy`: downloaded once with `apt-get download` into the test cache and
  unpacked there (never installed: an installed one makes every apt-get on the machine probe for
  proxies). It is run with a private /etc/resolv.conf (a resolver on 127.0.0.1 of its namespace,
  which refuses at once) and a host name without a domain, so its DNS SRV and `apt-proxy` host
  lookups end at once inside the namespace instead of reaching for the machine's resolver; and with
  an APT_CONFIG that keeps the machine's apt.conf.d out of its apt-helper.
- A python-zeroconf browser (`mdns_browse.py`, run as a script in a namespace): what
  squid-deb-proxy-client's avahi-browse does, reporting the services and addresses it resolved.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from beiran_testkit.netns import Host
from beiran_testkit.verdaccio import cache_root

PACKAGE = "auto-apt-proxy"
BROWSE_SCRIPT = Path(__file__).with_name("mdns_browse.py")


def fetch_auto_apt_proxy() -> Path:
    """The unpacked `auto-apt-proxy` script (fetched from the Debian mirror on first use, under a
    lock: parallel runs share the cache). Fails the test, naming the cause, when it cannot be had."""
    root = cache_root() / PACKAGE
    script = root / "unpacked" / "usr" / "bin" / PACKAGE
    if script.exists():
        return script
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if script.exists():
            return script
        work = root / f".work.{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            proc = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", PACKAGE],
                                  cwd=work, capture_output=True, text=True, timeout=300)
            debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
            if proc.returncode != 0 or not debs:
                pytest.fail(f"`apt-get download {PACKAGE}` failed ({proc.returncode}): the test needs Debian's "
                            f"{PACKAGE} from the configured mirror (run `apt-get update` first?)\n"
                            f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}", pytrace=False)
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(work / "unpacked")], check=True,
                           capture_output=True, timeout=60)
            shutil.rmtree(root / "unpacked", ignore_errors=True)
            os.replace(work / "unpacked", root / "unpacked")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return script


@pytest.fixture(scope="session")
def auto_apt_proxy() -> Path:
    return fetch_auto_apt_proxy()


def run_auto_apt_proxy(script: Path, host: Host, workdir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run stock auto-apt-proxy in `host`'s namespace, uncached (AUTO_APT_PROXY_NO_CACHE); its
    stdout is the proxy URL it detected, empty for none."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp, parts = workdir / "tmp", workdir / "apt.conf.d"
    tmp.mkdir(exist_ok=True)
    parts.mkdir(exist_ok=True)
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    apt_conf = workdir / "apt.conf"
    apt_conf.write_text(f'Dir::Etc::main "/dev/null";\nDir::Etc::parts "{parts}";\nAPT::Sandbox::User "root";\n')
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"AUTO_APT_PROXY_NO_CACHE": "1", "TMPDIR": str(tmp), "APT_CONFIG": str(apt_conf),
                "LC_ALL": "C"})
    # without /etc/resolv.conf glibc asks 127.0.0.1 anyway
    inner = (f'if [ -e /etc/resolv.conf ]; then mount --bind "{resolv}" /etc/resolv.conf || exit 97; fi; '
             f'hostname beiran-aap-test || exit 97; exec sh "{script}"')
    return subprocess.run(["nsenter", f"--net={host.path}", "--", "unshare", "--mount", "--uts", "--",
                           "sh", "-c", inner], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def mdns_browse(host: Host, types: list[str], expect: list[str], absent: list[str], timeout: float = 20,
                linger: float = 1.0) -> dict[str, Any]:
    """Browse `types` from inside `host` until every service named in `expect` resolved (plus
    `linger` s), then ask for each name in `absent` directly. Returns {"services": {name: {...}},
    "absent": {name: resolved-or-None}}."""
    args = [sys.executable, str(BROWSE_SCRIPT), "--interface", host.ip, "--timeout", str(timeout),
            "--linger", str(linger)]
    for t in types:
        args += ["--type", t]
    for name in expect:
        args += ["--expect", name]
    for name in absent:
        args += ["--absent", name]
    proc = subprocess.run(["nsenter", f"--net={host.path}", "--", *args], capture_output=True, text=True,
                          timeout=timeout + 30, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"mdns_browse failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)
