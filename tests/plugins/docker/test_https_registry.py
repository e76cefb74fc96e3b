"""An https upstream registry: Debian's docker-registry serving TLS with a certificate from a test CA.
A node whose `ca_file` is that CA pulls through its mirror; a node trusting another CA (or only the
system's) gets an OCI error naming the certificate, stores nothing, and keeps serving."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.oci import Image, Layout, hello_elf
from beiran_testkit.pki import make_ca
from beiran_testkit.procs import stop_process
from beiran_testkit.registry import beiran, free_port, mirror_of, oci_error, tree_files

pytestmark = pytest.mark.cluster


@dataclass
class HttpsRegistry:
    name: str  # 127.0.0.1:port
    ca: Path  # the CA that signed its certificate
    layout: Layout
    img: Image  # test/img:v1
    log: Path  # docker-registry's output, access log included

    @property
    def url(self) -> str:
        return f"https://{self.name}"

    def requests_logged(self) -> int:
        """Requests for test/img the registry answered (its access log)."""
        return self.log.read_text(errors="replace").count("/v2/test/img/")


@pytest.fixture(scope="module")
def https_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsRegistry]:
    missing = [b for b in ("docker-registry", "skopeo", "openssl") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install docker-registry skopeo openssl")
    base = tmp_path_factory.mktemp("https-registry")
    ca, cert, key = make_ca(base / "pki")
    port = free_port()
    name = f"127.0.0.1:{port}"
    cfg = base / "config.yml"
    cfg.write_text(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {base / "storage"}
http:
  addr: {name}
  tls:
    certificate: {cert}
    key: {key}
""")
    log = base / "registry.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        trust = ssl.create_default_context(cafile=str(ca))

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"https://{name}/v2/", timeout=5, context=trust) as resp:
                    return resp.status == 200
            except OSError:
                return False
        wait_until(answers, 60, interval=0.1, what="docker-registry to answer over TLS")

        lay = Layout(base / "layout")
        img = lay.image([({"hello": hello_elf()}, "gzip"), ({"etc/motd": b"served over https\n" * 40}, "gzip"),
                         ({"etc/data": bytes(range(256)) * 32}, None)])
        lay.tag(img.manifest, "img")
        certs = base / "certs.d"  # skopeo trusts the *.crt files of --dest-cert-dir: the push verifies TLS too
        certs.mkdir()
        shutil.copy(ca, certs / "ca.crt")
        push = subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-cert-dir", str(certs),
                               f"oci:{lay.root}:img", f"docker://{name}/test/img:v1"],
                              capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr
        yield HttpsRegistry(name, ca, lay, img, log)
    finally:
        stop_process(proc, 10)


def _config(reg: HttpsRegistry, ca_file: Path | None) -> dict[str, Any]:
    section: dict[str, Any] = {"url": reg.url}
    if ca_file is not None:
        section["ca_file"] = str(ca_file)
    others = {name: {"enabled": False} for name in ("apt", "npm", "dns", "k8s", "zeroconf")}
    return {"plugins": {**others, "docker": {"default_registry": reg.name, "registries": {reg.name: section},
                                             "engine": False}}}


def _skopeo_via(reg: HttpsRegistry, tmp_path: Path, label: str, mirror: str | None) -> tuple[int, str, Path]:
    """skopeo pulls test/img:v1 with the registry itself verified against the system CAs only (so a
    direct pull cannot succeed) and, when given, `mirror` (a Beiran node, plain http) tried first."""
    conf = tmp_path / f"{label}.conf"
    text = f'[[registry]]\nlocation = "{reg.name}"\n'
    if mirror:
        text += f'\n[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n'
    conf.write_text(text)
    out = tmp_path / label
    proc = subprocess.run(["skopeo", "--registries-conf", str(conf), "copy", "--quiet",
                           f"docker://{reg.name}/test/img:v1", f"dir:{out}"],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr, out


def test_a_node_trusting_the_registry_ca_pulls_through_its_mirror(cluster, https_registry, tmp_path):
    reg = https_registry
    # without the mirror, skopeo cannot pull: it does not trust the test CA
    code, err, _ = _skopeo_via(reg, tmp_path, "direct", None)
    assert code != 0 and "certificate" in err, err

    node = cluster.add(_config(reg, reg.ca), peers=None)
    before = reg.requests_logged()
    code, err, out = _skopeo_via(reg, tmp_path, "mirror", mirror_of(node))
    assert code == 0, f"{err}\n{node.log()[-3000:]}"
    assert (out / "manifest.json").read_bytes() == reg.img.manifest_bytes
    for blob in reg.img.blobs:
        assert (out / blob.digest.split(":")[1]).read_bytes() == reg.layout.path_of(blob.digest).read_bytes()
    stored = {b["digest"] for b in node.api("GET", "/blobs")["blobs"]}
    assert {b.digest for b in reg.img.blobs} <= stored
    assert node.blob(reg.img.layers[0].digest) == reg.layout.path_of(reg.img.layers[0].digest).read_bytes()
    wait_until(lambda: reg.requests_logged() > before, 10, what="the registry's access log")

    # the CLI pull goes the same way
    pulled = beiran(node, "docker", "pull", "test/img:v1", "--no-load", "--no-progress", "--json")
    assert reg.img.manifest.digest in pulled.stdout
    second = tree_files(_skopeo_via(reg, tmp_path, "again", mirror_of(node))[2])
    assert second == tree_files(out)


@pytest.mark.parametrize("trust", ["other-ca", "system-cas"])
def test_a_node_not_trusting_the_registry_certificate_gets_a_clear_error(cluster, https_registry, tmp_path,
                                                                         trust):
    reg = https_registry
    ca_file = make_ca(tmp_path / "other-pki")[0] if trust == "other-ca" else None
    node = cluster.add(_config(reg, ca_file), peers=None)
    before = reg.requests_logged()
    img = reg.img
    for path in ("/v2/test/img/manifests/v1", f"/v2/test/img/manifests/{img.manifest.digest}",
                 f"/v2/test/img/blobs/{img.layers[0].digest}"):
        status, _, body = node.tcp("GET", path, headers={"Accept": img.manifest.media_type})
        assert status == 502, (path, status, body[:300])
        assert oci_error(body) == "UNAVAILABLE", body[:300]
        message = body.decode()
        assert "certificate" in message.lower() and reg.name in message, message
    status, _, _ = node.tcp("HEAD", "/v2/test/img/manifests/v1")
    assert status == 502

    code, _, _ = _skopeo_via(reg, tmp_path, "mirror", mirror_of(node))
    assert code != 0
    cli = beiran(node, "docker", "pull", "test/img:v1", "--no-load", "--no-progress", check=False)
    assert cli.returncode != 0 and "certificate" in cli.stderr.lower(), cli.stderr

    # nothing stored, no request reached the registry (the handshake failed), the node still serves
    assert node.api("GET", "/blobs")["blobs"] == []
    assert reg.requests_logged() == before
    assert node.alive
    status, _, _ = node.tcp("GET", "/v2/")
    assert status == 200
    assert node.api("GET", "/info")["uuid"] == node.uuid


@pytest.mark.parametrize("problem", ["missing", "not-pem"])
def test_an_unloadable_ca_file_is_a_config_error_not_a_500_per_request(cluster, https_registry, tmp_path,
                                                                        problem):
    """It used to be loaded on first use: every manifest request answered 500 with a traceback."""
    reg = https_registry
    ca_file = tmp_path / "ca.pem"
    if problem == "not-pem":
        ca_file.write_text("not a certificate\n")
    node = cluster.add(_config(reg, ca_file), peers=None)
    docker = next(p for p in node.api("GET", "/status")["plugins"] if p["name"] == "docker")
    assert docker["status"] == "error", docker
    assert "ca_file" in docker["error"] and str(ca_file) in docker["error"] and reg.name in docker["error"], docker
    status, _, body = node.tcp("GET", "/v2/test/img/manifests/v1")
    assert status != 500 and status >= 400, (status, body[:300])
    assert "Uncaught exception" not in node.log()
    assert node.alive and node.api("GET", "/blobs")["blobs"] == []


def test_https_registry_through_the_site_proxy_connect_tunnel(cluster, https_registry, tinyproxy, tmp_path):
    """Behind a corporate proxy (Debian's tinyproxy): TLS to the registry inside a CONNECT tunnel,
    verified end to end against the registry's CA; the proxy sees only the tunnels."""
    reg = https_registry
    node = cluster.add({**_config(reg, reg.ca), "proxy": {"https": tinyproxy.url}}, peers=None)
    code, err, out = _skopeo_via(reg, tmp_path, "proxied", mirror_of(node))
    assert code == 0, f"{err}\n{node.log()[-3000:]}"
    assert (out / "manifest.json").read_bytes() == reg.img.manifest_bytes
    for blob in reg.img.blobs:
        assert (out / blob.digest.split(":")[1]).read_bytes() == reg.layout.path_of(blob.digest).read_bytes()
    requests = tinyproxy.requests()
    assert requests and set(requests) == {f"CONNECT {reg.name} HTTP/1.1"}, requests
