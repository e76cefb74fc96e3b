"""Nodes that refuse this node, or that this node refuses, listed with why.

Why: a node whose dial is refused (another cluster token, this node's address outside its
peer_cidrs, or a TLS certificate this node does not trust) never says hello, so it had no node
record, and `beiran node list --all` did not show it at all: the operator who probed it saw one
error, then nothing. Each dial target keeps why it was last refused, and `node list` shows it as
a state ("refused: token").
"""

from __future__ import annotations

import ssl
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from beiran.peer.connection import PeerConnection
    from beiran.peer.manager import PeerTarget

TOKEN = "token"  # it refused our token (HTTP 401), or could not prove its own (close 4001)
PEER_CIDRS = "peer_cidrs"  # its peer_cidrs leave this node's address out (HTTP 403)
CERTIFICATE = "certificate"  # an https:// peer whose certificate no CA this node trusts signed
#: close code of an outbound connection whose peer could not prove the cluster token (connection.py)
NO_PROOF = 4001
_BY_STATUS = {401: TOKEN, 403: PEER_CIDRS}
HINTS = {TOKEN: "the nodes have different cluster_token values: set the same on every node",
         PEER_CIDRS: "its peer_cidrs leave this node's address out: add this node's address there",
         CERTIFICATE: "its TLS certificate is not signed by a CA this node trusts (the system's, or "
                      "the file in SSL_CERT_FILE)"}


def of_dial_error(exc: BaseException) -> str:
    """Why a failed dial was a refusal ("" when it was not one: unreachable, a timeout ...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CERTIFICATE
    return _BY_STATUS.get(getattr(exc, "code", None) or 0, "")


def of_closed(conn: PeerConnection) -> str:
    """Why a connection this node dialed was closed before it synced, when that was a refusal."""
    synced = conn.synced or conn.inherits
    return TOKEN if not synced and conn.outbound and conn.close_code == NO_PROOF else ""


def note(target: PeerTarget, refused: str) -> None:
    """The last dial's outcome: refused (and when), or not ("")."""
    target.refused = refused
    if refused:
        target.refused_at = time.time()


def claimed(info: dict[str, Any]) -> dict[str, str]:
    """What a probed node's /info said of itself (unproven: shown, never used to decide)."""
    try:
        node = str(uuidlib.UUID(str(info.get("uuid"))))
    except ValueError:
        node = ""
    return {"uuid": node, "hostname": str(info.get("hostname") or "")[:255],
            "version": str(info.get("version") or "")[:64]}


def rows(targets: Iterable[PeerTarget], connected: Iterable[str]) -> list[dict[str, Any]]:
    """`/nodes` rows of the targets refused at their last dial and not connected otherwise."""
    live = set(connected)
    found = []
    for t in targets:
        if not t.refused or t.is_self or (t.uuid and t.uuid in live):
            continue
        found.append({"uuid": t.uuid or t.claimed.get("uuid") or "", "url": t.url,
                      "hostname": t.claimed.get("hostname", ""), "version": t.claimed.get("version", ""),
                      "status": f"refused: {t.refused}", "refused": t.refused, "found_by": sorted(t.found_by),
                      "membership": None, "last_seen": t.refused_at})
    return found
