"""Full member lists (a join's answer, anti-entropy's push) sent as datagram-sized parts.

Why paced and capped: at thousands of members a list is hundreds of datagrams; sent at once they
overflow the receiver's socket buffer and are lost together, and every join or view mismatch asks
for one. So parts go `state_burst` at a time, one transfer per destination and `state_sends` at
once: what others' requests cost this node is bounded, and a request refused now is asked again
(joins retry each probe interval, anti-entropy each sync interval).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from beiran.peer.gossip import Scheduler
from beiran.peer.swim_config import SwimConfig
from beiran.peer.swim_wire import state_parts


class StateTransfers:
    def __init__(self, send: Callable[[str, bytes], None], sched: Scheduler, cfg: SwimConfig) -> None:
        self._send, self.sched, self.cfg = send, sched, cfg
        self._out: dict[str, deque[bytes]] = {}  # parts still to send, by destination
        self.running = False  # set by Membership.start

    def send(self, dst: str, updates: Callable[[], Iterable[list[Any]]]) -> None:
        """Send `updates()` (read only if the transfer is taken) to `dst`, in parts."""
        if dst in self._out or len(self._out) >= self.cfg.state_sends:
            return
        self._out[dst] = deque(state_parts(updates(), self.cfg.max_packet))
        self._burst(dst)

    def stop(self) -> None:
        self.running = False
        self._out.clear()

    def _burst(self, dst: str) -> None:
        parts = self._out.get(dst)
        if parts is None or not self.running:
            return
        for _ in range(min(self.cfg.state_burst, len(parts))):
            self._send(dst, parts.popleft())
        if parts:
            self.sched.call_later(self.cfg.state_pace, self._burst, dst)
        else:
            del self._out[dst]
