"""sources.list(5) as apt reads it, for the one question the proxy asks: which keys check a release
directory's Release (`signed-by`: files, fingerprints, an embedded deb822 key block)."""

from __future__ import annotations

from pathlib import Path

from beiran_plugins.apt.sources import Sources
from beiran_plugins.apt.trust import BAD_SIGNATURE, KEY_MISSING, classify_status, signer_allowed

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"


def test_one_line_deb822_mirror_paths_and_disabled_stanzas(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [ arch=amd64 signed-by=/etc/apt/keyrings/a.gpg ] http://deb.example.org/debian bookworm main\n"
        "deb-src http://src.example.org/debian bookworm main\n")
    (parts / "b.sources").write_text(
        "Types: deb deb-src\nURIs: http://b.example.org/b http://b2.example.org/b\nSuites: stable testing\n"
        f"Components: main\nSigned-By: {FPR.lower()}!, /usr/share/keyrings/b.gpg\n\n"
        "Types: deb\nURIs: http://127.0.0.1:3142/https/c.example.org/c/\nSuites: ./\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mDMEZ\n -----END PGP PUBLIC KEY BLOCK-----\n\n"
        "Types: deb\nURIs: http://d.example.org/d\nSuites: x\nEnabled: no\nSigned-By: /d.gpg\n")
    (parts / "ignored.txt").write_text("deb http://e.example.org/e x main\n")
    src = Sources(str(tmp_path), proxy_port=3142)

    known, a = src.signed_by("http://deb.example.org/debian/dists/bookworm/")
    assert known and a is not None and a.files == ("/etc/apt/keyrings/a.gpg",) and not a.fingerprints
    assert src.signed_by("http://src.example.org/debian/dists/bookworm/") == (True, None)
    for uri in ("http://b.example.org/b", "http://b2.example.org/b"):
        for suite in ("stable", "testing"):
            known, b = src.signed_by(f"{uri}/dists/{suite}/")
            assert known and b is not None
            assert b.files == ("/usr/share/keyrings/b.gpg",) and b.fingerprints == (FPR + "!",)
    known, c = src.signed_by("https://c.example.org/c/")  # a mirror path through this proxy, flat repo
    assert known and c is not None and c.key_block is not None
    assert c.key_block.splitlines()[1] == "" and "mDMEZ" in c.key_block
    assert src.signed_by("http://d.example.org/d/dists/x/") == (False, None)
    assert src.signed_by("http://e.example.org/e/dists/x/") == (False, None)


def test_gpgv_status_tells_a_missing_key_from_a_bad_signature() -> None:
    missing = classify_status(2, f"[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG AB12CD34EF56AB78 22 8 01 1700000000 9 {FPR}\n"
                                 "[GNUPG:] NO_PUBKEY AB12CD34EF56AB78\n", "gpgv: Can't check signature")
    assert not missing.ok and missing.reason == KEY_MISSING and missing.missing_key == FPR
    assert FPR in (missing.error or "")
    bad = classify_status(1, "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG AB12CD34EF56AB78 Someone\n", "BAD signature")
    assert not bad.ok and bad.reason == BAD_SIGNATURE and bad.missing_key is None
    sub = "1111111111111111111111111111111111111111"
    good = classify_status(0, f"[GNUPG:] GOODSIG X\n[GNUPG:] VALIDSIG {sub} 2024-01-01 1700000000 0 4 0 22 8 01 "
                              f"{FPR}\n", "")
    assert good.ok and good.signer == sub and good.primary == FPR
    assert signer_allowed(good, [FPR]) and not signer_allowed(good, [FPR + "!"]) and signer_allowed(good, [sub + "!"])
    assert signer_allowed(good, []) and not signer_allowed(good, ["2" * 40])
