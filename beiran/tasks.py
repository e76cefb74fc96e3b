"""Fire-and-forget work that is still kept: the event loop holds only weak references to tasks, so
a task nobody stores can be garbage-collected mid-flight, and its exception is never seen. Every
background task the daemon starts without awaiting it goes through `spawn`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("beiran.tasks")
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
    """Run `coro` in the background, kept until it ends; a failure is logged, naming `what`."""
    task = asyncio.get_running_loop().create_task(coro, name=what)
    _running.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s failed: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc)


def running() -> int:
    """How many spawned tasks have not ended (for tests and /status)."""
    return len(_running)
