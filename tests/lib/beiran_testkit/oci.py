"""Test images without a Docker engine: OCI layouts written with the stdlib, pushed with skopeo.

Layers are deterministic (fixed mtimes, gzip without timestamps), so the same call always gives the
same digests. zstd layers use raw (stored) blocks: a valid zstd frame any decoder reads, no library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hello_elf(message: bytes = b"hello from beiran\n") -> bytes:
    """A static x86-64 Linux executable that writes `message` and exits 0 (no toolchain needed)."""
    code = (b"\xb8\x01\x00\x00\x00"          # mov eax, 1 (write)
            b"\xbf\x01\x00\x00\x00"          # mov edi, 1 (stdout)
            b"\x48\x8d\x35\x10\x00\x00\x00"  # lea rsi, [rip+16] (the message after this code)
            + b"\xba" + struct.pack("<I", len(message))  # mov edx, len
            + b"\x0f\x05"                     # syscall
            b"\xb8\x3c\x00\x00\x00"          # mov eax, 60 (exit)
            b"\x31\xff"                      # xor edi, edi
            b"\x0f\x05")                     # syscall
    base, hdr = 0x400000, 64 + 56
    total = hdr + len(code) + len(message)
    ehdr = (b"\x7fELF\x02\x01\x01" + b"\x00" * 9
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + hdr, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return ehdr + phdr + code + message


def zstd_stored(data: bytes) -> bytes:
    """A zstd frame of raw blocks (RFC 8878 section 3.1.1): valid zstd, no compression."""
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    out += bytes([0x00, 7 << 3])  # no content size, window 2**17
    block = 1 << 17
    chunks = [data[i:i + block] for i in range(0, len(data), block)] or [b""]
    for i, chunk in enumerate(chunks):
        last = 1 if i == len(chunks) - 1 else 0
        out += (last | (len(chunk) << 3)).to_bytes(3, "little") + chunk
    return bytes(out)


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(tar: bytes, compression: str | None, level: int = 6) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=level, mtime=0)
    if compression == "zstd":
        return zstd_stored(tar)
    return tar


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass
class Image:
    """What was built: the manifest and the blobs it refers to."""

    manifest: Blob
    config: Blob
    layers: list[Blob]
    platform: dict[str, str]
    manifest_bytes: bytes = b""

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


@dataclass
class Layout:
    """An OCI image layout directory (blobs/sha256, index.json, oci-layout)."""

    root: Path
    refs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(self, data: bytes, media_type: str) -> Blob:
        digest = sha256(data)
        path = self.root / "blobs" / "sha256" / digest.split(":")[1]
        if not path.exists():
            path.write_bytes(data)
        return Blob(digest, len(data), media_type)

    def path_of(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":")[1]

    def image(self, layers: list[tuple[dict[str, bytes], str | None]], *, arch: str = "amd64",
              os: str = "linux", variant: str | None = None, cmd: list[str] | None = None,
              docker: bool = False, raw_layers: list[bytes] | None = None) -> Image:
        """One image manifest. `layers` are (files, compression) with compression gzip|zstd|None;
        `raw_layers` are ready-made uncompressed tars (for big bench layers)."""
        blobs, diff_ids = [], []
        for files, comp in layers:
            tar = make_tar(files)
            diff_ids.append(sha256(tar))
            if docker:
                mt = DOCKER_LAYER if comp == "gzip" else "application/vnd.docker.image.rootfs.diff.tar"
            else:
                mt = OCI_LAYER + {"gzip": "+gzip", "zstd": "+zstd", None: ""}[comp]
            blobs.append(self.put(compress(tar, comp), mt))
        for tar in raw_layers or []:
            diff_ids.append(sha256(tar))
            blobs.append(self.put(tar, "application/vnd.docker.image.rootfs.diff.tar" if docker else OCI_LAYER))
        platform = {"architecture": arch, "os": os, **({"variant": variant} if variant else {})}
        config = {**platform, "created": "2024-01-01T00:00:00Z",
                  "config": {"Cmd": cmd or ["/hello"], "Env": ["PATH=/"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}
        cfg = self.put(json.dumps(config, sort_keys=True).encode(), DOCKER_CONFIG if docker else OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                    "config": cfg.descriptor(), "layers": [b.descriptor() for b in blobs]}
        raw = json.dumps(manifest, indent=3).encode()  # not compact: bytes must be served as-is
        mb = self.put(raw, manifest["mediaType"])
        return Image(mb, cfg, blobs, platform, raw)

    def index(self, images: list[Image], docker: bool = False) -> Blob:
        mt = DOCKER_LIST if docker else OCI_INDEX
        doc = {"schemaVersion": 2, "mediaType": mt,
               "manifests": [im.manifest.descriptor(platform=im.platform) for im in images]}
        return self.put(json.dumps(doc, indent=2).encode(), mt)

    def tag(self, blob: Blob, name: str) -> None:
        self.refs = [r for r in self.refs if r["annotations"]["org.opencontainers.image.ref.name"] != name]
        self.refs.append(blob.descriptor(annotations={"org.opencontainers.image.ref.name": name}))
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}, indent=2))

    def push(self, name: str, dest: str, all_platforms: bool = False, timeout: float = 300) -> None:
        """`skopeo copy oci:ROOT:name docker://dest`, keeping the manifest bytes (and digests)."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
        if all_platforms:
            cmd.append("--all")
        cmd += [f"oci:{self.root}:{name}", f"docker://{dest}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo push of {name} failed: {proc.stderr.strip()}")


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible bytes."""
    import random

    rng, step = random.Random(seed), 1 << 24
    return b"".join(rng.randbytes(min(step, size - i)) for i in range(0, size, step))
