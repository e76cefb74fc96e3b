"""`beiran apt preheat --with-deps`: the closure apt-get install would download, from the verified
indexes one node learned. The resolver's rules in process (python-apt's real parser and version
order), then a real cluster: the closure lands on the nodes, a second node's real apt-get takes every
.deb from the cluster and none from the archive."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from beiran.errors import BadRequest
from beiran_testkit.aptclient import add_nodes, beiran, client_for
from beiran_testkit.aptindex import IndexRows

BASE = "http://archive.test/debian/"


def row(name: str, version: str = "1.0", depends: str | None = "", provides: str = "", required: bool = False,
        arch: str = "all") -> dict[str, Any]:
    return {"package": name, "version": version, "arch": arch, "depends": depends, "provides": provides,
            "required": required, "base": BASE, "path": f"pool/{name}_{version}_{arch}.deb",
            "sha256": hashlib.sha256(f"{name}_{version}_{arch}".encode()).hexdigest(), "size": 100}


def closure(rows: list[dict[str, Any]], *roots: str, arch: str = "amd64", cap: int = 512,
            include_required: bool = False):
    from beiran_plugins.apt import depends

    named = [next(x for x in rows if f"{x['package']}={x['version']}" == spec) for spec in roots]
    return asyncio.run(depends.closure(IndexRows(rows), named, arch, cap, include_required))


def added(out) -> list[str]:
    return [f"{r['package']}={r['version']}" for r in out.added]


ABCDEF = [row("a", depends="b (>= 2) | c"), row("b", "1"), row("b", "2", depends="d"), row("c"),
          row("e", provides="d", depends="f"), row("f", required=True)]


def test_first_satisfiable_alternative_newest_version_virtual_through_provides_required_left_out():
    out = closure(ABCDEF, "a=1.0")
    assert added(out) == ["b=2", "e=1.0"]  # not c (b >= 2 exists), not b 1, not f (required)
    assert [r["needed_by"] for r in out.added] == ["a=1.0", "b=2"]
    assert out.skipped == ["f=1.0"] and out.unresolved == []
    assert added(closure(ABCDEF, "a=1.0", include_required=True)) == ["b=2", "e=1.0", "f=1.0"]
    # only b 1 known: the constraint fails, so the next alternative
    assert added(closure([x for x in ABCDEF if x["version"] != "2"], "a=1.0")) == ["c=1.0"]
    # a required package named on its own is kept
    assert closure(ABCDEF, "f=1.0").skipped == []


def test_the_base_system_is_what_required_packages_need_too_and_a_newer_version_is_still_added():
    """libc6 is Priority: optional in Debian 12, yet every system has it: the required set needs it."""
    rows = [row("dash", required=True, depends="libc6 (>= 2)"), row("libc6", "2"), row("libc6", "3"),
            row("zlib"), row("nginx", depends="libc6 (>= 2), zlib")]
    out = closure(rows, "nginx=1.0")
    assert added(out) == ["zlib=1.0"] and out.skipped == ["libc6=3"]
    assert added(closure(rows, "nginx=1.0", include_required=True)) == ["libc6=3", "zlib=1.0"]
    # the base system's version does not meet it: the one that does is added (apt would upgrade)
    rows[0]["depends"] = "libc6 (<< 3)"
    rows.append(row("new", depends="libc6 (>= 3)"))
    assert added(closure(rows, "new=1.0")) == ["libc6=3"]
    assert closure(rows, "nginx=1.0").skipped == ["libc6=2"]


def test_cycles_versioned_provides_and_multiarch_qualifiers():
    rows = [row("x", depends="y"), row("y", depends="x, z (>= 2)"), row("z", "2", depends="x | y"),
            row("v", depends="mta (>= 2)"), row("exim", provides="mta (= 1)"), row("postfix", provides="mta (= 3)"),
            row("q", depends="tool:any, lib:native, lib32:i386"), row("tool", arch="amd64"),
            row("lib", arch="amd64"), row("lib", arch="i386"), row("lib32", arch="i386"), row("lib32", arch="amd64")]
    assert added(closure(rows, "x=1.0")) == ["y=1.0", "z=2"]  # a cycle ends; z's "x | y" already met
    assert added(closure(rows, "v=1.0")) == ["postfix=1.0"]  # exim provides mta 1: too old
    out = closure(rows, "q=1.0")
    assert [(r["package"], r["arch"]) for r in out.added] == [("tool", "amd64"), ("lib", "amd64"), ("lib32", "i386")]


def test_what_nothing_satisfies_is_named_and_the_rest_still_resolves():
    rows = [row("g", depends="libgone (>= 1) | libold, h"), row("h", depends="b (>= 9)"), row("b", "2"),
            row("s", depends=None), row("t", depends="broken (>= ")]
    out = closure(rows, "g=1.0", "s=1.0", "t=1.0")
    assert added(out) == ["h=1.0"]
    by_pkg = {u["package"]: u for u in out.unresolved}
    assert by_pkg["g=1.0"]["missing"] == ["libgone", "libold"]
    assert by_pkg["g=1.0"]["depends"] == "libgone (>= 1) | libold"
    assert by_pkg["h=1.0"]["depends"] == "b (>= 9)"  # b 2 exists, too old: named, not dropped
    assert "apt-get update" in by_pkg["s=1.0"]["why"]  # learned before Depends were kept
    assert "parse" in by_pkg["t=1.0"]["why"]


def test_the_closure_is_capped_with_an_error_naming_the_cap():
    chain = [row(f"p{i}", depends=f"p{i + 1}") for i in range(20)] + [row("p20")]
    assert len(closure(chain, "p0=1.0", cap=21).added) == 20
    with pytest.raises(BadRequest, match=r"more than 20 packages \(the cap: --max-packages, at most 512\)"):
        closure(chain, "p0=1.0", cap=20)


def test_the_apis_options_are_checked():
    from beiran_plugins.apt.preheat import MAX_CLOSURE, check_options

    assert check_options(True, False, None) == MAX_CLOSURE == 512 and check_options(True, True, 7) == 7
    assert check_options(False, False, None) == 512
    for bad, says in (((1, False, None), "with_deps"), ((True, "yes", None), "include_required"),
                      ((False, True, None), "with_deps"), ((True, False, 0), "1 to 512"),
                      ((True, False, 513), "1 to 512"), ((True, False, "5"), "1 to 512"),
                      ((True, False, True), "1 to 512"), ((False, False, 5), "with_deps")):
        with pytest.raises(BadRequest, match=says):
            check_options(*bad)


# -- a real cluster ------------------------------------------------------------------------------
def _holds(node, digest: str) -> bool:
    status, headers, _ = node.request("HEAD", f"/blobs/{digest}")
    return status == 200 and headers.get("X-Beiran-State") == "complete"


def _dpkg_status(path, *stanzas: str) -> None:
    path.write_text("".join(f"{s}\nStatus: install ok installed\nMaintainer: t <t@beiran.test>\n"
                            "Architecture: all\nDescription: installed\n\n" for s in stanzas))


@pytest.mark.cluster
@pytest.mark.slow
def test_with_deps_puts_what_apt_get_needs_on_the_nodes_and_another_nodes_apt_get_takes_it_all_from_them(
        cluster, repo, server, tmp_path):
    pkgs = {
        "a": repo.add("a", depends="b (>= 2) | c", seed=101),
        "b1": repo.add("b", "1", seed=102),
        "b2": repo.add("b", "2", depends="d", seed=103),
        "c": repo.add("c", seed=104),
        "e": repo.add("e", fields={"Provides": "d", "Pre-Depends": "f"}, seed=105),
        "f": repo.add("f", fields={"Essential": "yes", "Priority": "required"}, seed=106),
        "g": repo.add("g", depends="e, nosuchpkg (>= 1)", seed=107),
    }
    repo.build()
    n1, n2 = add_nodes(cluster, 2, repo, extra=[{"cluster_token": "apt-deps"}] * 2)

    # bad input: one line, non-zero, nothing started
    for args, says in ((["a", "--include-required"], "--with-deps"), (["a", "--with-deps", "--max-packages", "x"],
                                                                      "whole number"),
                       (["a", "--with-deps", "--max-packages", "9999"], "1 to 512")):
        res = beiran(n1, "apt", "preheat", *args, check=False)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and says in lines[0] and "Traceback" not in res.stderr, res

    client_for(tmp_path, "c1", n1, repo, server.url).update()  # node 1 learns the archive
    server.reset()
    res = beiran(n1, "apt", "preheat", "a", "--with-deps", "--max-packages", "2", check=False)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(err) == 1 and "more than 2 packages" in err[0] and "--max-packages" in err[0]
    assert server.count(".deb") == 0  # refused before anything started

    out = json.loads(beiran(n1, "apt", "preheat", "a", "--with-deps", "--json", timeout=120).stdout)
    assert out["failed"] == [] and sorted(out["packages"]) == ["a=1.0", "b=2", "e=1.0"], out
    assert [(r["package"], r["version"], r["needed_by"]) for r in out["added"]] == [("b", "2", "a=1.0"),
                                                                                   ("e", "1.0", "b=2")]
    assert out["skipped"] == ["f=1.0"] and out["unresolved"] == []
    for n in (n1, n2):
        for key in ("a", "b2", "e"):
            assert n.blob(pkgs[key].digest) == pkgs[key].data, (n.name, key)
        for key in ("b1", "c", "f"):
            assert not _holds(n, pkgs[key].digest), (n.name, key)
    assert server.debs_served() == {pkgs[k].filename: 1 for k in ("a", "b2", "e")}

    # node 2's own apt-get (a system that has the Essential f) downloads exactly that, all from the cluster
    c2 = client_for(tmp_path, "c2", n2, repo, server.url)
    _dpkg_status(c2.state / "status", "Package: f\nVersion: 1.0\nEssential: yes\nPriority: required")
    c2.update()
    c2.download("a")
    assert c2.debs() == {pkgs[k].filename: pkgs[k].sha256 for k in ("a", "b2", "e")}
    assert server.debs_served() == {pkgs[k].filename: 1 for k in ("a", "b2", "e")}  # no new archive request

    # a dependency nothing provides: named in a warning, the rest preheated; the table says what it added
    res = beiran(n1, "apt", "preheat", "g", "--with-deps", "--no-progress", timeout=120)
    warn = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "g=1.0" in warn[0] and "nosuchpkg (>= 1)" in warn[0], res.stderr
    assert "Added 1 dependency" in res.stdout and "Left out 1 base-system" in res.stdout, res.stdout
    assert "Preheated g on 2 of 2 nodes" in res.stdout, res.stdout
    assert all(n.blob(pkgs["g"].digest) == pkgs["g"].data for n in (n1, n2))
    got = json.loads(beiran(n1, "apt", "preheat", "g", "--with-deps", "--include-required", "--json",
                            timeout=120).stdout)
    assert got["unresolved"] == [{"package": "g=1.0", "depends": "nosuchpkg (>= 1)", "missing": ["nosuchpkg"],
                                  "why": "nothing in this node's indexes satisfies it"}]
    assert [r["package"] for r in got["added"]] == ["e", "f"] and got["skipped"] == []

    table = beiran(n1, "apt", "preheat", "a", "--with-deps", "--no-progress").stdout
    assert "Added 2 dependencies" in table and "NEEDED BY" in table and "a=1.0" in table, table


def test_indexes_keep_what_resolution_needs_and_ones_learned_before_are_learned_again(tmp_path):
    """parse_packages keeps Pre-Depends + Depends, Provides, Essential/required; a database from
    before those columns forgets its learned indexes once, so the next apt-get update relearns them."""
    from beiran.models.base import create_and_migrate, open_database
    from beiran_plugins.apt import archive, trust
    from beiran_plugins.apt.models import MODELS, AptLearnedIndex, AptPackage

    stanza = "Package: {}\nVersion: 1\nArchitecture: all\nFilename: pool/{}.deb\nSize: 3\nSHA256: " + "ab" * 32
    (tmp_path / "Packages").write_text("\n\n".join([
        stanza.format("e", "e") + "\nPre-Depends: f\nDepends: g (>= 2) | h\nProvides: d (= 1)",
        stanza.format("f", "f") + "\nEssential: yes", stanza.format("r", "r") + "\nPriority: required",
        stanza.format("o", "o") + "\nPriority: optional"]) + "\n")
    rows = {r["package"]: r for r in trust.parse_packages(tmp_path / "Packages", "Packages", tmp_path)}
    assert (rows["e"]["depends"], rows["e"]["provides"], rows["e"]["required"]) == ("f, g (>= 2) | h", "d (= 1)",
                                                                                   False)
    assert rows["f"]["required"] and rows["r"]["required"] and not rows["o"]["required"]
    assert rows["o"]["depends"] == "" and rows["o"]["provides"] == ""

    db = open_database(tmp_path / "db.sqlite")
    try:
        db.execute_sql("CREATE TABLE aptpackage (id INTEGER PRIMARY KEY, base VARCHAR(1024), path VARCHAR(1024), "
                       "sha256 VARCHAR(64), size BIGINT, package VARCHAR(255), version VARCHAR(255), "
                       "arch VARCHAR(255))")
        db.execute_sql("INSERT INTO aptpackage (base, path, sha256, size, package, version, arch) "
                       "VALUES ('b/', 'pool/x.deb', 'ab', 3, 'x', '1', 'all')")
        create_and_migrate(MODELS)
        AptLearnedIndex.create(sha256="cd" * 32, url="http://a/Packages")
        archive._forget_indexes_without_depends()
        assert AptLearnedIndex.select().count() == 0  # learned again by the next update
        AptPackage.update(depends="", provides="", required=False).execute()
        AptLearnedIndex.create(sha256="cd" * 32, url="http://a/Packages")
        archive._forget_indexes_without_depends()
        assert AptLearnedIndex.select().count() == 1  # once only
    finally:
        db.close()
