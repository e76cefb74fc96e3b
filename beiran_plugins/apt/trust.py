"""apt's chain of trust, checked the way apt checks it: gpgv over InRelease (or Release +
Release.gpg) against the configured keyrings, then each index file's hash against the Release that
lists it. Parsing uses python-apt (`apt_pkg.TagSection`/`TagFile`). Everything here blocks: call it
through `ctx.run_blocking`. `apt_pkg` is imported on first use, never at CLI start-up.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ARMOR = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S)
_HASH_FIELDS = {"SHA256": "sha256", "SHA512": "sha512"}
GPGV_TIMEOUT = 60


_apt_pkg_ready = False


def apt_pkg() -> Any:
    global _apt_pkg_ready
    import apt_pkg as mod

    if not _apt_pkg_ready:
        mod.init_config()
        _apt_pkg_ready = True
    return mod


#: why a Release did not verify, as `beiran apt sources`, the log and /metrics tell it
KEY_MISSING, BAD_SIGNATURE = "key_missing", "bad_signature"


@dataclass
class Verification:
    ok: bool
    signer: str | None = None  # fingerprint of the signing key
    error: str | None = None
    text: str | None = None  # the signed content (what the Release fields are read from)
    reason: str | None = None  # KEY_MISSING | BAD_SIGNATURE when not ok
    missing_key: str | None = None  # the key id (or fingerprint) gpgv had no key for
    primary: str | None = None  # fingerprint of the signer's primary key (a subkey signed)


@dataclass
class ReleaseInfo:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_hash: bool = False
    suite: str = ""


def dearmor(data: bytes) -> bytes:
    """ASCII-armored keys (`*.asc` in trusted.gpg.d) -> the binary form gpgv reads."""
    out = b""
    for block in _ARMOR.findall(data):
        body = block.split(b"\n\n", 1)[-1] if b"\n\n" in block else block
        lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.startswith(b"=")]
        out += base64.b64decode(b"".join(lines))
    return out


def prepare_keyrings(files: list[str], workdir: Path) -> list[str]:
    """Keyring paths gpgv can read: binary ones as they are, armored ones dearmored into `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = []
    for f in files:
        try:
            data = Path(f).read_bytes()
        except OSError:
            continue
        if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" in data[:4096] or f.endswith(".asc"):
            binary = dearmor(data)
            if not binary:
                continue
            out = workdir / (hashlib.sha256(data).hexdigest()[:24] + ".gpg")
            if not out.exists():
                out.write_bytes(binary)
            ready.append(str(out))
        elif data:
            ready.append(f)
    return ready


def _gpgv(args: list[str], keyrings: list[str], workdir: Path) -> Verification:
    home = workdir / "gpghome"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not keyrings:  # still run gpgv: its NO_PUBKEY names the key that is missing
        empty = home / "empty.gpg"
        empty.touch()
        keyrings = [str(empty)]
    cmd = ["gpgv", "--homedir", str(home), "--status-fd", "1"]
    for k in keyrings:
        cmd += ["--keyring", k]
    try:
        proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=GPGV_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Verification(False, error=f"gpgv could not run: {exc}", reason=BAD_SIGNATURE)
    return classify_status(proc.returncode, proc.stdout, proc.stderr)


def classify_status(returncode: int, status_text: str, stderr: str) -> Verification:
    """gpgv's --status-fd lines -> signed, key missing (NO_PUBKEY / ERRSIG rc 9: the key id is
    named) or a bad signature (BADSIG, expired or revoked key, any other error)."""
    status = [ln.split() for ln in status_text.splitlines() if ln.startswith("[GNUPG:] ")]
    valid = [f for f in status if f[1] == "VALIDSIG" and len(f) > 2]
    bad = [f for f in status if f[1] in ("BADSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG")
           or (f[1] == "ERRSIG" and f[7:8] != ["9"])]
    missing = [f for f in status if f[1] == "NO_PUBKEY" or (f[1] == "ERRSIG" and f[7:8] == ["9"])]
    if returncode == 0 and valid and not bad and not missing:
        v = valid[0]
        return Verification(True, v[2], primary=v[11] if len(v) > 11 else v[2])
    if bad:
        return Verification(False, error=" ".join(bad[0][1:4]), reason=BAD_SIGNATURE)
    if missing:
        # ERRSIG carries the issuer fingerprint (field 8) when the signature has one: the better id
        errsig = [f for f in missing if f[1] == "ERRSIG"]
        key = errsig[0][8] if errsig and len(errsig[0]) > 8 and errsig[0][8] != "-" else missing[0][2]
        return Verification(False, error=f"key {key} not found", reason=KEY_MISSING, missing_key=key)
    lines = stderr.strip().splitlines()
    return Verification(False, error=lines[-1] if lines else "no valid signature", reason=BAD_SIGNATURE)


def signer_allowed(v: Verification, fingerprints: list[str]) -> bool:
    """`signed-by` fingerprints: the signing key, or (without a trailing `!`) its primary key."""
    if not fingerprints:
        return True
    for fp in fingerprints:
        exact = fp.endswith("!")
        fp = fp.rstrip("!").upper()
        if (v.signer or "").upper() == fp or (not exact and (v.primary or "").upper() == fp):
            return True
    return False


def verify_clearsigned(path: Path, keyrings: list[str], workdir: Path) -> Verification:
    """InRelease: the signature, and the text it actually covers (never what is around it)."""
    fd, out = tempfile.mkstemp(dir=workdir, prefix="signed-")
    os.close(fd)
    try:
        os.unlink(out)
        v = _gpgv(["--output", out, str(path)], keyrings, workdir)
        if v.ok:
            v.text = Path(out).read_text(errors="replace")
        return v
    finally:
        if os.path.exists(out):
            os.unlink(out)


def verify_detached(data: Path, sig: Path, keyrings: list[str], workdir: Path) -> Verification:
    v = _gpgv([str(sig), str(data)], keyrings, workdir)
    if v.ok:
        v.text = data.read_text(errors="replace")
    return v


def unsigned_text(path: Path) -> str:
    """The Release fields of an InRelease whose signature we do not check (trusted_sources)."""
    text = path.read_text(errors="replace")
    if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        text = body.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
        text = "\n".join(ln[2:] if ln.startswith("- ") else ln for ln in text.splitlines()) + "\n"
    return text


def parse_release(text: str) -> ReleaseInfo:
    section = apt_pkg().TagSection(text)
    info = ReleaseInfo(by_hash=section.get("Acquire-By-Hash", "no").lower() == "yes",
                       suite=section.get("Suite", "") or section.get("Codename", ""))
    for fld, alg in _HASH_FIELDS.items():
        for line in (section.get(fld) or "").splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            entry = info.entries.setdefault(parts[2], {"size": int(parts[1])})
            entry[alg] = parts[0].lower()
    return info


def file_hash(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    h, n = hashlib.new(algorithm), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _tagfile(path: Path, name: str, workdir: Path) -> Any:
    """apt picks the decompressor from the file name: give it one through a symlink."""
    pkg = apt_pkg()
    link_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="parse-"))
    link = link_dir / name
    os.symlink(os.path.abspath(path), link)
    return pkg.TagFile(str(link)), link_dir


def parse_packages(path: Path, name: str, workdir: Path) -> list[dict[str, Any]]:
    """Pool files (Filename, SHA256, Size) a Packages file describes, with what dependency
    resolution needs (Pre-Depends + Depends, Provides, Essential/required)."""
    tf, link_dir = _tagfile(path, name, workdir)
    rows = []
    try:
        for s in tf:
            fn, sha, size = s.get("Filename"), s.get("SHA256"), s.get("Size")
            if not fn or not sha or not (size or "").isdigit() or len(sha) != 64:
                continue
            depends = ", ".join(d for d in (s.get("Pre-Depends"), s.get("Depends")) if d and d.strip())
            rows.append({"path": fn, "sha256": sha.lower(), "size": int(size), "package": s.get("Package", ""),
                         "version": s.get("Version", ""), "arch": s.get("Architecture", ""),
                         "depends": depends, "provides": s.get("Provides") or "",
                         "required": s.get("Essential") == "yes" or s.get("Priority") == "required"})
    finally:
        _cleanup(link_dir)
    return rows


def parse_sources(path: Path, name: str, workdir: Path) -> list[dict[str, Any]]:
    """Source package files (Directory + Checksums-Sha256) a Sources file describes."""
    tf, link_dir = _tagfile(path, name, workdir)
    rows = []
    try:
        for s in tf:
            directory = (s.get("Directory") or "").strip("/")
            for line in (s.get("Checksums-Sha256") or "").splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1].isdigit() and len(parts[0]) == 64 and "/" not in parts[2]:
                    rows.append({"path": f"{directory}/{parts[2]}" if directory else parts[2],
                                 "sha256": parts[0].lower(), "size": int(parts[1]),
                                 "package": s.get("Package", ""), "version": s.get("Version", ""),
                                 "arch": "source"})
    finally:
        _cleanup(link_dir)
    return rows


def _cleanup(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
