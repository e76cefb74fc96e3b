"""`beiran npm ...` commands."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlsplit

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client
from beiran.cli.output import emit_json, fail_with_json, human_size, json_option, table
from beiran.cli.preheat import nodes_option


@click.group(name="npm", short_help="npm registry proxy: packages, warm, configure.")
def cli() -> None:
    """npm: a registry proxy whose tarballs come from the cluster.

    Point npm at this node (`beiran npm configure` prints the .npmrc line); every tarball then
    crosses the WAN once per cluster. Package reads only: publish, login, audit and the like are
    refused with a message, or forwarded to the upstream with `[plugins.npm] writes = "forward"`.
    """


@cli.command("packages")
@click.option("--all", "show_all", is_flag=True, help="Also tarballs other nodes hold, with the nodes.")
@json_option
def packages(show_all: bool, as_json: bool) -> None:
    """Tarballs in this node's store (name, version, size, integrity)."""
    data = client().get("/npm/-/beiran/packages" + ("?all=true" if show_all else ""))["packages"]
    if as_json:
        emit_json(data)
        return
    for row in data:
        row["name"] = row.get("name") or "(no packument here)"
        row["hsize"] = human_size(row.get("size"))
        row["short"] = (row.get("integrity") or "")[:27] + "..."
        row["where"] = ",".join(n[:8] for n in sorted(row.get("nodes", {})))
    cols = [("name", "NAME"), ("version", "VERSION"), ("hsize", "SIZE"), ("short", "INTEGRITY")]
    if show_all:
        cols.append(("where", "NODES"))
    table(data, cols, empty="(no npm tarballs)")


def lockfile_entries(doc: Any) -> list[dict[str, Any]]:
    """Registry tarballs listed in a package-lock.json / npm-shrinkwrap.json (v1, v2 or v3)."""
    if not isinstance(doc, dict):
        raise CLIError("the lockfile is not a JSON object")
    out: list[dict[str, Any]] = []
    if isinstance(doc.get("packages"), dict):
        for path, e in doc["packages"].items():
            if not path or not isinstance(e, dict) or e.get("link") or e.get("inBundle"):
                continue
            name = e.get("name") or path.rsplit("node_modules/", 1)[-1]
            _add(out, name, e)
        return out

    def walk(deps: Any) -> None:
        for name, e in (deps or {}).items():
            if isinstance(e, dict) and not e.get("bundled"):
                version = str(e.get("version", ""))
                if version.startswith("npm:"):
                    real, _, version = version[4:].rpartition("@")
                    e = {**e, "version": version}
                    name = real
                _add(out, name, e)
                walk(e.get("dependencies"))
    walk(doc.get("dependencies"))
    return out


def _add(out: list[dict[str, Any]], name: str, e: dict[str, Any]) -> None:
    version, resolved = e.get("version"), e.get("resolved")
    if not isinstance(version, str) or (isinstance(resolved, str) and "/-/" not in urlsplit(resolved).path):
        return  # git, file, link or remote-tarball dependencies: not from a registry
    out.append({"name": name, "version": version, "integrity": e.get("integrity")})


@cli.command("warm")
@click.argument("specs", nargs=-1, metavar="PACKAGE[@RANGE]...")
@click.option("--lockfile", type=click.Path(exists=True, dir_okay=False),
              help="Warm every registry tarball of this package-lock.json.")
@click.option("--no-deps", is_flag=True, help="Only the named packages, not their dependencies.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
def warm(specs: tuple[str, ...], lockfile: str | None, no_deps: bool, no_progress: bool, as_json: bool) -> None:
    """Prefetch tarballs (and their dependencies) into the cluster.

    e.g. `beiran npm warm react@^18 @types/node@latest` or `--lockfile package-lock.json`.
    Ranges and dist-tags resolve as npm would (the `latest` tag when it satisfies, else the highest
    match); dependencies are included unless --no-deps.
    """
    entries = None
    if lockfile:
        try:
            with open(lockfile, encoding="utf-8") as fh:
                entries = lockfile_entries(json.load(fh))
        except (OSError, ValueError) as exc:
            raise CLIError(f"cannot read {lockfile}: {exc}") from None
    if not specs and not entries:
        raise CLIError("nothing to warm: name packages or give --lockfile")
    body = {"packages": list(specs), "deps": not no_deps, "lockfile": entries}
    from beiran.cli.progress import Progress

    final: dict[str, Any] = {}
    # a bar on a terminal; the summary line (and one line per failure) otherwise
    with Progress(not no_progress and not as_json and sys.stderr.isatty(), unit="items") as progress:
        for event in client(timeout=3600).stream_lines("POST", "/npm/-/beiran/warm", body):
            if event.get("stage") == "fetching":
                progress.add("warm", "warming", event["total"])
            elif "package" in event:
                progress.update("warm", advance=1)
            if event.get("done"):
                final = event
    failed = final.get("failed") or []
    why = f"{len(failed)} package(s) could not be warmed: " + "; ".join(
        f"{f['package']}: {f['error']}" for f in failed[:5]) + (
        f"; and {len(failed) - 5} more (--json lists them all)" if len(failed) > 5 else "")
    if as_json:
        if failed:
            fail_with_json(final, why)  # one JSON document on stdout, one line on stderr
        emit_json(final)
        return
    click.echo(f"warmed {final.get('fetched', 0)} of {final.get('total', 0)} tarballs "
               f"({human_size(final.get('bytes', 0))})")
    if failed:
        raise CLIError(why)


@cli.command("preheat", short_help="Put packages' tarballs on the chosen nodes now.")
@click.argument("specs", nargs=-1, required=True, metavar="NAME[@VERSION|@RANGE]...")
@nodes_option
@click.option("--no-deps", is_flag=True, help="Only the named packages, not their dependencies.")
@click.option("--no-progress", is_flag=True, help="No progress lines.")
@json_option
def preheat(specs: tuple[str, ...], nodes: str, no_deps: bool, no_progress: bool, as_json: bool) -> None:
    """Put these packages' tarballs (and their dependencies') on the chosen nodes now.

    Each node fetches through its own fetcher, so each tarball leaves the registry once for the whole
    cluster. Peers accept this only in a cluster with a cluster_token."""
    from beiran.cli.preheat import parse_nodes, run_preheat

    run_preheat("/npm/-/beiran/preheat", {"packages": list(specs), "deps": not no_deps, "nodes": parse_nodes(nodes)},
                " ".join(specs), no_progress, as_json)


#: what npm sends as its token to a refusing proxy: npm checks that it has a credential for the
#: registry before it sends a publish (else it stops with its own ENEEDAUTH and never asks Beiran);
#: with this one it sends the request and prints Beiran's answer (why, and where to publish).
NO_WRITES_TOKEN = "beiran-proxy-serves-reads-only"


def npmrc_auth_lines(registry: str, writes: str, upstream: str) -> list[str]:
    """The .npmrc lines that let npm's writes (publish, login...) reach this proxy's answer."""
    nerf = "//" + registry.split("://", 1)[-1]
    if writes == "forward":
        return [f"; writes go on to {upstream} with this token: put your token for it here",
                f"; {nerf}:_authToken=${{NPM_TOKEN}}"]
    return ["; not a secret: lets npm send publish/login here, so you see where to send them instead",
            f"{nerf}:_authToken={NO_WRITES_TOKEN}"]


@cli.command("configure")
@json_option
def configure(as_json: bool) -> None:
    """Print the .npmrc lines that send npm through this node.

    Lockfiles whose `resolved` URLs point at the public registry go through Beiran as they are
    (npm's replace-registry-host). For lockfiles written against another host (a private upstream,
    another Beiran node's address) add `replace-registry-host=always`.
    """
    info = client().get("/npm/-/beiran/info")
    lines = [f"registry={info['registry']}"]
    host = urlsplit(info["upstream"]).hostname or ""
    if host and host != "registry.npmjs.org":
        lines.append(f"replace-registry-host={host}")
    lines += npmrc_auth_lines(info["registry"], info.get("writes", "refuse"), info["upstream"])
    if as_json:
        emit_json({**info, "npmrc": lines})
        return
    click.echo("\n".join(lines))
