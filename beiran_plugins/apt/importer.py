"""`beiran apt import`: which .debs in an archives dir are the ones apt's records describe.

Runs in the CLI process with python-apt (`apt.Cache` reads the same lists apt-get uses, honouring
APT_CONFIG); a .deb counts only when its SHA256 equals the record's. Imported lazily by cli.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Candidate:
    path: Path
    size: int = 0
    sha256: str = ""
    package: str = ""
    version: str = ""
    arch: str = ""
    skip: str | None = None  # why it is not imported

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "size": self.size, "digest": self.digest if self.sha256 else None,
                "package": self.package, "version": self.version, "arch": self.arch, "skipped": self.skip}


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def open_cache() -> Any:
    import apt  # python-apt: the system's (or APT_CONFIG's) package lists

    try:
        return apt.Cache()
    except Exception as exc:  # noqa: BLE001 - apt raises several kinds; one line for the user
        raise RuntimeError(f"cannot open apt's package cache: {exc}") from None


def match(files: list[Path], cache: Any) -> Iterator[Candidate]:
    """Each file, with its metadata and (when it does not match apt's records) why not."""
    import apt_inst
    import apt_pkg

    native = apt_pkg.config.find("APT::Architecture")
    for path in files:
        c = Candidate(path)
        try:
            c.sha256, c.size = _sha256(path)
            control = apt_pkg.TagSection(apt_inst.DebFile(str(path)).control.extractdata("control"))
            c.package, c.version, c.arch = control["Package"], control["Version"], control["Architecture"]
        except (OSError, SystemError, KeyError, LookupError) as exc:
            c.skip = f"not a readable .deb ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
            yield c
            continue
        name = c.package if c.arch in ("all", native) else f"{c.package}:{c.arch}"
        pkg = cache[name] if name in cache else None
        ver = pkg.versions.get(c.version) if pkg is not None else None
        if ver is None:
            c.skip = "apt has no record of this package version (run apt-get update?)"
        elif not ver.sha256:
            c.skip = "apt's record has no SHA256 for it"
        elif ver.sha256.lower() != c.sha256:
            c.skip = "SHA256 differs from apt's record"
        yield c
