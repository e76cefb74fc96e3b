"""`POST /peer/fetch`: a peer asks this node, the cold blob's owner, to fetch it from the origin.

The websocket RPC `fetch` (protocol.py) in request form, for clusters above full_mesh_max where
peers keep no websocket to each other. Same rules: the proof of the cluster token names the peer
(without a token, the peer's `from` is only a claim, as a websocket hello is), the source is
resolved against this node's config, and the peer's caps apply.
"""

from __future__ import annotations

from beiran.access import Access
from beiran.errors import BadRequest
from beiran.handlers import JSONEndpoint
from beiran.peer.auth import calling_peer
from beiran.peer.protocol import serve_fetch


class PeerFetchHandler(JSONEndpoint):
    access = Access.PEER

    async def post(self) -> None:
        body = self.json_object()
        peer = calling_peer(self.request, body.get("from"))
        size = body.get("size")
        source = body.get("source")
        digest = body.get("digest")
        if not isinstance(digest, str):
            raise BadRequest("`digest` must be a string")
        self.write_json(await serve_fetch(self.ctx, peer, digest, size, source))
