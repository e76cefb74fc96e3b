"""`beiran k8s ...` commands (light imports only: `beiran --help` loads every plugin's cli)."""

from __future__ import annotations

import os
from urllib.parse import urlencode

import click

from beiran.cli.errors import CLIError, DaemonNotRunning
from beiran.cli.output import emit_json, human_size, json_option, table


@click.group(name="k8s", short_help="Kubernetes: a CRI image service for kubelet.")
def cli() -> None:
    """Kubernetes: a CRI image service for kubelet (--image-service-endpoint)."""


@cli.command("images")
@click.option("--all", "show_all", is_flag=True, help="Also show which cluster nodes hold each image's blobs.")
@json_option
def images(show_all: bool, as_json: bool) -> None:
    """Images the container runtime on this node holds."""
    from beiran.cli.main import client

    data = client().get("/k8s/images" + ("?all=true" if show_all else ""))
    if as_json:
        emit_json(data)
        return
    me = data.get("node", "")
    rows = []
    for im in data.get("images", []):
        row = {"name": ", ".join(im.get("tags") or []) or (im.get("digests") or ["<none>"])[0],
               "id": im["id"].split(":")[-1][:12], "size": human_size(im.get("size")),
               "via": ("beiran" + (" (private)" if im.get("private") else "")) if im.get("beiran") else "runtime"}
        if show_all:
            nodes = im.get("nodes") or {}
            row["nodes"] = ", ".join(("this node" if n == me else n[:8]) + ("" if s in ("runtime", "complete")
                                                                             else f" ({s})")
                                     for n, s in sorted(nodes.items(), key=lambda x: x[0] != me))
        rows.append(row)
    cols = [("name", "IMAGE"), ("id", "ID"), ("size", "SIZE"), ("via", "PULLED VIA")]
    if show_all:
        cols.append(("nodes", "NODES"))
    table(rows, cols, empty="(the runtime holds no images)")


@cli.command("configure-containerd", short_help="containerd hosts.toml for this node's mirror.")
@click.option("--write", is_flag=True, help="Write the hosts.toml files (else print them).")
@click.option("--dir", "hosts_dir", type=click.Path(file_okay=False),
              help="containerd's config_path (default: [plugins.k8s] hosts_dir, /etc/containerd/certs.d).")
@click.option("--registry", "registries", multiple=True, metavar="HOST[:PORT]",
              help="Also mirror this registry (repeatable).")
@click.option("--containerd-config", type=click.Path(dir_okay=False), default="/etc/containerd/config.toml",
              show_default=True, help="Checked for the config_path line.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="When no daemon runs (an init container): the config file to read "
                   "(default: $BEIRAN_CONFIG, /etc/beiran/config.toml).")
@json_option
def configure_containerd(write: bool, hosts_dir: str | None, registries: tuple[str, ...], containerd_config: str,
                         config_file: str | None, as_json: bool) -> None:
    """containerd hosts.toml files that send CRI pulls to this node's Beiran mirror.

    Asks the running daemon; when none runs (e.g. a DaemonSet's init container, before the daemon
    starts), computes the same files from the config file and says so."""
    from beiran.cli.main import client

    query = [("registry", r) for r in registries]
    if hosts_dir:
        query.append(("dir", os.path.abspath(hosts_dir)))
    try:
        data = client().get("/k8s/containerd-config" + (f"?{urlencode(query)}" if query else ""))
    except DaemonNotRunning as exc:
        data = _offline_plan(config_file, list(registries), os.path.abspath(hosts_dir) if hosts_dir else None)
        click.echo(f"{exc.message}: using the config file {data.pop('config_file')}", err=True)
    has_line = _has_config_path(containerd_config, data["hosts_dir"])
    data["containerd_config"] = {"path": containerd_config, "config_path_set": has_line}
    if write:
        for f in data["files"]:
            try:
                os.makedirs(os.path.dirname(f["path"]), exist_ok=True)
                tmp = f["path"] + ".tmp"
                with open(tmp, "w") as fh:
                    fh.write(f["content"])
                os.replace(tmp, f["path"])
            except OSError as exc:
                raise CLIError(f"cannot write {f['path']}: {exc.strerror}") from None
    if as_json:
        emit_json(data)
        return
    for f in data["files"]:
        if write:
            click.echo(f"wrote {f['path']}")
        else:
            click.echo(f"# {f['path']}\n{f['content']}")
    if has_line:
        click.echo(f"{containerd_config} already sets config_path = \"{data['hosts_dir']}\".")
    else:
        click.echo(f"\nAdd to {containerd_config} (then restart containerd):\n\n{data['config_path_snippet']}")


def _offline_plan(config_file: str | None, registries: list[str], hosts_dir: str | None) -> dict:
    from beiran.config import load_config
    from beiran.errors import BeiranError
    from beiran_plugins.k8s.containerd import plan_from_config

    try:
        config = load_config(config_file)
        data = plan_from_config(config, registries, hosts_dir)
    except BeiranError as exc:
        raise CLIError(exc.message) from None
    data["config_file"] = str(config.source_file or "(defaults: no config file)")
    return data


def _has_config_path(path: str, hosts_dir: str) -> bool:
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return False
    return any(line.split("=", 1)[0].strip() == "config_path" and hosts_dir in line
               for line in text.splitlines() if not line.strip().startswith("#"))
