"""Fuzzing the peer message decoder and handlers (issue 12): whatever a peer sends, the connection
handler neither raises nor grows past its bounds; a bad message is a clean close."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
import uuid as uuidlib
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiran.config import Config
from beiran.metrics import Metrics
from beiran.peer.auth import PeerAuth
from beiran.peer.availability import Availability
from beiran.peer.connection import _HANDLERS, MAX_INBOUND_RPC, PeerConnection

CAP = 50
ME = str(uuidlib.uuid4())
PEER = str(uuidlib.uuid4())
DIGEST = st.one_of(st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True), st.text(max_size=80))


class _Manager:
    """The PeerManager surface a connection uses, with a real Availability."""

    def __init__(self) -> None:
        self.ctx = SimpleNamespace(identity=SimpleNamespace(uuid=ME, to_dict=lambda: {"uuid": ME}),
                                   auth=PeerAuth(None, ME), metrics=METRICS, config=Config())
        self.avail = Availability(peer_max_blobs=CAP)

    def register(self, conn: PeerConnection) -> bool:
        return True

    def unregister(self, conn: PeerConnection) -> None:
        if conn.uuid and conn.close_code == 1002:
            self.avail.forget(conn.uuid)

    def node_status(self, *args: Any) -> None: ...
    def on_online(self, conn: PeerConnection) -> None: ...
    def on_resynced(self, conn: PeerConnection) -> None: ...
    def availability_changed(self, *args: Any) -> None: ...
    def note_self(self, url: Any) -> None: ...


METRICS = Metrics()
HELLO = json.dumps({"t": "hello", "uuid": PEER, "epoch": "e", "seq": 0, "port": 1})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40)
entries = st.lists(st.lists(st.one_of(DIGEST, st.sampled_from(["c", "p", "x"]), st.integers(), st.none()),
                            min_size=0, max_size=4), max_size=40)
ops = st.lists(st.lists(st.one_of(st.sampled_from(["+", "-", "p", "?"]), DIGEST, st.integers(), st.none()),
                        max_size=4), max_size=40)
messages = st.one_of(
    st.fixed_dictionaries({"t": st.sampled_from([*sorted(_HANDLERS), "junk"])},
                          optional={"entries": st.one_of(entries, json_values), "ops": st.one_of(ops, json_values),
                                    "epoch": st.one_of(st.text(max_size=70), json_values),
                                    "seq": st.one_of(st.integers(), json_values),
                                    "from": st.one_of(st.integers(), json_values),
                                    "first": st.booleans(), "last": st.booleans(), "sync": st.booleans(),
                                    "id": st.one_of(st.integers(), json_values),
                                    "m": st.sampled_from(["ping", "nope", "fetch", "__init__"]),
                                    "p": json_values, "uuid": st.one_of(st.just(PEER), st.text(max_size=40))}),
    json_values)
raw_messages = st.one_of(messages.map(json.dumps), st.text(max_size=200),
                         st.binary(max_size=200), st.integers(1, 3000).map(lambda n: "[" * n + "]" * n))


async def _run(raws: list[Any]) -> tuple[PeerConnection, _Manager]:
    mgr = _Manager()
    sent: list[int] = [0]
    conn = PeerConnection(mgr, lambda s: sent.__setitem__(0, sent[0] + 1), lambda code, reason: None,
                          outbound=False)
    conn.on_message(HELLO)
    for raw in raws:
        conn.on_message(raw)  # must never raise
        held = mgr.avail.peers.get(PEER)
        assert held is None or len(held.blobs) <= CAP + 5000  # one message past the cap at most
        if held is not None and conn.closed.done() and conn.close_code == 1002:
            assert PEER not in mgr.avail.peers or not mgr.avail.peers[PEER].blobs
        assert len(conn.counts) <= len(_HANDLERS)
        assert len(conn._answering) <= MAX_INBOUND_RPC
    await asyncio.sleep(0)
    conn.shutdown("test over", notify=False)
    await asyncio.sleep(0)
    return conn, mgr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_messages, min_size=1, max_size=15))
def test_decoder_never_crashes_the_handler(raws):
    conn, mgr = asyncio.run(_run(raws))
    assert conn.closed.done()
    held = mgr.avail.peers.get(PEER)
    assert held is None or len(held.blobs) <= CAP


def test_decoder_memory_stays_bounded_under_a_long_flood():
    """Thousands of valid and invalid messages on one connection: memory does not keep growing."""

    def flood(i: int) -> list[str]:
        out = []
        for j in range(200):
            k = i * 200 + j
            out.append(json.dumps({"t": "delta", "epoch": "e", "from": k, "seq": k + 1,
                                   "ops": [["+", f"sha256:{k:064x}", 1]]}))
            out.append(json.dumps({"t": "rpc", "id": k, "m": "nope", "p": {}}))
            out.append(json.dumps({"t": "ping"}))
        return out

    async def main() -> tuple[int, int, int]:
        mgr = _Manager()
        conn = PeerConnection(mgr, lambda s: None, lambda code, reason: None, outbound=False)
        conn.on_message(HELLO)
        conn.on_message('{"t": "snap", "epoch": "e", "seq": 0, "entries": [], "first": true, "last": true}')
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(10):
            for raw in flood(i):
                conn.on_message(raw)
            await asyncio.sleep(0)  # let the rpc tasks answer
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        held = len(mgr.avail.peers.get(PEER).blobs) if PEER in mgr.avail.peers else 0
        return grown, held, int(conn.closed.done())
    grown, held, closed = asyncio.run(main())
    print(f"\nflood of 6000 messages: {grown / 1024:.0f} KiB retained, {held} entries held, closed={closed}")
    # 2000 deltas of one new blob each: past the cap of 50 the peer is dropped and forgotten
    assert closed and held == 0
    assert grown < 2 << 20
