"""`docker save` archives streamed from blobs: manifest.json, the config, one `<hex>/layer.tar` per
layer (the layer blob as stored: docker load and skopeo both take compressed layers).

The size of every member is known up front, so the tar is produced without buffering a layer."""

from __future__ import annotations

import json
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512
MTIME = 0


@dataclass
class Member:
    name: str
    size: int
    data: bytes | None = None  # small generated files
    digest: str | None = None  # blobs, read from the store
    is_dir: bool = False


def plan(config_digest: str, config_size: int, layers: list[tuple[str, int]], repo_tags: list[str]) -> list[Member]:
    """The members of a docker-save archive for one image."""
    cfg_name = config_digest.split(":", 1)[1] + ".json"
    members = [Member(cfg_name, config_size, digest=config_digest)]
    layer_paths = []
    seen: set[str] = set()
    for digest, size in layers:
        hexpart = digest.split(":", 1)[1]
        path = f"{hexpart}/layer.tar"
        layer_paths.append(path)
        if digest in seen:
            continue  # the same layer twice in an image: stored once, listed twice
        seen.add(digest)
        members += [Member(f"{hexpart}/", 0, is_dir=True), Member(path, size, digest=digest)]
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": repo_tags, "Layers": layer_paths}]).encode()
    members.append(Member("manifest.json", len(manifest), data=manifest))
    return members


def header(m: Member) -> bytes:
    info = tarfile.TarInfo(m.name)
    info.size = 0 if m.is_dir else m.size
    info.mtime = MTIME
    info.mode = 0o755 if m.is_dir else 0o644
    info.type = tarfile.DIRTYPE if m.is_dir else tarfile.REGTYPE
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def archive_size(members: list[Member]) -> int:
    return sum(len(header(m)) + (0 if m.is_dir else m.size + len(_padding(m.size))) for m in members) + 2 * BLOCK


async def stream(members: list[Member], read: Callable[[str, int], AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The archive, reading blobs with `read(digest, size)` (an async iterator of chunks)."""
    for m in members:
        yield header(m)
        if m.is_dir:
            continue
        if m.data is not None:
            yield m.data
        else:
            got = 0
            async for chunk in read(m.digest or "", m.size):
                got += len(chunk)
                yield chunk
            if got != m.size:
                raise OSError(f"{m.name}: read {got} bytes, expected {m.size}")
        yield _padding(m.size)
    yield b"\0" * (2 * BLOCK)


def iter_sync(members: list[Member], open_blob: Callable[[str], BinaryIO], chunk: int = 1 << 20) -> Iterator[bytes]:
    """The same archive for blocking consumers (the docker SDK's load runs in a thread)."""
    for m in members:
        yield header(m)
        if m.is_dir:
            continue
        if m.data is not None:
            yield m.data
        else:
            with open_blob(m.digest or "") as fh:
                left = m.size
                while left > 0:
                    data = fh.read(min(chunk, left))
                    if not data:
                        raise OSError(f"{m.name}: file shorter than {m.size} bytes")
                    left -= len(data)
                    yield data
        yield _padding(m.size)
    yield b"\0" * (2 * BLOCK)
