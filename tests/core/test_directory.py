"""The one-hop who-has directory, the cold-blob owner chain and the bounded link pool, with real
membership underneath, on a virtual clock (see beiran_testkit.simnet)."""

from __future__ import annotations

import json
import random

import pytest

from beiran.fetch import placement
from beiran.peer.directory import OwnerChain
from beiran.peer.links import HolderPicker, LinkPool, PoolExhausted
from beiran.peer.membership import DEAD, SwimConfig
from beiran_testkit.simnet import SimCluster


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def lookup(c: SimCluster, i: int, d: str) -> list[str] | None:
    got: list[list[str]] = []
    c.dirs[i].lookup(d, got.append)
    c.run(0.5)
    return got[0] if got else None


def test_lookup_finds_every_holder_in_one_round_trip():
    c = SimCluster(30, loss=0.01, seed=21)
    holders = {d: random.Random(d).sample(range(30), 3) for d in range(20)}
    for d, hs in holders.items():
        for h in hs:
            c.dirs[h].add(digest(d))
    c.run(1)
    for d, hs in holders.items():
        asker = next(i for i in range(30) if i not in hs)
        got = lookup(c, asker, digest(d))
        assert sorted(got) == sorted(c.members[h].id for h in hs)
        # the k owners by rendezvous rank hold the entry; nobody else does
        owners = placement.top(digest(d), [m.id for m in c.members], 3)
        keepers = {c.members[i].id for i in range(30) if digest(d) in c.dirs[i].table}
        assert keepers == set(owners)
    assert lookup(c, 0, digest(999)) == []
    # a removal reaches the owners too
    d0 = holders[0][0]
    c.dirs[d0].remove(digest(0))
    c.run(1)
    assert c.members[d0].id not in lookup(c, next(i for i in range(30) if i not in holders[0]), digest(0))


def test_holdings_go_to_owners_in_batches_that_fit_a_datagram():
    from beiran.peer.directory import DirectoryConfig

    c = SimCluster(4, seed=25)
    sent: list[bytes] = []
    d = c.dirs[0]
    d.cfg = DirectoryConfig(batch_ops=16, max_message=1119)
    original = d._send
    d._send = lambda dst, data: (sent.append(data), original(dst, data))
    for n in range(200):
        d.add(f"sha512:{n:0128x}")  # npm's digests: ~140 bytes an op, 8 to a datagram
    c.run(2)
    batches = [json.loads(m) for m in sent if m.startswith(b'["d+"')]
    assert max(len(m) for m in sent) <= 1119
    assert sum(len(b[3]) for b in batches) == sum(1 for n in range(200) for o in d._owners[f"sha512:{n:0128x}"]
                                                  if o != c.members[0].id)
    assert max(len(b[3]) for b in batches) < 16  # the byte bound cut them, not the op count
    for n in range(200):  # and every owner listed every holding
        for o in d._owners[f"sha512:{n:0128x}"]:
            assert c.members[0].id in c.dirs[c.index[o]].table[f"sha512:{n:0128x}"]


def test_only_about_k_over_n_of_the_keys_move_when_a_node_joins():
    n, per = 50, 60
    c = SimCluster(n, seed=22)
    rng = random.Random(5)
    for i in range(n):
        for d in rng.sample(range(2000), per):
            c.dirs[i].add(digest(d))
    c.run(2)
    before = sum(d.stats["moved"] for d in c.dirs)
    new = c.join(seed=1)
    c.run(10)
    moved = sum(d.stats["moved"] for d in c.dirs) - before
    held = n * per
    assert 0 < moved < held * 3 * 3 / (n + 1)  # expected k/N of the keys: 3/51 of them, ~176
    # the new node keeps exactly the keys it ranks top-3 for, with all their holders
    everyone = [m.id for m in c.members]
    mine = {d for i in range(n) for d in c.dirs[i].local if c.members[new].id in placement.top(d, everyone, 3)}
    assert set(c.dirs[new].table) == mine
    for d in mine:
        assert c.dirs[new].table[d] == {c.members[i].id for i in range(n) if d in c.dirs[i].local}


def test_lookups_find_live_holders_after_churn_and_never_name_dead_ones():
    c = SimCluster(40, loss=0.01, seed=23)
    rng = random.Random(6)
    for i in range(40):
        for d in rng.sample(range(100), 10):
            c.dirs[i].add(digest(d))
    c.run(2)
    for victim in (3, 11, 17, 29):
        c.crash(victim)
    c.join(seed=0)
    c.join(seed=5)
    assert c.run_until(lambda: all(c.members[i].state(c.members[v].id) == DEAD for i in c.live()
                                   for v in (3, 11, 17, 29)), limit=30) is not None
    c.run(3)
    live_ids = {c.members[i].id for i in c.live()}
    for d in range(100):
        truth = {c.members[i].id for i in c.live() if digest(d) in c.dirs[i].local}
        asker = rng.choice(c.live())
        got = lookup(c, asker, digest(d))
        assert set(got) <= live_ids
        if truth - {c.members[asker].id}:
            assert got, d
            assert set(got) <= truth


def test_a_dead_holder_leaves_the_answers_when_membership_says_so_not_before():
    c = SimCluster(12, seed=24, swim=SwimConfig(dead_keep=20))
    c.dirs[4].add(digest(1))
    c.dirs[5].add(digest(1))
    c.run(1)
    owner = next(i for i in range(12) if c.members[i].id == placement.top(digest(1), [m.id for m in c.members], 1)[0])
    asker = next(i for i in range(12) if i not in (4, 5, owner))
    c.crash(4)
    c.run(0.2)  # crashed, not yet detected: still listed (no TTL, no guess)
    assert c.members[4].id in c.dirs[owner].table.get(digest(1), ())
    assert c.run_until(lambda: c.members[owner].state(c.members[4].id) == DEAD, limit=30) is not None
    assert lookup(c, asker, digest(1)) == [c.members[5].id]
    c.run(30)  # membership forgets the dead member: its entries are freed
    assert c.members[4].id not in c.dirs[owner].table.get(digest(1), ())
    assert c.members[4].id not in c.dirs[owner]._held_by


def test_a_holder_cannot_place_more_than_its_cap_on_an_owner():
    c = SimCluster(4, seed=25)
    owner = c.dirs[0]
    owner.cfg.per_holder_max = 100
    holder = c.members[1].id
    for b in range(5):
        ops = [["+", digest(b * 1000 + i)] for i in range(50)]
        owner.on_message(holder, json.dumps(["d+", b, "e1", ops]).encode())
    assert owner.entries == 100 and owner.stats["dropped"] == 150
    owner.on_message("stranger", json.dumps(["d+", 9, "e1", [["+", digest(1)]]]).encode())
    assert owner.entries == 100  # not a member: nothing kept
    owner.on_message(holder, json.dumps(["d+", 10, "e2", []]).encode())
    assert owner.entries == 0  # a new process of that holder: its old claims are void


def test_owner_chain_walks_rank_one_two_three_as_owners_die():
    c = SimCluster(10, seed=26)
    c.run(1)
    d = digest(7)
    ranked = placement.rank(d, [m.id for m in c.members])
    asker = next(i for i in range(10) if c.members[i].id not in ranked[:3])
    chain = OwnerChain(c.dirs[asker], d)
    assert chain.current() == ranked[0]
    idx = {m.id: i for i, m in enumerate(c.members)}
    c.crash(idx[ranked[0]])
    assert c.run_until(lambda: c.members[asker].state(ranked[0]) == DEAD, limit=30) is not None
    assert chain.current() == ranked[1]
    assert chain.failed(ranked[1]) == ranked[2]  # rank 2 refused: rank 3
    assert chain.failed(ranked[2]) is None  # nobody left: the requester fetches itself


def test_link_pool_is_bounded_lru_and_never_closes_a_busy_link():
    closed: list[str] = []
    pool: LinkPool[str] = LinkPool(lambda n: f"link-{n}", lambda n, link: closed.append(n), max_open=3)
    pool.acquire("a")
    pool.get("b")
    pool.get("c")
    pool.get("b")  # b is now most recently used
    pool.get("d")  # evicts c: a is busy, b recent
    assert closed == ["c"] and len(pool) == 3
    pool.get("e")
    assert closed == ["c", "b"]
    pool.acquire("d")
    pool.acquire("e")
    with pytest.raises(PoolExhausted):
        pool.get("f")
    pool.release("a")
    pool.get("f")
    assert closed[-1] == "a" and pool.peak == 3


def test_holder_picker_spreads_requests_over_holders():
    picker = HolderPicker(random.Random(1))
    picks = [picker.pick(["h1", "h2", "h3", "h4"]) for _ in range(8)]
    assert sorted(picks) == ["h1", "h1", "h2", "h2", "h3", "h3", "h4", "h4"]
    picker.done("h1")
    picker.done("h1")
    assert picker.pick(["h1", "h2"]) == "h1"


def test_a_resent_addition_does_not_undo_a_later_removal():
    c = SimCluster(6, seed=27)
    c.run(1)
    holder = c.dirs[2]
    sent = c.links.send
    dropped = []

    def lossy(src, dst, data, extra=0.0):
        if not dropped and b'"+"' in data:
            dropped.append(data)  # the first batch (the addition) is lost
            return
        sent(src, dst, data, extra)
    c.links.send = lossy
    holder.add(digest(5))
    c.run(0.1)  # the addition went out (and was lost); now the holder drops the blob
    holder.remove(digest(5))
    c.run(3)  # the removal arrives first, then the resend of the lost batch
    assert dropped and holder.stats["resent"] >= 1
    assert all(c.members[2].id not in d.table.get(digest(5), ()) for d in c.dirs)
