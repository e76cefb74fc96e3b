"""`beiran docker ...` commands. Imports only click and beiran.cli at module level (fast --help)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client
from beiran.cli.output import emit_json, fail_with_json, human_duration, human_size, json_option, table
from beiran.cli.preheat import nodes_option


@click.group(name="docker", short_help="Docker/OCI images: a registry mirror fed by the cluster.")
def cli() -> None:
    """Docker/OCI images: a registry mirror served from the cluster."""


def _path(ref: str, suffix: str = "") -> str:
    return "/docker/images/" + quote(ref, safe="/:@") + suffix


def _node(given: str) -> str:
    """--node takes a UUID or its first 8+ characters, as the tables show it."""
    from beiran.cli.node import resolve_node

    return resolve_node(given)


def _short(digest: str | None) -> str:
    return (digest or "")[:19]


def _show_layers(progress: Any, layers: list[dict[str, Any]]) -> None:
    """Each layer's bar (terminal), or one line per layer as it finishes (else)."""
    for lay in layers:
        key = lay["digest"]
        progress.add(key, _short(key), lay.get("total"))
        if lay.get("error"):
            progress.finish(key, "error: " + str(lay["error"]))
        elif lay.get("done"):
            progress.finish(key, f"done ({_where(lay.get('sources'))})", size=lay.get("total"))
        else:
            progress.update(key, completed=lay.get("bytes") or 0, total=lay.get("total"))


def _where(sources: dict[str, int] | None) -> str:
    if not sources:
        return ""
    return ", ".join(k for k, v in sorted(sources.items()) if v)


@cli.command("pull", short_help="Pull REF through the cluster (and load it).")
@click.argument("ref")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Image to pick from a multi-platform index "
              "(default: this machine's).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--no-load", is_flag=True, help="Keep the image in Beiran's store only; do not load it into Docker.")
@json_option
def pull(ref: str, platform: str | None, no_progress: bool, no_load: bool, as_json: bool) -> None:
    """Pull REF into this node's store (peers first, then the registry) and load it into Docker."""
    from beiran.cli.progress import Progress

    final: dict[str, Any] = {}
    with Progress(not no_progress and not as_json) as progress:
        for event in client(timeout=3600).stream_lines("POST", "/docker/images?cmd=pull",
                                                       {"ref": ref, "platform": platform, "load": not no_load}):
            final = event
            if event.get("event") == "manifest":
                blobs = event.get("blobs") or []
                progress.say(f"{event.get('ref')} ({event.get('platform') or 'single platform'}): {len(blobs)} blobs, "
                             f"{human_size(sum(b.get('size') or 0 for b in blobs))}")
            elif event.get("event") == "progress":
                _show_layers(progress, event.get("layers") or [])
    if as_json:
        if final.get("error"):
            fail_with_json(final, final["error"].get("message", "pull failed"))
        emit_json(final)
        return
    if final.get("error"):
        raise CLIError(final["error"].get("message", "pull failed"))
    src = final.get("sources") or {}
    took = human_duration(final.get("elapsed"))
    click.echo(f"Pulled {final.get('ref')} ({_short(final.get('digest'))}, {final.get('platform')}): "
               f"{final.get('layers')} layers, {human_size(final.get('size'))} in {took} "
               f"(local {human_size(src.get('local', 0))}, peers {human_size(src.get('peer', 0))}, "
               f"origin {human_size(src.get('origin', 0))})")
    if not no_load and final.get("engine"):
        click.echo(final["engine"][:1].upper() + final["engine"][1:])


@cli.command("preheat", short_help="Put REF's blobs on the chosen nodes now.")
@click.argument("ref")
@nodes_option
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Image to pick from a multi-platform index "
              "(default: this machine's).")
@click.option("--no-progress", is_flag=True, help="No progress lines.")
@json_option
def preheat(ref: str, nodes: str, platform: str | None, no_progress: bool, as_json: bool) -> None:
    """Put every blob of REF on the chosen nodes now, before a rollout needs it.

    Each node fetches through its own fetcher, so each blob leaves the registry once for the whole
    cluster. Peers accept this only in a cluster with a cluster_token, and only for registries their
    own config names."""
    from beiran.cli.preheat import parse_nodes, run_preheat

    run_preheat("/docker/images?cmd=preheat", {"ref": ref, "platform": platform, "nodes": parse_nodes(nodes)},
                ref, no_progress, as_json)


@cli.command("save", short_help="Write REF as a `docker save` archive.")
@click.argument("ref")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Archive to write.")
@click.option("--platform", metavar="OS/ARCH", help="For an image not pulled yet: the platform to pick.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def save(ref: str, output: str, platform: str | None, no_progress: bool) -> None:
    """Write REF as a `docker save`-compatible archive (from the store, or fetched through the cluster)."""
    from beiran.cli.progress import Progress

    path = _path(ref) + (f"?platform={quote(platform)}" if platform else "")
    tmp = output + ".part"
    try:
        with Progress(not no_progress) as progress, open(tmp, "wb") as fh:
            progress.add("save", f"{ref} -> {output}")
            n = client(timeout=3600).download(
                path, fh, progress=lambda got, total: progress.update("save", completed=got, total=total))
            progress.finish("save", "written", plain=False)  # the summary line says it
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    click.echo(f"{output}: {human_size(n)}")


@cli.command("images", short_help="Images here (or on every node).")
@click.option("--all", "show_all", is_flag=True, help="Images on every online node, with the nodes holding each.")
@click.option("--node", metavar="UUID", help="Images of one node (its UUID or first 8+ characters).")
@json_option
def images(show_all: bool, node: str | None, as_json: bool) -> None:
    """Images in this node's store and its Docker engine (or the cluster's)."""
    query = "?all=true" if show_all else (f"?node={quote(_node(node))}" if node else "")
    data = client().get("/docker/images" + query)
    rows = list(data.get("images") or [])
    engine = data.get("engine")
    if engine:
        for im in engine.get("images") or []:
            for tag in im.get("tags") or ["<none>:<none>"]:
                rows.append({"ref": tag, "digest": im.get("id"), "size": im.get("size"), "source": "engine"})
    if as_json:
        emit_json({"images": rows, "engine": {k: v for k, v in (engine or {}).items() if k != "images"} or None})
        return
    for r in rows:
        r["image"] = r.get("ref")
        r["short"] = _short(r.get("digest"))
        r["hsize"] = human_size(r.get("size"))
        if r.get("source") == "beiran":
            r["state"] = "complete" if r.get("complete", True) else f"{r.get('blobs_local')} blobs local"
        r["where"] = len(r.get("nodes") or [])
    cols = [("image", "IMAGE"), ("short", "DIGEST"), ("platform", "PLATFORM"), ("hsize", "SIZE"),
            ("layers", "LAYERS"), ("source", "SOURCE"), ("state", "STATE")]
    if show_all or node:
        cols.append(("where", "NODES"))
    table(rows, cols, empty="(no images)")
    if engine and not engine.get("reachable"):
        click.echo(f"(no Docker engine reachable at {engine.get('host')})", err=True)


@cli.command("layers", short_help="Layers here (or on every node), and where.")
@click.option("--all", "show_all", is_flag=True, help="Layers on every online node.")
@click.option("--node", metavar="UUID", help="Layers of one node (its UUID or first 8+ characters).")
@json_option
def layers(show_all: bool, node: str | None, as_json: bool) -> None:
    """Layers of the images this node (or the cluster) holds, and where each is."""
    query = "?all=true" if show_all else (f"?node={quote(_node(node))}" if node else "")
    rows = client().get("/docker/layers" + query)["layers"]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["hsize"] = human_size(r.get("size"))
        r["nimages"] = len(r.get("images") or [])
        r["where"] = len(r.get("nodes") or [])
    table(rows, [("digest", "DIGEST"), ("hsize", "SIZE"), ("state", "STATE"), ("nimages", "IMAGES"),
                 ("where", "NODES")], empty="(no layers)")


@cli.command("info")
@click.argument("ref")
@json_option
def info(ref: str, as_json: bool) -> None:
    """One image's record: manifest, config, layers and where they are."""
    data = client().get(_path(ref, "/info"))
    if as_json:
        emit_json(data)
        return
    for key in ("ref", "digest", "index_digest", "platform", "media_type", "via"):
        click.echo(f"{key:13} {data.get(key) or '-'}")
    click.echo(f"{'size':13} {human_size(data.get('size'))}")
    for lay in data.get("layers") or []:
        click.echo(f"  {lay['digest']}  {human_size(lay.get('size')):>10}  on {len(lay.get('nodes') or [])} node(s)")


@cli.command("rmi", short_help="Remove images from this node's store.")
@click.argument("refs", nargs=-1, required=True)
def rmi(refs: tuple[str, ...]) -> None:
    """Remove images from this node's store (blobs no other image pins are deleted)."""
    c = client()
    for ref in refs:
        data = c.request("DELETE", _path(ref))
        click.echo(f"removed {', '.join(data.get('removed') or [ref])} ({data.get('blobs_removed', 0)} blobs deleted)")
