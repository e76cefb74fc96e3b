"""SWIM + Lifeguard membership against the paper's properties, on a virtual clock: the real protocol
code for every node in one process, an in-memory network with loss, simulated minutes in seconds."""

from __future__ import annotations

import json

from beiran.peer.membership import ALIVE, DEAD, SUSPECT, Membership, SharedStart, SwimConfig
from beiran_testkit.simnet import SimClock, SimCluster


def states(c: SimCluster, target: int) -> set[str | None]:
    mid = c.members[target].id
    return {c.members[i].state(mid) for i in c.live() if i != target}


def test_crashed_member_is_declared_dead_by_every_member():
    c = SimCluster(30, loss=0.01, seed=3)
    c.run(5)
    c.crash(7)
    took = c.run_until(lambda: states(c, 7) == {DEAD}, limit=30)
    assert took is not None, states(c, 7)
    # and nobody else was declared dead on the way
    for i in c.live():
        assert all(c.members[i].state(c.members[j].id) == ALIVE for j in c.live())


def test_suspected_live_member_refutes_with_a_higher_incarnation():
    c = SimCluster(20, seed=4)
    c.run(2)
    target = c.members[5]
    # one member claims (wrongly) that node 5 is suspect: gossip it to a few nodes
    rumour = json.dumps(["g", [["s", target.id, 0, c.members[1].id]]]).encode()
    for i in (1, 2, 3):
        c.members[i].on_message(c.members[1].addr, rumour)
    assert c.members[2].state(target.id) == SUSPECT
    c.run(30)
    assert target.inc >= 1 and target.stats["refute"] >= 1
    assert states(c, 5) == {ALIVE}
    assert {c.members[i].members[target.id].inc for i in c.live()} == {target.inc}
    assert sum(m.stats["dead"] for m in c.members) == 0


def test_no_member_falsely_declared_dead_in_an_hour_at_five_percent_loss():
    c = SimCluster(8, loss=0.05, seed=5)
    c.run(3600)
    assert sum(m.stats["dead"] for m in c.members) == 0
    assert all(states(c, i) == {ALIVE} for i in c.live())
    # the loss did cause suspicions, and they were refuted: the property was exercised
    assert sum(m.stats["suspect"] for m in c.members) > 0
    assert sum(m.stats["refute"] for m in c.members) > 0


def test_join_is_disseminated_to_every_member_and_the_joiner_learns_everyone():
    c = SimCluster(40, loss=0.01, seed=6)
    c.run(2)
    new = c.join(seed=3)
    new_id = c.members[new].id
    took = c.run_until(lambda: all(c.members[i].state(new_id) == ALIVE for i in c.live()), limit=10)
    assert took is not None
    assert len(c.members[new].live_ids()) == 41
    # a news item was sent a bounded number of times, then dropped from every queue
    c.run(10)
    assert all(not m._bq for m in c.members)


def test_restarted_node_refutes_its_own_death():
    c = SimCluster(15, seed=7)
    c.run(2)
    old_id = c.members[4].id
    c.crash(4)
    assert c.run_until(lambda: states(c, 4) == {DEAD}, limit=30) is not None
    again = c.join(seed=0, node_id=old_id)  # same UUID, new process, incarnation 0
    took = c.run_until(lambda: all(c.members[i].state(old_id) == ALIVE for i in c.live() if i != again),
                       limit=15)
    assert took is not None
    assert c.members[again].inc >= 1


def test_a_node_that_cannot_send_raises_its_own_health_score_and_harms_no_one_else():
    c = SimCluster(12, seed=8)
    c.run(2)
    deaf = c.members[2]
    original = c.net.send

    def send(src, dst, data, extra=0.0):
        if src != deaf.addr:
            original(src, dst, data, extra)
    c.net.send = send  # its outbound link is broken; it still hears everyone
    c.run(40)
    assert deaf.awareness >= 1  # Lifeguard: it slowed itself down instead of accusing others
    others = [i for i in c.live() if i != 2]
    for i in others:
        for j in others:
            assert c.members[i].state(c.members[j].id) == ALIVE, (i, j)


def test_bad_messages_are_dropped_and_gossip_cannot_add_unapproved_addresses():
    c = SimCluster(3, seed=9)
    m = c.members[0]
    m.addr_ok = lambda addr: addr.startswith("10.")
    for junk in (b"", b"{", b"[]", b'["zz"]', b'["g", [["a", 5, 0, "x"]]]', b'["g", "x"]',
                 b'["g", [["a", "' + b"x" * 100 + b'", 0, "10.0.0.9:1"]]]',
                 b'["p", 1]', json.dumps(["y", [["a", "n", -1, "10.0.0.9:1"]]]).encode(),
                 b"[" * 100000):
        m.on_message("10.0.0.1:7777", junk)
    assert m.stats["bad"] == 10
    m.on_message("10.0.0.1:7777", json.dumps(["g", [["a", "evil", 0, "192.0.2.1:80"]]]).encode())
    assert m.state("evil") is None  # a peer cannot make this node contact an address it did not allow
    m.on_message("10.0.0.1:7777", json.dumps(["g", [["a", "good", 0, "10.0.9.9:7777"]]]).encode())
    assert m.state("good") == ALIVE


def test_an_adopted_start_is_the_bootstrapped_view_and_a_change_on_one_node_stays_on_it():
    """The simulator's thousands of nodes share their starting member objects: the view must be the
    one bootstrap() gives, and a node's change must not leak into the others or the start."""
    clock = SimClock()
    everyone = [(f"n{i}", f"10.0.0.{i}:7777") for i in range(6)]
    start = SharedStart(everyone, 0.0)
    adopted = [Membership(mid, addr, lambda *_: None, clock) for mid, addr in [*everyone, ("new", "10.0.0.9:1")]]
    booted = [Membership(mid, addr, lambda *_: None, clock) for mid, addr in [*everyone, ("new", "10.0.0.9:1")]]
    for a, b in zip(adopted, booted, strict=True):
        a.adopt(start)
        b.bootstrap(everyone)
        assert (a.view_fp, a.sync_fp, sorted(a.live_ids())) == (b.view_fp, b.sync_fp, sorted(b.live_ids()))
        a.start()
    news = ["g", [["d", "n3", 0, "n2"], ["a", "n4", 2, "10.0.0.4:7777"]]]
    adopted[1].on_message("10.0.0.2:7777", json.dumps(news).encode())
    assert (adopted[1].state("n3"), adopted[1].members["n4"].inc) == (DEAD, 2)
    assert all(m.state("n3") == ALIVE and m.members["n4"].inc == 0 for m in adopted if m is not adopted[1])
    assert (start.members["n3"].state, start.members["n4"].inc) == (ALIVE, 0)
    assert adopted[1].sync_fp != adopted[2].sync_fp and adopted[2].sync_fp == booted[2].sync_fp


def test_member_table_is_capped():
    c = SimCluster(2, seed=10, swim=SwimConfig(max_members=50))
    m = c.members[0]
    for batch in range(10):
        ups = [["a", f"n{batch}-{i}", 0, f"10.1.{batch}.{i}:1"] for i in range(20)]
        m.on_message(c.members[1].addr, json.dumps(["g", ups]).encode())
    assert len(m.members) == 50


def test_the_same_code_runs_on_an_asyncio_loop_over_real_udp_sockets():
    """Transport-agnostic for real: five members on loopback UDP sockets, the asyncio loop as the
    scheduler; one socket closed (a crash) and the other four declare it dead."""
    import asyncio

    cfg = SwimConfig(probe_interval=0.1, probe_timeout=0.04, gossip_interval=0.05)

    class Endpoint(asyncio.DatagramProtocol):
        member = None

        def datagram_received(self, data, addr):
            if self.member is not None:
                self.member.on_message(f"{addr[0]}:{addr[1]}", data)

    async def main():
        loop = asyncio.get_running_loop()
        socks = []
        for _ in range(5):
            transport, proto = await loop.create_datagram_endpoint(Endpoint, local_addr=("127.0.0.1", 0))
            socks.append((transport, proto))
        addrs = ["{}:{}".format(*t.get_extra_info("sockname")[:2]) for t, _ in socks]
        members = []
        for i, (transport, proto) in enumerate(socks):
            def send(dst, data, t=transport):
                host, port = dst.rsplit(":", 1)
                t.sendto(data, (host, int(port)))
            proto.member = Membership(f"n{i}", addrs[i], send, loop, cfg)
            members.append(proto.member)
        members[0].start()
        for m in members[1:]:
            m.start(seeds=[addrs[0]])
        for _ in range(100):
            await asyncio.sleep(0.05)
            if all(len(m.live_ids()) == 5 for m in members):
                break
        assert all(len(m.live_ids()) == 5 for m in members)
        socks[3][0].close()
        members[3].stop()
        for _ in range(200):
            await asyncio.sleep(0.05)
            if all(m.state("n3") == DEAD for i, m in enumerate(members) if i != 3):
                break
        states = [m.state("n3") for i, m in enumerate(members) if i != 3]
        others = [m.state(f"n{j}") for i, m in enumerate(members) if i != 3 for j in range(5) if j not in (i, 3)]
        for m in members:
            m.stop()
        for t, _ in socks:
            t.close()
        return states, others

    states, others = asyncio.run(main())
    assert states == [DEAD] * 4
    assert set(others) == {ALIVE}


def test_suspicion_timeout_falls_from_max_to_min_with_confirmations_and_news_is_sent_a_bounded_number_of_times():
    from beiran.peer.gossip import BroadcastQueue, retransmit_limit, suspicion_timeout

    waits = [suspicion_timeout(c, 3, 3.0, 18.0) for c in range(5)]
    assert waits[0] == 18.0 and waits[3] == waits[4] == 3.0
    assert waits == sorted(waits, reverse=True)
    assert suspicion_timeout(0, 0, 3.0, 18.0) == 3.0  # two-node cluster: nobody can confirm

    q = BroadcastQueue()
    q.put(["s", "m1", 4, "a"])
    q.put(["s", "m1", 4, "b"], key="m1|b")  # a confirmation rides along
    q.put(["a", "m1", 5, "10.0.0.1:1"])  # newer news about m1 voids both
    limit = retransmit_limit(4, 1000)
    assert limit == 16  # 4 x ceil(log10(1001))
    sent = [q.take(1400, limit) for _ in range(20)]
    assert sum(len(s) for s in sent) == limit
    assert all(s == [["a", "m1", 5, "10.0.0.1:1"]] for s in sent[:limit])
    assert len(q) == 0


def test_a_leaving_member_is_dead_everywhere_without_waiting_for_suspicion():
    c = SimCluster(25, seed=12)
    c.run(2)
    c.members[9].leave()
    took = c.run_until(lambda: states(c, 9) == {DEAD}, limit=20, step=0.05)
    assert took is not None and took < 1.0  # gossip time, not a suspicion timeout (>= 2 s here)
    assert sum(m.stats["suspect"] for m in c.members) == 0


def test_a_large_member_list_goes_in_paced_parts_that_fit_and_few_transfers_run_at_once():
    """3,000 members answer a join in ~190 parts of <= max_packet bytes, 16 at a time; six joiners
    at once get 4 transfers (the others ask again), and each joiner receives the whole list."""
    clock = SimClock()
    sent: list[tuple[float, str, bytes]] = []
    m = Membership("me", "10.0.0.1:7777", lambda dst, data: sent.append((clock.now, dst, data)), clock)
    m.bootstrap([(f"node-{i:05d}", f"10.1.{i // 250}.{i % 250}:7777") for i in range(3000)])
    m.start()
    for j in range(6):
        m.on_message(f"10.9.0.{j}:7777", json.dumps(["j", ["a", f"new-{j}", 0, f"10.9.0.{j}:7777"]]).encode())
    assert {dst for _, dst, _ in sent} == {f"10.9.0.{j}:7777" for j in range(4)}
    assert len(sent) == 4 * 16  # the first burst to each
    clock.run_until(5.0)
    state = [(t, dst, json.loads(d)) for t, dst, d in sent if json.loads(d)[0] == "y"]
    assert max(len(d) for _, _, d in sent) <= m.cfg.max_packet
    for j in range(4):
        parts = [msg for _, dst, msg in state if dst == f"10.9.0.{j}:7777"]
        assert len(parts) > 100
        assert {u[1] for p in parts for u in p[1]} >= {f"node-{i:05d}" for i in range(3000)}
    times = sorted({t for t, dst, _ in state if dst == "10.9.0.0:7777"})
    assert len(times) >= len(parts) // 16 and times[-1] > times[0]  # paced, not all at once
    # the refused joiners are answered when they ask again
    m.on_message("10.9.0.5:7777", json.dumps(["j", ["a", "new-5", 0, "10.9.0.5:7777"]]).encode())
    assert any(dst == "10.9.0.5:7777" for _, dst, _ in sent)
