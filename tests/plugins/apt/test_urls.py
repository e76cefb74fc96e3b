"""What the proxy accepts as an upstream URL, and what a peer may name in a fetch source."""

from __future__ import annotations

import pytest

from beiran.errors import BadRequest, Forbidden, NotFound
from beiran_plugins.apt.urls import Kind, classify, parse_request, safe_relpath


@pytest.mark.parametrize("uri, url, mode", [
    ("http://deb.debian.org/debian/dists/bookworm/InRelease",
     "http://deb.debian.org/debian/dists/bookworm/InRelease", "proxy"),
    ("http://Example.ORG:80/repo/./InRelease", "http://example.org/repo/InRelease", "proxy"),
    ("/https/deb.example.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb",
     "https://deb.example.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb", "mirror"),
    ("/http/[::1]:8080/d/dists/x/main/binary-amd64/Packages.xz", "http://[::1]:8080/d/dists/x/main/binary-amd64/"
     "Packages.xz", "mirror"),
    ("/https/h.example/d/pool/g/gcc/libstdc++6_12.2.0-14~deb12u1_amd64.deb",
     "https://h.example/d/pool/g/gcc/libstdc++6_12.2.0-14~deb12u1_amd64.deb", "mirror"),
])
def test_requests_map_to_upstream_urls(uri: str, url: str, mode: str) -> None:
    t = parse_request(uri)
    assert (t.url, t.mode) == (url, mode)


@pytest.mark.parametrize("uri, error", [
    ("relative", BadRequest), ("/ftp/host/x/InRelease", NotFound), ("/https//debian/InRelease", BadRequest),
    ("/https/host/a/../../etc/passwd", BadRequest), ("/https/host/a/%2e%2e/b.deb", BadRequest),
    ("http://host/a%2f..%2fb.deb", BadRequest), ("http://u:p@host/x.deb", BadRequest),
    ("http://host/x.deb?y=1", BadRequest), ("/https/ho st/x.deb", BadRequest), ("/https/host:99999/x.deb", BadRequest),
    ("/https/host/a\\b.deb", BadRequest), ("/https/host/", NotFound),
])
def test_bad_requests_are_refused(uri: str, error: type) -> None:
    with pytest.raises(error):
        parse_request(uri)


def test_allow_hosts_limits_upstreams() -> None:
    assert parse_request("http://deb.debian.org/debian/InRelease", ["*.debian.org"]).host == "deb.debian.org"
    with pytest.raises(Forbidden):
        parse_request("http://169.254.169.254/latest/InRelease", ["*.debian.org"])


@pytest.mark.parametrize("path, kind", [
    ("/d/dists/s/InRelease", Kind.RELEASE), ("/d/dists/s/Release.gpg", Kind.RELEASE),
    ("/d/dists/s/main/binary-amd64/Packages.gz", Kind.INDEX), ("/d/dists/s/main/i18n/Translation-en.bz2", Kind.INDEX),
    ("/d/dists/s/main/Contents-amd64.gz", Kind.INDEX), ("/flat/Packages", Kind.INDEX),
    ("/d/dists/s/main/binary-amd64/by-hash/SHA256/" + "a" * 64, Kind.BY_HASH),
    ("/d/pool/main/h/hello/hello_1_amd64.deb", Kind.PACKAGE), ("/d/pool/main/h/hello/hello_1.dsc", Kind.SOURCE),
])
def test_kinds(path: str, kind: Kind) -> None:
    assert classify(path) == kind


@pytest.mark.parametrize("path", ["/etc/passwd", "/index.html", "/d/dists/s/by-hash/MD5Sum/" + "a" * 32,
                                  "/d/dists/s/main/by-hash/SHA256/short"])
def test_non_apt_files_are_forbidden(path: str) -> None:
    with pytest.raises(Forbidden):
        classify(path)


@pytest.mark.parametrize("path", ["/abs/x.deb", "pool/../x.deb", "pool/./x.deb", "pool/x.txt",
                                  "dists/s/InRelease", "", 5, "pool//x.deb"])
def test_peer_sources_must_name_a_content_addressed_file(path) -> None:
    with pytest.raises(BadRequest):
        safe_relpath(path)
    assert safe_relpath("pool/main/h/hello/hello_1_all.deb") == "pool/main/h/hello/hello_1_all.deb"
