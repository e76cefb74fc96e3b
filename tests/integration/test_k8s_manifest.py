"""contrib/k8s/beiran.yaml, run as written on three "nodes": network namespaces standing in for
hosts, each with its own containerd (CRI), the DaemonSet's init container (configure-containerd,
before any daemon runs) and its daemon with the ConfigMap's config and the DaemonSet's env and
mounts. dnsmasq stands in for the headless Service's SRV record, a docker-registry in a fourth
namespace for the registry. kubelet is not available here: a CRI client speaks kubelet's
ImageService calls to each node's Beiran socket, as `--image-service-endpoint` would."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from beiran_testkit.cri import Containerd, CRIClient
from beiran_testkit.daemon import UnixHTTP, wait_until, write_toml
from beiran_testkit.dnsserver import Dnsmasq
from beiran_testkit.netns import netns_lan  # noqa: F401 - fixture
from beiran_testkit.oci import Layout, hello_elf, random_bytes
from beiran_testkit.procs import stop_process
from beiran_testkit.registry import Registry

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "contrib" / "k8s" / "beiran.yaml"
TOKEN = "daemonset-test-token"

for tool in ("containerd", "docker-registry", "skopeo", "dnsmasq"):
    if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
        pytest.skip(f"{tool} is not installed", allow_module_level=True)


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def _remap(value: Any, mounts: dict[str, str]) -> Any:
    """Container paths -> this node's test paths (longest mount first), at any depth."""
    if isinstance(value, str):
        for src in sorted(mounts, key=len, reverse=True):
            if value == src or value.startswith(src + "/"):
                return mounts[src] + value[len(src):]
            value = value.replace("unix://" + src + "/", "unix://" + mounts[src] + "/")
        return value
    if isinstance(value, dict):
        return {k: _remap(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [_remap(v, mounts) for v in value]
    return value


def _env(container: dict[str, Any], pod_ip: str, mounts: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            value = pod_ip
        elif item["valueFrom"].get("secretKeyRef", {}).get("name") == "beiran-token":
            value = TOKEN
        else:
            raise AssertionError(f"the test does not know how to fill env {item}")
        env[item["name"]] = _remap(value, mounts)
    return env


def _in_ns(host: Any, *cmd: str) -> list[str]:
    return ["nsenter", f"--net={host.path}", "--", *cmd]


def _beiran(argv: list[str]) -> list[str]:
    assert argv[0] == "beiran", argv
    return [sys.executable, "-m", "beiran", *argv[1:]]


def _http_in_ns(host: Any, url: str) -> tuple[int, str]:
    code = ("import sys, urllib.request\n"
            "r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
            "print(r.status); print(r.read().decode(errors='replace'))")
    out = subprocess.run(_in_ns(host, sys.executable, "-c", code, url), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    return int(status), body


def _api(sock: str, path: str) -> Any:
    conn = UnixHTTP(sock, 10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_daemonset_as_written_shares_images_between_nodes(netns_lan, tmp_path):  # noqa: F811
    docs = _docs()
    config = tomllib.loads(docs["ConfigMap"]["data"]["config.toml"])
    pod = docs["DaemonSet"]["spec"]["template"]
    spec = pod["spec"]
    main = next(c for c in spec["containers"] if c["name"] == "beiran")
    init = next(c for c in spec["initContainers"] if c["name"] == "configure-containerd")
    port = main["ports"][0]["containerPort"]
    # what the manifest promises, read from it
    assert spec["hostNetwork"] is True
    assert config["listen"] == f"0.0.0.0:{port}", "listens on the node's address and on loopback"
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["containerd-content"].get("readOnly") is True
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["run"]["hostPath"]["path"] == mounts["run"]["mountPath"]  # kubelet finds the CRI socket
    assert config["plugins"]["k8s"]["socket"].startswith(mounts["run"]["mountPath"] + "/")
    assert config["plugins"]["docker"]["containerd_content_dir"] == mounts["containerd-content"]["mountPath"]

    lan = netns_lan(4)
    services = lan.hosts[3]
    # the registry: images pushed from here, then served from the services namespace
    reg_root = tmp_path / "registry"
    seed = Registry(reg_root).start()
    layout = Layout(tmp_path / "layout")
    image = layout.image([({"hello": hello_elf(b"daemonset\n")}, "gzip"),
                          ({"data/blob": random_bytes(300_000, seed=5)}, "gzip")])
    layout.tag(image.manifest, "app")
    layout.push("app", f"{seed.push_name}/team/app:v1")
    seed.stop()
    registry_addr = f"{services.ip}:5000"
    (reg_root / "ns.yml").write_text(
        f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {reg_root / 'storage'}\n"
        f"http:\n  addr: {registry_addr}\n")
    reg_log = reg_root / "ns.log"
    with open(reg_log, "ab") as log:
        registry = subprocess.Popen(_in_ns(services, "docker-registry", "serve", str(reg_root / "ns.yml")),
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def blob_gets() -> Counter:
        found = re.findall(r'"GET /v2/team/app/blobs/(sha256:[0-9a-f]{64}) HTTP/1.1" 200', reg_log.read_text())
        return Counter(found)

    # the headless Service: one SRV target per node (the pod's address and port)
    srv_name = config["plugins"]["dns"]["names"][0]
    domain = srv_name.split(".svc.", 1)[1]
    targets = [(f"node{i + 1}.{srv_name.split('.', 2)[2]}", port) for i in range(3)]
    dns = Dnsmasq(tmp_path / "dns", ip=services.ip, port=53, domain=domain, netns=services.path)
    dns.set_records(srv={srv_name: targets},
                    hosts={name: [lan.hosts[i].ip] for i, (name, _) in enumerate(targets)})

    nodes: list[dict[str, Any]] = []
    try:
        for i, host in enumerate(lan.hosts[:3]):
            base = tmp_path / f"node{i + 1}"
            ctd = Containerd(base / "containerd", netns=host.path)
            run_dir = tempfile.mkdtemp(prefix=f"bk{i}-", dir="/tmp")  # unix socket paths stay short
            paths = {"config": base / "etc", "data": base / "data", "run": Path(run_dir),
                     "containerd-run": ctd.sockdir, "containerd-hosts": ctd.certs,
                     "containerd-content": ctd.base / "root" / "io.containerd.content.v1.content"}
            assert set(paths) == set(vols), "a volume the test does not map"
            mounts_map = {m["mountPath"]: str(paths[m["name"]]) for c in (main, init) for m in c["volumeMounts"]}
            for p in paths.values():
                Path(p).mkdir(parents=True, exist_ok=True)
            node_cfg = _remap(copy.deepcopy(config), mounts_map)
            # standing in for the cluster's resolver and for the user's own registry list:
            node_cfg["plugins"]["dns"]["nameservers"] = [dns.address]
            node_cfg["plugins"]["docker"]["registries"][registry_addr] = {"url": f"http://{registry_addr}"}
            write_toml(paths["config"] / "config.toml", node_cfg)
            ctd.start()
            # the init container, before any daemon: hosts.toml from the config file alone
            out = subprocess.run(_in_ns(host, *_beiran(_remap(init["command"], mounts_map))),
                                 capture_output=True, text=True, timeout=60, env=_env(init, host.ip, mounts_map))
            assert out.returncode == 0, out.stderr
            hosts_toml = (ctd.certs / registry_addr / "hosts.toml").read_text()
            assert f'[host."http://127.0.0.1:{port}"]' in hosts_toml
            assert f'server = "http://{registry_addr}"' in hosts_toml
            log = open(base / "daemon.log", "ab")
            proc = subprocess.Popen(_in_ns(host, *_beiran(_remap(main["command"], mounts_map))), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_env(main, host.ip, mounts_map))
            env = _env(main, host.ip, mounts_map)
            nodes.append({"host": host, "proc": proc, "ctd": ctd, "socket": env["BEIRAN_SOCKET"], "base": base,
                          "cri": node_cfg["plugins"]["k8s"]["socket"], "run": run_dir})
        for n in nodes:
            wait_until(lambda n=n: _api(n["socket"], "/status")["status"] == "ready", timeout=30,
                       what=f"daemon in {n['host'].netns}")
        uuids = {_api(n["socket"], "/info")["uuid"] for n in nodes}

        def peers_by_dns(n: dict[str, Any]) -> bool:
            listed = _api(n["socket"], "/nodes")["nodes"]
            return {x["uuid"] for x in listed if x.get("status") == "online" and "dns" in x["found_by"]} \
                == uuids - {_api(n["socket"], "/info")["uuid"]}
        for n in nodes:
            wait_until(lambda n=n: peers_by_dns(n), timeout=40, what="every peer found through the SRV record")
        for n in nodes:
            info = _api(n["socket"], "/info")
            assert info["url"] == f"http://{n['host'].ip}:{port}"  # BEIRAN_ADVERTISE
            plugins = {p["name"]: p["status"] for p in _api(n["socket"], "/status")["plugins"]}
            for name in ("docker", "k8s", "dns", "apt", "npm"):
                assert plugins.get(name) == "ready", plugins
            for url in (f"http://127.0.0.1:{port}/ping", f"http://{n['host'].ip}:{port}/ping"):
                assert _http_in_ns(n["host"], url)[0] == 200
            status, body = _http_in_ns(n["host"], f"http://{n['host'].ip}:{ann['prometheus.io/port']}"
                                                  f"{ann['prometheus.io/path']}")
            assert status == 200 and "beiran_peers_online 2.0" in body

        ref = f"{registry_addr}/team/app:v1"
        with CRIClient(nodes[0]["cri"]) as cri:
            assert cri.pull(ref) == image.config.digest
        first = blob_gets()
        assert first == Counter({b.digest: 1 for b in image.blobs}), first
        for n in nodes[1:]:
            with CRIClient(n["cri"]) as cri:
                assert cri.pull(ref) == image.config.digest
        assert blob_gets() == first, "nodes 2 and 3 took every blob from the cluster"
        for n in nodes:
            assert ref in n["ctd"].image_refs()
    finally:
        for n in nodes:
            stop_process(n["proc"], 10)
            n["ctd"].cleanup()
            shutil.rmtree(n["run"], ignore_errors=True)
        dns.stop()
        stop_process(registry, 10)
