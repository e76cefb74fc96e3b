"""containerd's registry host files (`config_path`/<registry>/hosts.toml) pointing at this node's mirror,
as Spegel writes them: the mirror first with pull+resolve, the registry itself as the fallback."""

from __future__ import annotations

from typing import Any

DOCKER_HUB_SERVER = "https://registry-1.docker.io"
DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"


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


def plan_from_config(config: Any, extra: list[str], hosts_dir: str | None = None) -> dict[str, Any]:
    """The same plan computed from a config file alone, for an init step that runs before the daemon
    (a DaemonSet's init container): the docker plugin's configured registries and [plugins.k8s]."""
    from beiran_plugins.docker.reference import validate_registry

    docker = config.plugin_section("docker")
    k8s = config.plugin_section("k8s")
    registries: dict[str, str] = {}
    for name, section in (docker.get("registries") or {}).items():
        registries[validate_registry(name)] = str((section or {}).get("url") or "")
    for name in [*(k8s.get("registries") or []), *extra]:
        registries.setdefault(validate_registry(name), "")
    if not registries:
        registries["docker.io"] = ""
    host = config.listen_host if config.listen_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    mirror = str(k8s.get("mirror") or f"http://{host}:{config.listen_port}").rstrip("/")
    return plan(registries, mirror, hosts_dir or str(k8s.get("hosts_dir") or DEFAULT_HOSTS_DIR))
