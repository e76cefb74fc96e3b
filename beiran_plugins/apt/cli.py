"""`beiran apt ...` commands. Only click and beiran.cli at module top: `beiran --help` stays fast."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from beiran.cli.errors import CLIError
from beiran.cli.output import emit_json, human_size, json_option, table

DEFAULT_LISTEN = "127.0.0.1:3142"
CONF_PATH = "/etc/apt/apt.conf.d/30beiran-proxy"
DETECT_COMMAND = "beiran-apt-proxy-detect"


@click.group(name="apt", short_help="apt proxy: .debs from the cluster.")
def cli() -> None:
    """apt: a proxy whose .debs come from the cluster, verified through apt's signed chain.

    \b
    Point apt at it with `beiran apt configure --write`, or by hand:
      Acquire::http::Proxy "http://127.0.0.1:3142";
    HTTPS sources go through the mirror path instead:
      deb http://127.0.0.1:3142/https/deb.example.org/debian bookworm main

    \b
    Debian's auto-apt-proxy finds the proxy on 127.0.0.1:3142 and on the
    default gateway's port 3142. It is announced over mDNS as _apt_proxy._tcp
    (squid-deb-proxy-client) only where other hosts can use it: on addresses it
    listens on that client_cidrs admit; never when it listens on loopback.
    """


def _client() -> Any:
    from beiran.cli.main import client

    return client()


# -- finding the proxy ---------------------------------------------------------------------------
def proxy_url(listen: str | None = None) -> str:
    """The local proxy's URL from [plugins.apt] listen (0.0.0.0 means: ask on loopback)."""
    if listen is None:
        from beiran.config import load_config
        from beiran.errors import ConfigError

        try:  # no config file is fine (the default applies); a broken one is not (proxy-detect goes DIRECT)
            listen = str(load_config(strict_env=False).plugin_section("apt").get("listen") or DEFAULT_LISTEN)
        except ConfigError as exc:
            raise CLIError(f"{exc.message} (it names the apt proxy's address when no daemon runs)") from None
    from beiran.config import parse_hostport

    host, port = parse_hostport(listen, 3142)
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def proxy_answers(url: str, timeout: float = 0.5) -> bool:
    hostport = url.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET /_beiran/ping HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            data = b""
            while len(data) < 4096 and (chunk := s.recv(4096)):
                data += chunk
        return data.startswith(b"HTTP/1.") and b" 200 " in data[:20] and b'"apt-proxy"' in data
    except (OSError, ValueError):
        return False


def daemon_proxy_url(socket_path: str | None, timeout: float = 2.0) -> tuple[str | None, str]:
    """(the running daemon's proxy URL, "") or (None, why the daemon could not say)."""
    from beiran.cli.client import DaemonClient

    try:
        return str(DaemonClient(socket_path, timeout=timeout).get("/apt/proxy")["url"]), ""
    except CLIError as exc:
        return None, str(exc)
    except (KeyError, TypeError):
        return None, "the daemon's answer had no proxy address"


def find_proxy(listen: str | None, socket_path: str | None) -> tuple[str, str]:
    """(proxy URL, note). The running daemon's address first; the config file's only when no daemon
    answers, and the note then says so (apt pointed at a config nobody runs bypasses Beiran)."""
    if listen:
        return proxy_url(listen), ""
    url, why = daemon_proxy_url(socket_path)
    if url:
        return url, ""
    url = proxy_url()
    return url, f"note: no running daemon said where its apt proxy is ({why}); using {url} from the config file"


@cli.command("proxy-detect", short_help="The proxy URL if it answers, else DIRECT (for apt).")
@click.argument("uri", required=False)
@click.option("--listen", metavar="HOST:PORT",
              help="The proxy address (default: ask the running daemon, else the config file).")
@click.pass_context
def proxy_detect(ctx: click.Context, uri: str | None, listen: str | None) -> None:
    """Print the local proxy URL if it answers, else DIRECT (for Acquire::http::Proxy-Auto-Detect)."""
    click.echo(_detect(uri, listen, (ctx.find_root().obj or {}).get("socket"), verbose=True))


def _detect(uri: str | None, listen: str | None = None, socket_path: str | None = None,
            verbose: bool = False) -> str:
    if uri and not uri.startswith("http://"):
        return "DIRECT"
    try:
        url, note = find_proxy(listen, socket_path)
    except Exception:  # noqa: BLE001 - a broken config must not break apt: go direct
        return "DIRECT"
    if note and verbose:
        click.echo(note, err=True)
    return url if proxy_answers(url) else "DIRECT"


def proxy_detect_main() -> None:
    """`beiran-apt-proxy-detect URI`: apt runs this path directly (it passes no other arguments)."""
    print(_detect(sys.argv[1] if len(sys.argv) > 1 else None))


@cli.command("configure", short_help="Print (or write) apt's configuration for the proxy.")
@click.option("--write", is_flag=True, help=f"Write the snippet to {CONF_PATH} instead of printing it.")
@click.option("--path", "path", default=CONF_PATH, show_default=True, metavar="FILE", help="Where --write puts it.")
@click.pass_context
def configure(ctx: click.Context, write: bool, path: str) -> None:
    """Print (or write) the apt configuration that sends downloads through Beiran (the running
    daemon's proxy address; the config file's when no daemon runs)."""
    detect = shutil.which(DETECT_COMMAND) or str(Path(sys.executable).parent / DETECT_COMMAND)
    url, note = find_proxy(None, (ctx.find_root().obj or {}).get("socket"))
    if note:
        click.echo(note, err=True)
    text = (f"// Beiran apt proxy (`beiran apt configure`): apt asks {DETECT_COMMAND} per connection,\n"
            f"// which answers {url} while the proxy runs and DIRECT otherwise.\n"
            f'Acquire::http::Proxy-Auto-Detect "{detect}";\n'
            "// https:// sources cannot go through a caching proxy: point them at its mirror path, e.g.\n"
            f"//   deb {url}/https/deb.example.org/debian bookworm main\n")
    if not write:
        click.echo(text, nl=False)
        return
    if not Path(path).parent.is_dir():  # a typo'd --path, or no apt here: never a new directory tree
        raise CLIError(f"cannot write {path}: {Path(path).parent} is not a directory "
                       "(is apt installed here? --path names the file to write)")
    try:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror} (run as root?)") from None
    click.echo(f"wrote {path}")


# -- what the node has -----------------------------------------------------------------------------
@cli.command("packages", short_help="The .debs this node (or the cluster) holds.")
@click.option("--all", "show_all", is_flag=True, help="Also the .debs other nodes hold, with the holders.")
@json_option
def packages(show_all: bool, as_json: bool) -> None:
    """The .debs in this node's store (name, version, arch, size, digest)."""
    rows = _client().get("/apt/packages" + ("?all=1" if show_all else ""))["packages"]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["size_h"] = human_size(r.get("size"))
        r["short"] = (r.get("digest") or "")[:19]
        r["holders"] = len(r.get("nodes") or [])
    cols = [("package", "PACKAGE"), ("version", "VERSION"), ("arch", "ARCH"), ("size_h", "SIZE"),
            ("short", "DIGEST")]
    if show_all:
        cols.append(("holders", "NODES"))
    table(rows, cols, empty="(no .debs known)" if show_all else "(no .debs stored)")


@cli.command("sources", short_help="Archives seen through the proxy, and their trust.")
@json_option
def sources(as_json: bool) -> None:
    """The upstream archives seen through the proxy: last index refresh and trust."""
    data = _client().get("/apt/sources")
    rows = data["sources"]
    if as_json:
        emit_json(rows)
        return
    now = data.get("now") or time.time()
    for r in rows:
        age = now - r["last_refresh"] if r.get("last_refresh") else None
        r["refreshed"] = "never" if age is None else f"{int(age)}s ago" if age < 120 else f"{int(age // 60)}m ago"
        r["trust_h"] = r["trust"] + (f" ({r['signer'][-16:]})" if r.get("signer") else
                                     f" (key {r['missing_key'][-16:]})" if r.get("missing_key") else "")
    table(rows, [("key", "ARCHIVE"), ("mode", "MODE"), ("trust_h", "TRUST"), ("packages", "FILES"),
                 ("refreshed", "REFRESHED"), ("last_error", "PROBLEM")], empty="(no archives seen yet)")


# -- preheat ---------------------------------------------------------------------------------------
@cli.command("preheat", short_help="Put packages' .debs on the chosen nodes now.")
@click.argument("packages", nargs=-1, required=True, metavar="PKG[=VERSION]...")
@click.option("--nodes", default="all", show_default=True, metavar="all|UUID,...",
              help="Nodes that fetch now: this node and every online node that runs apt, or UUIDs "
              "(8+ characters each).")
@click.option("--arch", metavar="ARCH", help="Architecture of the .debs (default: this machine's apt "
              "architecture; arch \"all\" packages match any).")
@click.option("--with-deps", is_flag=True, help="Add what the packages depend on (Pre-Depends, Depends; "
              "not Recommends), as apt-get install would download it.")
@click.option("--include-required", is_flag=True, help="With --with-deps: keep the base system (Essential "
              "and Priority: required packages and what they need; left out by default: every Debian "
              "system has them).")
@click.option("--max-packages", metavar="N", help="With --with-deps: refuse if the packages and their "
              "dependencies come to more than N (default and most: 512).")
@click.option("--no-progress", is_flag=True, help="No progress lines.")
@json_option
def preheat(packages: tuple[str, ...], nodes: str, arch: str | None, with_deps: bool, include_required: bool,
            max_packages: str | None, no_progress: bool, as_json: bool) -> None:
    """Put these packages' .debs on the chosen nodes now, before their apt-get needs them.

    \b
    Each PKG is looked up in the verified indexes this node learned through its
    proxy (run `apt-get update` through it first): that VERSION, else the newest.
    With --with-deps, what `apt-get install --no-install-recommends` would download
    is added from the same indexes (Pre-Depends and Depends; in "a | b" the first
    the indexes satisfy; virtual packages through Provides), without the base
    system every Debian machine has (Essential and required packages and what they
    need) unless --include-required.
    A dependency nothing provides is named in a warning; the rest is preheated.
    Without --with-deps, dependencies are not added: name them too.
    This node fetches each .deb first (from the archive once for the whole
    cluster); the other nodes then get it from the cluster, and never from an
    archive they have not seen themselves.
    Peers accept this only in a cluster with a cluster_token."""
    from beiran.cli.preheat import parse_nodes, run_preheat

    if include_required and not with_deps:
        raise CLIError("--include-required applies to dependencies: add --with-deps")
    body: dict[str, Any] = {"packages": list(packages), "arch": arch, "nodes": parse_nodes(nodes)}
    if with_deps:
        body.update(with_deps=True, include_required=include_required)
    if max_packages is not None:
        if not with_deps:
            raise CLIError("--max-packages caps the dependencies: add --with-deps")
        if not max_packages.strip().isdigit():
            raise CLIError(f"--max-packages must be a whole number (e.g. 100), not {max_packages[:20]!r}")
        body["max_packages"] = int(max_packages)
    run_preheat("/apt/preheat", body, " ".join(packages), no_progress, as_json,
                report=_report_deps if with_deps else None)


def _report_deps(summary: dict[str, Any]) -> None:
    """What --with-deps added, left out and could not satisfy (before the per-node table)."""
    added = summary.get("added") or []
    if added:
        click.echo(f"Added {len(added)} dependenc{'y' if len(added) == 1 else 'ies'}:")
        table([{**r, "size_h": human_size(r.get("size"))} for r in added],
              [("package", "PACKAGE"), ("version", "VERSION"), ("arch", "ARCH"), ("size_h", "SIZE"),
               ("needed_by", "NEEDED BY")])
    else:
        click.echo("Added no dependencies.")
    skipped = summary.get("skipped") or []
    if skipped:
        click.echo(f"Left out {len(skipped)} base-system package{'' if len(skipped) == 1 else 's'} every Debian "
                   f"system has (--include-required keeps them): {', '.join(skipped)}")
    for u in summary.get("unresolved") or []:
        what = f"depends on {u['depends']}: " if u.get("depends") else ""
        click.echo(f"warning: {u['package']} {what}{u['why']}", err=True)
    click.echo()


# -- import ----------------------------------------------------------------------------------------
@cli.command("import", short_help="Seed the store from apt's archives dir (verified).")
@click.argument("directory", default="/var/cache/apt/archives",
                type=click.Path(file_okay=False, exists=True, path_type=Path))
@json_option
def import_debs(directory: Path, as_json: bool) -> None:
    """Seed the store from an apt archives dir: only .debs whose SHA256 matches apt's records."""
    from beiran_plugins.apt import importer

    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".deb", ".udeb"))
    try:
        cache = importer.open_cache()
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None
    client = _client()
    found = list(importer.match(files, cache))
    ok = [c for c in found if c.skip is None]
    have = set(client.post("/apt/packages?cmd=have", {"digests": [c.digest for c in ok]})["have"]) if ok else set()
    imported = 0
    import contextlib

    shown = ok and not as_json  # a bar (or its label on a pipe) only for a person and only with work to show
    with (click.progressbar(ok, label="importing", file=sys.stderr, show_pos=True,
                            item_show_func=lambda c: c.path.name if c else "") if shown
          else contextlib.nullcontext(ok)) as bar:
        for c in bar:
            if c.digest not in have:
                with open(c.path, "rb") as fh:
                    got = client.request("PUT", "/blobs/upload", raw=fh, headers={"Content-Length": str(c.size)})
                if got.get("digest") != c.digest:
                    c.skip = "changed while it was read"
                    continue
                imported += 1
            else:
                c.skip = "already in the store"
            client.post("/apt/packages?cmd=register", {"digest": c.digest, "package": c.package,
                                                       "version": c.version, "arch": c.arch,
                                                       "filename": c.path.name})
    if as_json:
        emit_json({"imported": imported, "files": [c.to_dict() for c in found]})
        return
    click.echo(f"imported {imported} of {len(files)} .deb files from {directory}")
    reasons: dict[str, int] = {}
    for c in found:
        if c.skip:
            reasons[c.skip] = reasons.get(c.skip, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  skipped {n}: {reason}")
