"""Worker threads are started at daemon start-up (beiran/workers.py), not inside the first
requests' `submit()`."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from beiran import workers


def test_prestart_starts_every_worker_thread_of_each_pool():
    small, large = ThreadPoolExecutor(3), ThreadPoolExecutor(12)
    try:
        assert not small._threads and not large._threads
        workers.prestart(small, large).join(10)
        assert len(small._threads) == 3 and len(large._threads) == 12
        # started threads take work without another start: the pool does not grow
        assert small.submit(threading.get_ident).result(5) in {t.ident for t in small._threads}
        assert len(small._threads) == 3
    finally:
        small.shutdown()
        large.shutdown()


def test_prestart_of_a_pool_already_shut_down_is_harmless():
    pool = ThreadPoolExecutor(2)
    pool.shutdown()
    workers.prestart(pool).join(10)
    assert not pool._threads
