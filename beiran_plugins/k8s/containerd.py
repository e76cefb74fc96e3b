"""containerd's registry host files (`config_path`/<registry>/hosts.toml) pointing at this node's mirror,
as Spegel writes them: the mirror first with pull+resolve, the registry itself as the fallback."""

from __future__ import annotations

from typing import Any

DOCKER_HUB_SERVER = "https://registry-1.docker.io"


def hosts_toml(server: str, mirror: str) -> str:
    return (f'# Written by `beiran k8s configure-containerd`: pulls go to the Beiran mirror on this node\n'
            f'# first; containerd falls back to the registry itself when the mirror has no answer.\n'
            f'server = "{server}"\n\n'
            f'[host."{mirror}"]\n'
            f'  capabilities = ["pull", "resolve"]\n'
            f'  dial_timeout = "2s"\n')


def config_path_snippet(hosts_dir: str) -> str:
    return ('[plugins."io.containerd.grpc.v1.cri".registry]\n'
            f'  config_path = "{hosts_dir}"\n')


def plan(registries: dict[str, str], mirror: str, hosts_dir: str) -> dict[str, Any]:
    """registry name -> upstream URL, into the files to write and the config line containerd needs."""
    files = []
    for name in sorted(registries):
        server = registries[name] or (DOCKER_HUB_SERVER if name == "docker.io" else f"https://{name}")
        files.append({"registry": name, "path": f"{hosts_dir.rstrip('/')}/{name}/hosts.toml",
                      "content": hosts_toml(server, mirror)})
    return {"hosts_dir": hosts_dir, "mirror": mirror, "files": files,
            "config_path_snippet": config_path_snippet(hosts_dir)}
