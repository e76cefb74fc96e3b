"""SWIM's settings: how often a node probes and gossips, how long it waits, and the bounds it
keeps on what peers can make it hold. Defaults follow memberlist's LAN profile, scaled to a daemon
that also serves blobs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SwimConfig:
    probe_interval: float = 0.5  # one probe per node per interval, whatever the cluster size
    probe_timeout: float = 0.2  # direct ack wait before asking `indirect_checks` others
    indirect_checks: int = 3
    gossip_interval: float = 0.2  # gossip rounds run only while there is news to spread
    gossip_nodes: int = 3
    retransmit_mult: int = 4  # each update is sent retransmit_mult * max(2, ceil(log10(n + 1))) times
    suspicion_mult: float = 2.0  # min suspicion timeout = mult * log10(n) * probe_interval
    suspicion_max_mult: float = 6.0  # max = max_mult * min, shrinking with confirmations
    suspicion_confirmations: int = 3  # independent suspicions that bring the timeout to its min
    awareness_max: int = 8  # Lifeguard local health: timeouts scale by (score + 1)
    dead_keep: float = 60.0  # dead records kept (so stale alive gossip cannot revive them)
    sync_interval: float = 30.0  # anti-entropy: compare view fingerprints with one random member
    #: every message fits in this many bytes, sent or received (the daemon sets its datagram's room:
    #: transport.py); piggy-backed gossip fills a message up to it; a full member list goes in parts
    max_packet: int = 1100
    max_updates: int = 96  # updates taken from one message (a full one holds ~75 of the shortest)
    state_burst: int = 16  # full-state parts sent at once to one member, then a pause,
    state_pace: float = 0.01  # so a large list does not overflow its receive buffer
    state_sends: int = 4  # full-state transfers running at once (joins and anti-entropy ask for them)
    max_members: int = 20_000  # a peer's gossip cannot grow the member table past this
