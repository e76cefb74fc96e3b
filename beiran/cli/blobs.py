"""`beiran blobs ...` and `beiran stats`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client
from beiran.cli.output import emit_json, human_duration, human_size, json_option, table
from beiran.cli.preheat import nodes_option


@click.group()
def blobs() -> None:
    """The content-addressed blob store and cluster fetches."""


@blobs.command("add")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--algorithm", type=click.Choice(["sha256", "sha512"]), default="sha256", show_default=True,
              help="Digest the blobs are stored under.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def add(files: tuple[str, ...], algorithm: str, no_progress: bool) -> None:
    """Store FILES; prints each digest."""
    from beiran.cli.progress import CountingReader, Progress

    c = client(timeout=600)
    # a plain line per file is the digest itself: bars only on a terminal
    with Progress(enabled=not no_progress and sys.stderr.isatty()) as progress:
        for path in files:
            with _sized(path) as (fh, size):
                progress.add(path, os.path.basename(path), size)
                body = CountingReader(fh, lambda n, path=path: progress.update(path, completed=n))
                data = c.request("PUT", f"/blobs/upload?algorithm={algorithm}", raw=body,
                                 headers={"Content-Length": str(size)})
            progress.finish(path, "stored")
            click.echo(data["digest"])


@contextlib.contextmanager
def _sized(path: str) -> Iterator[tuple[BinaryIO, int]]:
    """The file and its length. `stat` only knows the length of a regular file with data on disk: a
    pipe, or a /proc or /sys file (size 0, contents on read), is first read into a spool file, so
    what is stored is what a reader of PATH gets, never an empty blob."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > 0:
            yield fh, st.st_size
            return
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(fh, spool, 1 << 20)
            size = spool.tell()
            spool.seek(0)
            yield spool, size


@blobs.command("fetch")
@click.argument("digest")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the blob here.")
@click.option("--size", type=click.IntRange(min=0), metavar="BYTES", help="Expected size in bytes.")
@click.option("--source", metavar="JSON",
              help='Origin as JSON, e.g. {"plugin": "origin", "name": "files", "path": "/x"}.')
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def fetch(digest: str, output: str | None, size: int | None, source: str | None, no_progress: bool) -> None:
    """Fetch DIGEST through the cluster (peers first, then the origin)."""
    src = None
    if source:
        try:
            src = json.loads(source)
        except ValueError as exc:
            raise CLIError(f"--source is not valid JSON: {exc}") from None
    if output:  # before the fetch, which may take a while: not after it
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise CLIError(f"-o {output}: {parent} is not a directory this user can write")
    from beiran.cli.progress import Progress

    c = client(timeout=600)
    final: dict[str, Any] = {}
    label = digest[:19]
    with Progress(enabled=not no_progress) as progress:
        progress.add("fetch", f"{label} fetch")
        for event in c.stream_lines("POST", "/blobs?cmd=fetch", {"digest": digest, "size": size, "source": src}):
            final = event
            if event.get("total") and not event.get("error"):
                progress.update("fetch", completed=event.get("bytes") or 0, total=event["total"])
                if event.get("done"):
                    srcs = ", ".join(k for k, v in sorted((event.get("sources") or {}).items()) if v)
                    progress.finish("fetch", f"done ({srcs or 'local'})", plain=False)  # the summary says it
        if final.get("error"):
            raise CLIError(final["error"].get("message", "fetch failed"))
        if output:
            tmp = output + ".part"
            progress.add("download", f"{label} -> {output}")
            try:
                with open(tmp, "wb") as fh:
                    c.download(f"/blobs/{digest}", fh,
                               progress=lambda n, total: progress.update("download", completed=n, total=total))
                os.replace(tmp, output)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            progress.finish("download", "written")
    srcs = ", ".join(f"{k} {human_size(v)}" for k, v in (final.get("sources") or {}).items())
    took = human_duration(final.get("elapsed"))
    click.echo(f"{digest}: {human_size(final.get('total'))} in {took} ({srcs or 'local'})")


@blobs.command("preheat", short_help="Put DIGEST on the chosen nodes now.")
@click.argument("digest")
@click.option("--size", type=click.IntRange(min=0), metavar="BYTES", help="Expected size in bytes.")
@click.option("--source", required=True, metavar="JSON",
              help='Origin as JSON, e.g. {"plugin": "origin", "name": "files", "path": "/x"}.')
@nodes_option
@click.option("--no-progress", is_flag=True, help="No progress lines.")
@json_option
def preheat(digest: str, size: int | None, source: str, nodes: str, no_progress: bool, as_json: bool) -> None:
    """Put DIGEST on the chosen nodes now (each fetches it; it leaves the origin once).

    Peers accept this only in a cluster with a cluster_token, and only for sources their own
    config names."""
    from beiran.cli.preheat import parse_nodes, run_preheat

    try:
        src = json.loads(source)
    except ValueError as exc:
        raise CLIError(f"--source is not valid JSON: {exc}") from None
    run_preheat("/preheat", {"blobs": [{"digest": digest, "size": size, "source": src}],
                             "nodes": parse_nodes(nodes)}, digest[:19], no_progress, as_json)


@blobs.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include blobs only other nodes hold.")
@json_option
def list_blobs(show_all: bool, as_json: bool) -> None:
    """Blobs in this node's store (with --all, in the cluster)."""
    data = client().get("/blobs" + ("?all=true" if show_all else ""))["blobs"]
    if as_json:
        emit_json(data)
        return
    for b in data:
        b["hsize"] = human_size(b.get("size"))
        b["where"] = len(b.get("nodes", {})) if show_all else ""
        b["pins"] = ",".join(b.get("pinned_by", []))
    cols = [("digest", "DIGEST"), ("hsize", "SIZE"), ("state", "STATE"), ("pins", "PINNED BY")]
    if show_all:
        cols.append(("where", "NODES"))
    table(data, cols, empty="(no blobs)")


@blobs.command("stats")
@json_option
def store_stats(as_json: bool) -> None:
    """Store usage."""
    data = client().get("/blobs/stats")
    if as_json:
        emit_json(data)
        return
    for k in ("path", "blobs", "bytes", "pinned_blobs", "pinned_bytes", "downloading", "max_size",
              "disk_free"):
        v = data.get(k)
        if k == "max_size" and not v:
            v = "unlimited"
        elif k.endswith(("bytes", "size", "free")) and isinstance(v, (int, float)):
            v = human_size(v)
        click.echo(f"{k:13} {v}")


@blobs.command("rm")
@click.argument("digests", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Remove even when a plugin pins it.")
def rm(digests: tuple[str, ...], force: bool) -> None:
    """Remove blobs from this node's store."""
    c = client()
    for d in digests:
        c.post("/blobs?cmd=rm", {"digest": d, "force": force})
        click.echo(f"removed {d}")


@blobs.command("gc", short_help="Evict down to store.max_size; re-check the index.")
@json_option
def gc(as_json: bool) -> None:
    """Evict down to store.max_size and re-check the index against the files."""
    data = client(timeout=600).post("/blobs?cmd=gc")
    if as_json:
        emit_json(data)
    else:
        click.echo(", ".join(f"{k}: {human_size(v) if k.endswith('bytes') else v}" for k, v in data.items()))


@click.command()
@json_option
def stats(as_json: bool) -> None:
    """Fetch and serving counters of this node."""
    data = client().get("/stats")
    if as_json:
        emit_json(data)
        return
    rows = [{"name": k.replace("}{", ","), "value": _stat_value(k, v)} for k, v in sorted(data["metrics"].items())
            if not k.split("{")[0].endswith("_bucket")]  # histogram buckets: --json, or /metrics
    table(rows, [("name", "COUNTER"), ("value", "VALUE")])


def _stat_value(name: str, v: Any) -> Any:
    base = name.split("{")[0]
    if not isinstance(v, (int, float)):
        return v
    if "_bytes" in base:
        return human_size(v)
    if base.endswith("_seconds_sum"):
        return human_duration(v)
    return int(v) if float(v).is_integer() else round(v, 3)
