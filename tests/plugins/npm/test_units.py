"""The npm plugin's pure parts: names and paths, packument checks and rewrites, ranges, lockfiles."""

from __future__ import annotations

import pytest

from beiran.errors import BadRequest, NotFound
from beiran_plugins.npm.cli import lockfile_entries
from beiran_plugins.npm.metadata import (
    MalformedPackument,
    abbreviate,
    check_packument,
    rewrite,
    sha1_of,
    sha512_of,
    sri,
    version_for_file,
)
from beiran_plugins.npm.names import parse_path, validate_name
from beiran_plugins.npm.upstream import packument_headers_kind
from beiran_plugins.npm.warm import pick_version, registry_dep, split_spec

SRI = "sha512-" + "A" * 86 + "=="


@pytest.mark.parametrize("name", ["left-pad", "@scope/pkg", "a.b_c-d", "x" * 214, "@s/x.y", "0"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("../x", ".."), ("@s/..", ".."), ("Upper", "lower case"), ("x" * 215, "longer"), ("a b", "spaces"),
    (".x", "start"), ("_x", "start"), ("@s", "scoped"), ("@s/a/b", "scoped"), ("a/b", "only scoped"),
    ("node_modules", "reserved"), ("a%2fb", "url-safe"), ("a~b!", "url-safe"), ("", "empty"),
])
def test_invalid_names(name, why):
    with pytest.raises(BadRequest) as exc:
        validate_name(name)
    assert why in exc.value.message


def test_uppercase_allowed_for_legacy_names_when_configured():
    assert validate_name("JSONStream", allow_uppercase=True) == "JSONStream"


def test_parse_path():
    assert parse_path("@s/pkg") == parse_path("@s/pkg/")
    assert (parse_path("@s/pkg").kind, parse_path("@s/pkg").name) == ("packument", "@s/pkg")
    v = parse_path("left-pad/1.3.0")
    assert (v.kind, v.name, v.ref) == ("version", "left-pad", "1.3.0")
    assert parse_path("left-pad/latest").ref == "latest"
    t = parse_path("@s/pkg/-/pkg-1.0.0.tgz")
    assert (t.kind, t.name, t.ref) == ("tarball", "@s/pkg", "pkg-1.0.0.tgz")
    # replace-registry-host=always appends the lockfile URL's whole path: prefixes are ignored
    assert parse_path("npm/@s/pkg/-/pkg-1.0.0.tgz") == t
    assert parse_path("api/npm/remote/left-pad/-/left-pad-1.3.0.tgz").name == "left-pad"
    assert parse_path("-/v1/search").kind == "special"
    with pytest.raises(NotFound):
        parse_path("left-pad/1.0.0/extra")
    with pytest.raises(BadRequest):
        parse_path("left-pad/-/../../x.tgz")


def test_accept_header_kinds():
    assert packument_headers_kind(None) == "full"
    assert packument_headers_kind("application/json") == "full"
    assert packument_headers_kind("application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*") == "abbr"


def doc() -> dict:
    return {"name": "p", "dist-tags": {"latest": "1.0.0"}, "readme": "long", "time": {"modified": "t"},
            "versions": {"1.0.0": {"name": "p", "version": "1.0.0", "scripts": {"postinstall": "x"},
                                   "readme": "r", "dependencies": {"q": "^1"},
                                   "dist": {"integrity": SRI, "shasum": "a" * 40,
                                            "tarball": "https://up.example/p/-/p-1.0.0.tgz"}},
                         "0.9.0": {"name": "p", "version": "0.9.0",
                                   "dist": {"shasum": "B" * 40, "tarball": "https://up.example/p/-/odd-name.tgz"}}}}


def test_abbreviate_and_rewrite():
    small = abbreviate(doc())
    assert set(small) == {"name", "dist-tags", "versions", "modified"}
    assert small["versions"]["1.0.0"]["hasInstallScript"] is True
    assert "readme" not in small["versions"]["1.0.0"] and small["versions"]["1.0.0"]["dependencies"] == {"q": "^1"}
    out = rewrite(doc(), "p", "http://n1:8888/npm")
    assert out["versions"]["1.0.0"]["dist"]["tarball"] == "http://n1:8888/npm/p/-/p-1.0.0.tgz"
    assert out["versions"]["0.9.0"]["dist"]["tarball"] == "http://n1:8888/npm/p/-/odd-name.tgz"
    assert version_for_file(doc(), "p", "odd-name.tgz") == "0.9.0"
    assert version_for_file(doc(), "p", "p-1.0.0.tgz") == "1.0.0"
    assert version_for_file(doc(), "p", "p-2.0.0.tgz") is None


def test_integrity_parsing():
    d = sha512_of({"integrity": f"sha1-xyz= {SRI}?opt"})
    assert d is not None and sri(str(d)) == SRI
    assert sha512_of({"integrity": "sha512-notbase64!"}) is None
    assert sha1_of({"shasum": "B" * 40}) == "b" * 40 and sha1_of({"shasum": "zz"}) is None


@pytest.mark.parametrize("bad", [[], {"name": "other"}, {"versions": []}, {"versions": {"1.0.0": 3}},
                                 {"versions": {"1.0.0": {"dist": "x"}}}, {"dist-tags": {"latest": 1}}])
def test_malformed_packuments(bad):
    with pytest.raises(MalformedPackument):
        check_packument(bad, "p")


def test_ranges_and_specs():
    d = {"dist-tags": {"latest": "1.2.0", "next": "2.0.0-rc.1"},
         "versions": {v: {} for v in ("1.0.0", "1.2.0", "1.3.0", "2.0.0-rc.1", "0.1.0")}}
    assert pick_version(d, "^1.0.0") == "1.2.0"  # latest wins while it satisfies
    assert pick_version(d, ">=1.2.1") == "1.3.0"
    assert pick_version(d, "next") == "2.0.0-rc.1"
    assert pick_version(d, "~0.1") == "0.1.0"
    assert pick_version(d, "^3") is None
    assert split_spec("@s/p@^1") == ("@s/p", "^1") and split_spec("p") == ("p", "latest")
    assert registry_dep("npm:other@^2") == ("other", "^2")
    assert registry_dep("github:x/y")[0] == "" and registry_dep("user/repo")[0] == ""
    assert registry_dep(">=1 <2") == (None, ">=1 <2")


def test_lockfile_entries_v1_and_v3():
    v3 = {"packages": {"": {}, "node_modules/a": {"version": "1.0.0", "resolved": "https://r/a/-/a-1.0.0.tgz"},
                       "node_modules/a/node_modules/@s/b": {"version": "2.0.0", "integrity": SRI},
                       "node_modules/l": {"link": True}, "node_modules/g": {"version": "1.0.0",
                                                                            "resolved": "git+https://x/y.git"}}}
    assert [(e["name"], e["version"]) for e in lockfile_entries(v3)] == [("a", "1.0.0"), ("@s/b", "2.0.0")]
    v1 = {"dependencies": {"a": {"version": "1.0.0", "dependencies": {"b": {"version": "npm:c@2.0.0"}}}}}
    assert [(e["name"], e["version"]) for e in lockfile_entries(v1)] == [("a", "1.0.0"), ("c", "2.0.0")]
