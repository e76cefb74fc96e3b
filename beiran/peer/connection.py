"""One peer connection: hello, availability sync (snapshot or deltas), heartbeats and RPC framing.

The same class serves both ends; `send` and `close` are given by the WebSocket it rides on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from beiran.errors import BeiranError, UpstreamError
from beiran.models.node import NodeStatus
from beiran.tasks import spawn

if TYPE_CHECKING:
    from beiran.peer.manager import PeerManager

log = logging.getLogger("beiran.peer")
BATCH = 5000
MAX_MESSAGE = 16 << 20


class ProtocolError(Exception):
    pass


class PeerConnection:
    def __init__(self, manager: PeerManager, send: Callable[[str], Awaitable[None] | None],
                 close: Callable[[int, str], None], *, outbound: bool, url: str | None = None,
                 nonce: str = "") -> None:
        self.manager = manager
        self.ctx = manager.ctx
        self._send, self._close = send, close
        self.outbound = outbound
        self.url = url
        self.nonce = nonce
        self.uuid: str | None = None
        self.info: dict[str, Any] = {}
        self.status = NodeStatus.CONNECTING
        self.synced = False
        self.closed = asyncio.get_running_loop().create_future()
        self.close_reason = ""
        self.last_rx = time.monotonic()
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []
        self.counts: dict[str, int] = {}

    @property
    def dialer(self) -> str:
        """UUID of the node that opened this connection (for duplicate tie-breaks)."""
        return self.ctx.identity.uuid if self.outbound else (self.uuid or "")

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        self.send({"t": "hello", **self.ctx.identity.to_dict(), "epoch": self.manager.avail.epoch,
                   "seq": self.manager.avail.seq, "proof": None if self.outbound
                   else self.ctx.auth.hello_proof(self.nonce)})

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed.done():
            return
        try:
            res = self._send(json.dumps(msg, separators=(",", ":")))
            if asyncio.isfuture(res) or asyncio.iscoroutine(res):
                fut = asyncio.ensure_future(res)
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        except Exception as exc:  # noqa: BLE001 - a dead socket ends the connection, nothing more
            self.shutdown(f"send failed: {exc}", notify=False)

    # -- incoming ------------------------------------------------------------------------------
    def on_message(self, raw: str | bytes) -> None:
        self.last_rx = time.monotonic()
        if self.status == NodeStatus.LOST:
            self._set_status(NodeStatus.ONLINE if self.synced else NodeStatus.SYNCING)
        try:
            if len(raw) > MAX_MESSAGE:
                raise ProtocolError("message too large")
            msg = json.loads(raw)
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ProtocolError("message must be an object with a type")
            kind = msg["t"]
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.ctx.metrics.peer_messages.labels(kind if kind in _HANDLERS else "other").inc()
            handler = _HANDLERS.get(kind)
            if handler is None:
                raise ProtocolError(f"unknown message type {kind[:20]!r}")
            if kind != "hello" and self.uuid is None:
                raise ProtocolError("first message must be hello")
            handler(self, msg)
        except (ValueError, ProtocolError, KeyError, TypeError, IndexError) as exc:
            log.warning("peer %s sent a bad message (%s); closing", self.uuid or self.url or "?", exc)
            self.shutdown(f"protocol error: {exc}", code=1002)

    def _on_hello(self, msg: dict[str, Any]) -> None:
        if self.uuid is not None:
            raise ProtocolError("second hello")
        node = str(uuidlib.UUID(str(msg["uuid"])))
        if node == self.ctx.identity.uuid:
            self.manager.note_self(self.url)
            self.shutdown("connected to myself", code=4000)
            return
        if self.outbound and not self.ctx.auth.check_hello_proof(self.nonce, msg.get("proof")):
            self.shutdown("peer could not prove the cluster token", code=4001)
            return
        self.uuid = node
        self.info = {k: msg.get(k) for k in ("url", "hostname", "version", "os_type", "architecture",
                                              "addresses", "port", "plugins")}
        if not self.manager.register(self):
            return
        self._set_status(NodeStatus.SYNCING)
        held = self.manager.avail.peers.get(node)
        known = held.epoch == msg.get("epoch") if held else False
        self.send({"t": "sync_req", "epoch": msg.get("epoch") if known else None,
                   "seq": held.seq if known else 0})

    def _on_sync_req(self, msg: dict[str, Any]) -> None:
        avail = self.manager.avail
        ops = avail.ops_since(int(msg.get("seq") or 0)) if msg.get("epoch") == avail.epoch else None
        if ops is not None:
            self.send({"t": "delta", "epoch": avail.epoch, "from": int(msg["seq"]), "seq": avail.seq,
                       "ops": ops, "sync": True})
            return
        entries = avail.snapshot()
        batches = [entries[i:i + BATCH] for i in range(0, len(entries), BATCH)] or [[]]
        for i, batch in enumerate(batches):
            self.send({"t": "snap", "epoch": avail.epoch, "seq": avail.seq, "entries": batch,
                       "first": i == 0, "last": i == len(batches) - 1})

    def _on_snap(self, msg: dict[str, Any]) -> None:
        entries = [(str(d), str(s), None if n is None else int(n)) for d, s, n in msg["entries"]]
        if any(s not in ("c", "p") for _, s, _ in entries):
            raise ProtocolError("bad entry state")
        self.manager.avail.apply_snapshot(self.uuid, str(msg["epoch"]), int(msg["seq"]), entries,
                                          bool(msg.get("first")))
        if msg.get("last"):
            self._synced()

    def _on_delta(self, msg: dict[str, Any]) -> None:
        avail = self.manager.avail
        held = avail.peer(self.uuid)
        start, seq = int(msg["from"]), int(msg["seq"])
        if msg.get("epoch") != held.epoch and not msg.get("sync"):
            self.send({"t": "sync_req", "epoch": None, "seq": 0})
            return
        if start > held.seq and not msg.get("sync"):
            self.send({"t": "sync_req", "epoch": held.epoch, "seq": held.seq})  # a gap: catch up
            return
        held.epoch = str(msg["epoch"])
        ops = msg["ops"]
        for op in ops:
            if op[0] not in ("+", "-", "p") or not isinstance(op[1], str):
                raise ProtocolError("bad delta op")
        avail.apply_ops(self.uuid, ops, seq)
        if msg.get("sync"):
            self._synced()
        elif ops:
            self.manager.availability_changed(self.uuid, ops)

    def _synced(self) -> None:
        if not self.synced:
            self.synced = True
            self.manager.avail.set_online(self.uuid, True)
            self._set_status(NodeStatus.ONLINE)
            self.manager.on_online(self)

    def _on_ping(self, msg: dict[str, Any]) -> None:
        self.send({"t": "pong"})

    def _on_pong(self, msg: dict[str, Any]) -> None:
        pass

    def _on_bye(self, msg: dict[str, Any]) -> None:
        self.shutdown("peer is shutting down", code=1001, notify=False)

    def _on_rpc(self, msg: dict[str, Any]) -> None:
        call_id = int(msg["id"])
        spawn(self._answer(call_id, str(msg["m"]), msg.get("p") or {}), "answering a peer's rpc")

    async def _answer(self, call_id: int, method: str, params: dict[str, Any]) -> None:
        from beiran.peer import protocol

        fn = getattr(protocol, f"rpc_{method}", None)
        try:
            if fn is None or not isinstance(params, dict):
                raise ProtocolError(f"unknown rpc {method[:30]!r}")
            result = await fn(self, **params)
            self.send({"t": "rpc_result", "id": call_id, "r": result})
        except BeiranError as exc:
            self.send({"t": "rpc_error", "id": call_id, "e": {**exc.to_dict(), "status": exc.status}})
        except (ProtocolError, TypeError) as exc:
            self.send({"t": "rpc_error", "id": call_id, "e": {"error": "bad_request", "message": str(exc),
                                                               "status": 400}})
        except Exception as exc:
            log.exception("rpc %s failed", method)
            self.send({"t": "rpc_error", "id": call_id, "e": {"error": "internal_error",
                                                               "message": str(exc), "status": 500}})

    def _on_rpc_result(self, msg: dict[str, Any]) -> None:
        fut = self._calls.pop(int(msg["id"]), None)
        if fut and not fut.done():
            fut.set_result(msg.get("r"))

    def _on_rpc_error(self, msg: dict[str, Any]) -> None:
        fut = self._calls.pop(int(msg["id"]), None)
        err = msg.get("e") or {}
        if fut and not fut.done():
            fut.set_exception(BeiranError(str(err.get("message", "peer error")),
                                          status=int(err.get("status", 502)),
                                          code=str(err.get("error", "peer_error"))))

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> Any:
        """Call `rpc_<method>` on the peer."""
        if self.closed.done():
            raise UpstreamError(f"peer {self.uuid} is not connected")
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        self.send({"t": "rpc", "id": call_id, "m": method, "p": params})
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise UpstreamError(f"peer {self.uuid}: {method} timed out") from None
        finally:
            self._calls.pop(call_id, None)

    # -- liveness ------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        interval = self.ctx.config.heartbeat_interval
        timeout = self.ctx.config.heartbeat_timeout
        while not self.closed.done():
            await asyncio.sleep(interval)
            silent = time.monotonic() - self.last_rx
            if silent > timeout:
                log.warning("peer %s: no heartbeat for %.0fs; dropping", self.uuid, silent)
                self.shutdown("heartbeat timeout")
                return
            if silent > interval * 1.5 and self.status == NodeStatus.ONLINE:
                self._set_status(NodeStatus.LOST)
            self.send({"t": "ping"})

    def _set_status(self, status: NodeStatus) -> None:
        if self.status != status:
            self.status = status
            if self.uuid:
                self.manager.node_status(self.uuid, status, self)

    def shutdown(self, reason: str, code: int = 1000, notify: bool = True) -> None:
        if self.closed.done():
            return
        self.close_reason = reason
        if notify and code in (1000, 1001):
            self.send({"t": "bye"})
        self.closed.set_result(reason)
        for t in self._tasks:
            t.cancel()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"peer connection closed: {reason}"))
        try:
            self._close(code, reason[:100])
        except Exception:  # noqa: BLE001
            pass
        self.manager.unregister(self)

    def on_transport_closed(self) -> None:
        self.shutdown("connection closed", notify=False)


_HANDLERS: dict[str, Callable[[PeerConnection, dict], None]] = {
    "hello": PeerConnection._on_hello, "sync_req": PeerConnection._on_sync_req,
    "snap": PeerConnection._on_snap, "delta": PeerConnection._on_delta,
    "ping": PeerConnection._on_ping, "pong": PeerConnection._on_pong, "bye": PeerConnection._on_bye,
    "rpc": PeerConnection._on_rpc, "rpc_result": PeerConnection._on_rpc_result,
    "rpc_error": PeerConnection._on_rpc_error,
}
