"""Worker threads started when the daemon starts, not on a request's path.

`ThreadPoolExecutor` starts a thread the first time it has more work than idle threads, inside
`submit()`, and `Thread.start()` waits until the new thread runs. On a busy machine that is a few
milliseconds each, on the event loop, during the first burst of work: a new node's first
`npm install` (30 tarballs at once) started 13 threads that way and held the loop ~50 ms. Starting
them early, from a thread of their own, moves that out of every request.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("beiran.daemon")
#: how long the start-up tasks wait for each other; a pool busy with real work gives up early
GATHER_SECONDS = 2.0


def _fill(executor: ThreadPoolExecutor) -> None:
    """Start every worker thread of `executor`: as many tasks as it has workers, each waiting until
    all of them run, so each needs a thread of its own."""
    n = executor._max_workers  # the pool's size; Tornado and asyncio read it the same way
    gate = threading.Barrier(n, timeout=GATHER_SECONDS)

    def meet() -> None:
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            pass  # some workers were busy with real work: those exist already

    try:
        for _ in range(n):
            executor.submit(meet)
    except RuntimeError:  # shut down meanwhile (the daemon stopped during start-up)
        gate.abort()


def prestart(*executors: ThreadPoolExecutor) -> threading.Thread:
    """Start the executors' threads in the background; returns the thread doing it."""
    def run() -> None:
        for executor in executors:
            _fill(executor)
    t = threading.Thread(target=run, name="beiran-prestart", daemon=True)
    t.start()
    return t
