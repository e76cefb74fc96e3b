"""What peers agree on about a packument while the upstream is down: each peer's copy turned into
votes (a hash per version manifest, a version per dist-tag), and the document of only what enough
of them agree on (beiran/offline.py counts the votes)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from beiran import offline
from beiran_plugins.npm.metadata import abbreviate, parse, tarball_file


def peer_doc(body: bytes, name: str, kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A peer's packument and its votes: each version's manifest (hashed, with the tarball URL
    reduced to its file name, which is all this node uses of it) and each dist-tag's version.
    Abbreviated answers are compared (and served) in this node's own abbreviated form, so a peer
    that stored the upstream's and one that abbreviated its full copy can agree."""
    doc = parse(body, name)
    if kind == "abbr":
        doc = abbreviate(doc)
    votes = {}
    for v, manifest in (doc.get("versions") or {}).items():
        m = dict(manifest)
        m["dist"] = {**(m.get("dist") or {}), "tarball": tarball_file(name, v, manifest)}
        canon = json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
        votes[f"version:{v}"] = hashlib.sha256(canon).hexdigest()
    for tag, v in (doc.get("dist-tags") or {}).items():
        votes[f"tag:{tag}"] = v
    return doc, votes


def vouching(verdicts: dict[str, offline.Verdict]) -> list[str]:
    """The peers named for an agreed packument: those that agreed on every version served (else on
    any), so a peer that only shared the dist-tags is not listed as vouching for the manifests."""
    served = [set(v.agreed) for k, v in verdicts.items() if k.startswith("version:") and v.value is not None]
    every = set.intersection(*served) if served else set()
    return sorted(every or set().union(*served))


def agreed_doc(name: str, kind: str, docs: dict[str, dict[str, Any]],
                verdicts: dict[str, offline.Verdict]) -> dict[str, Any]:
    """A packument of only what the peers agree on: agreed versions (each from a peer that agreed)
    and the dist-tags that agree and name one of them."""
    versions: dict[str, Any] = {}
    for key, verdict in verdicts.items():
        if key.startswith("version:") and verdict.value is not None:
            v = key[len("version:"):]
            versions[v] = docs[verdict.agreed[0]]["versions"][v]
    tags = {key[len("tag:"):]: verdict.value for key, verdict in verdicts.items()
            if key.startswith("tag:") and verdict.value in versions}
    doc: dict[str, Any] = {"name": name, "dist-tags": tags, "versions": dict(sorted(versions.items()))}
    if kind == "full":
        doc["_id"] = name
    return doc
