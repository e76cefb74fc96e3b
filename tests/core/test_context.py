"""The daemon's plumbing in process: context services are set once and never read as None, and
background tasks are kept until they end, their failures logged."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from beiran import tasks
from beiran.config import load_config
from beiran.context import DaemonContext

pytestmark = pytest.mark.each_plugin  # an installed plugin changes what this shows


def test_a_service_is_read_only_after_it_is_built_and_set_only_once():
    ctx = DaemonContext(load_config(environ={}))
    with pytest.raises(RuntimeError, match=r"ctx\.store is used before the daemon built it"):
        ctx.store  # noqa: B018 - the read is the test
    marker = object()
    ctx.store = marker  # any object stands in for the BlobStore here
    assert ctx.store is marker
    with pytest.raises(RuntimeError, match=r"ctx\.store is set once"):
        ctx.store = object()
    assert ctx.store is marker
    with pytest.raises(RuntimeError, match=r"ctx\.fetcher"):
        ctx.fetcher  # noqa: B018 - another service is still unset
    assert DaemonContext(load_config(environ={})).config is not ctx.config  # nothing shared between contexts


def test_spawned_tasks_are_kept_until_done_and_failures_are_logged(caplog):
    async def main() -> list[str]:
        done: list[str] = []
        gate = asyncio.Event()

        async def work() -> None:
            await gate.wait()
            done.append("work")

        async def boom() -> None:
            await gate.wait()
            raise ValueError("on purpose")

        tasks.spawn(work(), "test work")
        tasks.spawn(boom(), "test boom")
        gc.collect()  # nothing else holds the tasks: only spawn's set keeps them alive
        assert tasks.running() >= 2
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        return done

    with caplog.at_level(logging.ERROR, logger="beiran.tasks"):
        assert asyncio.run(main()) == ["work"]
    assert "test boom failed: ValueError: on purpose" in caplog.text
    assert tasks.running() == 0
