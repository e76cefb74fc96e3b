"""What bench/cluster_sim reports, as properties at 200 nodes: the real membership and directory code
for every node in one process on simulated time (beiran_testkit.simnet), a few seconds of CPU.

The SWIM paper's guarantees checked here: a crashed member is declared dead by every live member
(within the bench's 10 s goal), and with nothing lost no live member is ever suspected or declared
dead; and the directory's: a new holding is listed by all 3 of its owners within the bench's 1 s
goal and a lookup from any node finds it."""

from __future__ import annotations

from collections.abc import Callable

from beiran.peer.membership import DEAD, SUSPECT
from beiran_testkit.simnet import SimCluster

N = 200


def test_two_hundred_nodes_find_the_dead_never_accuse_the_living_and_list_a_new_holding_at_its_owners():
    c = SimCluster(N, seed=31)
    accused: list[tuple[str, str, str]] = []  # (observer, live member, state) never expected

    def watch(observer: str) -> Callable[[str, str | None, str], None]:
        def changed(mid: str, old: str | None, new: str) -> None:
            if new in (SUSPECT, DEAD) and c.index[mid] not in c.crashed:
                accused.append((observer, mid, new))
        return changed

    for m in c.members:
        m.on_change(watch(m.id))
    c.run(5)

    victims = [17, 101, 188]
    for v in victims:
        c.crash(v)
    dead_everywhere = c.run_until(lambda: all(c.members[i].state(c.members[v].id) == DEAD
                                              for i in c.live() for v in victims), limit=10)
    assert dead_everywhere is not None, "a crashed node still alive or suspect somewhere after 10 s"

    digest = "sha256:" + "ab" * 32
    holder = 42
    c.dirs[holder].add(digest)
    owners = c.ranker.owners(digest, c.members[0])
    assert len(owners) == 3 and not {c.index[o] for o in owners} & set(victims)
    listed = c.run_until(lambda: all(c.members[holder].id in c.dirs[c.index[o]].table.get(digest, ())
                                     for o in owners), limit=1, step=0.01)
    assert listed is not None, "the 3 owners did not all list the new holder within 1 s"
    asker = next(i for i in c.live() if c.members[i].id not in owners and i != holder)
    got: list[list[str]] = []
    c.dirs[asker].lookup(digest, got.append)
    c.run(0.5)
    assert got == [[c.members[holder].id]]

    c.run(60)  # a simulated minute more of probing: still nobody alive is accused
    assert accused == []
    assert all(c.members[i].state(c.members[j].id) not in (SUSPECT, DEAD) for i in c.live() for j in c.live())
