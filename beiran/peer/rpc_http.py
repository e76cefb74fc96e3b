"""`POST /peer/rpc/<method>`: a peer calls one of this node's `rpc_*` without a websocket.

The websocket RPC in request form (calls.py says why). The same rules as the websocket: only the
methods protocol.py defines for peers (calls.handler), the same per-peer cap on calls at once and
message size, the handler's own argument checks. The cluster token's proof names the peer; without
a token the peer's `from` is only a claim, as a websocket hello is.
"""

from __future__ import annotations

from typing import Any

from beiran.access import Access
from beiran.errors import BadRequest, NotFound
from beiran.handlers import JSONEndpoint
from beiran.peer.auth import calling_peer
from beiran.peer.calls import HTTPCaller, handler
from beiran.peer.connection import MAX_MESSAGE


class PeerRPCHandler(JSONEndpoint):
    access = Access.PEER
    max_body_size = MAX_MESSAGE

    async def post(self, method: str) -> None:
        fn = handler(method)
        if fn is None:
            raise NotFound(f"no peer rpc {method[:32]!r}")
        body = self.json_object()
        peer = calling_peer(self.request, body.get("from"))
        params = body.get("params") or {}
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise BadRequest("`params` must be an object")
        calls = self.ctx.peers.calls
        calls.admit(peer)
        try:
            result: Any = await fn(HTTPCaller(self.ctx, peer), **params)
        except TypeError as exc:  # arguments the method does not take (as on the websocket)
            raise BadRequest(f"rpc {method}: {exc}") from None
        finally:
            calls.release(peer)
        self.write_json({"r": result})
