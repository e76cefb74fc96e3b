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
from beiran.peer.availability import COMPLETE, PARTIAL, check_entry

if TYPE_CHECKING:
    from beiran.peer.manager import PeerManager

log = logging.getLogger("beiran.peer")
BATCH = 5000  # entries per snap / ops per delta message (~0.5 MB)
MAX_MESSAGE = 4 << 20  # a peer message larger than this closes the connection
MAX_INBOUND_RPC = 32  # calls a peer may have running here at once
MAX_EPOCH = 64
#: close codes: 1002 protocol error, 4002 duplicate connection (the other one of the pair stays)
PROTOCOL_ERROR, DUPLICATE = 1002, 4002


class ProtocolError(Exception):
    pass


class PeerConnection:
    def __init__(self, manager: PeerManager, send: Callable[[str], Awaitable[None] | None],
                 close: Callable[[int, str], None], *, outbound: bool, url: str | None = None,
                 nonce: str = "", remote_ip: str = "", proved_uuid: str | None = None) -> None:
        self.manager = manager
        self.ctx = manager.ctx
        self._send, self._close = send, close
        self.outbound = outbound
        self.url = url
        self.nonce = nonce
        self.remote_ip = remote_ip  # inbound: the socket's peer address (fetches go there)
        self.proved_uuid = proved_uuid  # inbound: the UUID its signed upgrade request named
        self.uuid: str | None = None
        #: this connection replaced one that was already synced (a duplicate): the node never
        #: went offline, so its holdings stay usable and nothing is announced again
        self.inherits = False
        self.close_code: int | None = None
        self.info: dict[str, Any] = {}
        self.status = NodeStatus.CONNECTING
        self.synced = False
        self.closed = asyncio.get_running_loop().create_future()
        self.close_reason = ""
        self.last_rx = time.monotonic()
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = {}

    @property
    def dialer(self) -> str:
        """UUID of the node that opened this connection (for duplicate tie-breaks)."""
        return self.ctx.identity.uuid if self.outbound else (self.uuid or "")

    @property
    def node(self) -> str:
        """The peer's UUID, for what runs after its hello (no other message is handled before)."""
        if self.uuid is None:
            raise ProtocolError("message before hello")
        return self.uuid

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
        if self.closed.done():
            return  # frames still buffered after the close: nothing from this peer counts any more
        self.last_rx = time.monotonic()
        if self.status == NodeStatus.LOST:
            self._set_status(NodeStatus.ONLINE if self.synced else NodeStatus.SYNCING)
        try:
            msg = decode(raw)
            kind = msg["t"]
            handler = _HANDLERS.get(kind)
            self.ctx.metrics.peer_messages.labels(kind if handler else "other").inc()
            if handler is None:
                raise ProtocolError(f"unknown message type {kind[:20]!r}")
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if kind != "hello" and self.uuid is None:
                raise ProtocolError("first message must be hello")
            handler(self, msg)
        except Exception as exc:  # noqa: BLE001 - whatever a peer sends, the answer is a clean close
            if self.closed.done():
                return
            log.warning("peer %s sent a bad message (%s: %s); closing", self.who, type(exc).__name__,
                        str(exc)[:200])
            self.shutdown(f"protocol error: {type(exc).__name__}", code=PROTOCOL_ERROR)

    @property
    def who(self) -> str:
        return (self.uuid or "")[:8] or self.url or self.remote_ip or "?"

    def _on_hello(self, msg: dict[str, Any]) -> None:
        if self.uuid is not None:
            raise ProtocolError("second hello")
        node = str(uuidlib.UUID(str(msg["uuid"])))
        if node == self.ctx.identity.uuid:
            self.manager.note_self(self.url)
            self.shutdown("connected to myself", code=4000)
            return
        if self.outbound and not self.ctx.auth.check_hello_proof(self.nonce, node, msg.get("proof")):
            self.shutdown("peer could not prove the cluster token", code=4001)
            return
        if not self.outbound and self.ctx.auth.enabled and node != self.proved_uuid:
            # the signed upgrade request named another node: a captured header cannot be reused
            # to join as someone else
            self.shutdown("hello names another node than the signed request", code=4001)
            return
        self.uuid = node
        self.info = {k: msg.get(k) for k in ("url", "hostname", "version", "os_type", "architecture",
                                              "addresses", "port", "plugins")}
        if not self.manager.register(self):
            return
        self._set_status(NodeStatus.ONLINE if self.inherits else NodeStatus.SYNCING)
        held = self.manager.avail.peers.get(node)
        known = held is not None and held.epoch == msg.get("epoch")
        self.send({"t": "sync_req", "epoch": msg.get("epoch") if known else None,
                   "seq": held.seq if held is not None and known else 0})

    def _on_sync_req(self, msg: dict[str, Any]) -> None:
        avail = self.manager.avail
        ops = avail.ops_since(int(msg.get("seq") or 0)) if msg.get("epoch") == avail.epoch else None
        if ops is not None:
            self.send_deltas(int(msg["seq"]), ops, sync=True)
            return
        entries = avail.snapshot()
        batches = [entries[i:i + BATCH] for i in range(0, len(entries), BATCH)] or [[]]
        for i, batch in enumerate(batches):
            self.send({"t": "snap", "epoch": avail.epoch, "seq": avail.seq, "entries": batch,
                       "first": i == 0, "last": i == len(batches) - 1})

    def send_deltas(self, start: int, ops: list[Any], sync: bool = False) -> None:
        """Ops from seq `start` on, in messages of BATCH ops (each op advances the seq by one)."""
        avail = self.manager.avail
        chunks = [ops[i:i + BATCH] for i in range(0, len(ops), BATCH)] or [[]]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self.send({"t": "delta", "epoch": avail.epoch, "from": start, "seq": start + len(chunk),
                       "ops": chunk, **({"sync": True} if sync and last else {})})
            start += len(chunk)

    def _on_snap(self, msg: dict[str, Any]) -> None:
        raw = msg["entries"]
        if not isinstance(raw, list) or len(raw) > BATCH:
            raise ProtocolError(f"snap entries must be a list of at most {BATCH}")
        entries = []
        for d, s, n in raw:
            if s not in (COMPLETE, PARTIAL):
                raise ProtocolError("bad entry state")
            entries.append((d, s, check_entry(d, n)))
        self.manager.avail.apply_snapshot(self.node, _epoch(msg["epoch"]), _seq(msg["seq"]), entries,
                                          bool(msg.get("first")))
        if msg.get("last"):
            self._synced()

    def _on_delta(self, msg: dict[str, Any]) -> None:
        avail = self.manager.avail
        held = avail.peer(self.node)
        start, seq = _seq(msg["from"]), _seq(msg["seq"])
        if msg.get("epoch") != held.epoch and not msg.get("sync"):
            self.send({"t": "sync_req", "epoch": None, "seq": 0})
            return
        if start > held.seq and not msg.get("sync"):
            self.send({"t": "sync_req", "epoch": held.epoch, "seq": held.seq})  # a gap: catch up
            return
        ops = msg["ops"]
        if not isinstance(ops, list) or len(ops) > BATCH:
            raise ProtocolError(f"delta ops must be a list of at most {BATCH}")
        for op in ops:
            if not isinstance(op, list) or op[0] not in ("+", "-", "p"):
                raise ProtocolError("bad delta op")
            check_entry(op[1], None if op[0] == "-" else op[2])
        held.epoch = _epoch(msg["epoch"])
        avail.apply_ops(self.node, ops, seq)
        if msg.get("sync"):
            self._synced()
        elif ops:
            self.manager.availability_changed(self.node, ops)

    def _synced(self) -> None:
        if not self.synced:
            self.synced = True
            self.manager.avail.set_online(self.node, True)
            self._set_status(NodeStatus.ONLINE)
            if self.inherits:
                self.manager.on_resynced(self)
            else:
                self.manager.on_online(self)

    def _on_ping(self, msg: dict[str, Any]) -> None:
        self.send({"t": "pong"})

    def _on_pong(self, msg: dict[str, Any]) -> None:
        pass

    def _on_bye(self, msg: dict[str, Any]) -> None:
        self.shutdown("peer is shutting down", code=1001, notify=False)

    def _on_rpc(self, msg: dict[str, Any]) -> None:
        call_id = _seq(msg["id"])
        if len(self._answering) >= MAX_INBOUND_RPC:
            self.send({"t": "rpc_error", "id": call_id, "e": {
                "error": "busy", "status": 429,
                "message": f"more than {MAX_INBOUND_RPC} calls at once from one peer"}})
            return
        task = asyncio.ensure_future(self._answer(call_id, str(msg["m"]), msg.get("p") or {}))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, call_id: int, method: str, params: dict[str, Any]) -> None:
        from beiran.peer.calls import handler

        fn = handler(method)
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
        opened = time.monotonic()
        while not self.closed.done():
            await asyncio.sleep(interval)
            if self.uuid is None and time.monotonic() - opened > timeout:
                self.shutdown("no hello", code=PROTOCOL_ERROR)  # holding a socket is not joining
                return
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
        if self.close_code is None:
            self.close_code = code
        if notify and code in (1000, 1001):
            self.send({"t": "bye"})
        self.closed.set_result(reason)
        for t in [*self._tasks, *self._answering]:
            t.cancel()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"peer connection closed: {reason}"))
        try:
            self._close(code, reason[:100])
        except Exception:  # noqa: BLE001
            pass
        self.manager.unregister(self)

    def on_transport_closed(self, code: int | None = None) -> None:
        self.close_code = code
        reason = "duplicate connection (closed by the peer)" if code == DUPLICATE else "connection closed"
        self.shutdown(reason, notify=False)


def decode(raw: str | bytes) -> dict[str, Any]:
    """One peer message: a JSON object with a string type, within the size cap."""
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    msg = json.loads(raw)
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("message must be an object with a type")
    return msg


def _seq(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise ProtocolError("sequence numbers and ids are non-negative integers")
    return value


def _epoch(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_EPOCH:
        raise ProtocolError("epoch must be a short string")
    return value


_HANDLERS: dict[str, Callable[[PeerConnection, dict[str, Any]], None]] = {
    "hello": PeerConnection._on_hello, "sync_req": PeerConnection._on_sync_req,
    "snap": PeerConnection._on_snap, "delta": PeerConnection._on_delta,
    "ping": PeerConnection._on_ping, "pong": PeerConnection._on_pong, "bye": PeerConnection._on_bye,
    "rpc": PeerConnection._on_rpc, "rpc_result": PeerConnection._on_rpc_result,
    "rpc_error": PeerConnection._on_rpc_error,
}
