"""A small in-process event bus so plugins and core react to each other without globals."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)
Handler = Callable[..., Awaitable[None] | None]

# Event names used by core; plugins may add their own ("<plugin>.<event>").
NODE_ONLINE = "node.online"
NODE_OFFLINE = "node.offline"
BLOB_ADDED = "blob.added"
BLOB_REMOVED = "blob.removed"
BLOB_PROGRESS = "blob.progress"
AVAILABILITY_CHANGED = "availability.changed"
FETCH_PROGRESS = "fetch.progress"


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Future[Any]] = set()

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Subscribe; returns a function that unsubscribes."""
        self._handlers[event].append(handler)
        return lambda: self._handlers[event].remove(handler) if handler in self._handlers[event] else None

    def emit(self, event: str, **payload: Any) -> None:
        """Call every handler; coroutine handlers run as tasks. A failing handler is logged only."""
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(**payload)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            except Exception:
                log.exception("event handler for %s failed", event)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("event handler failed: %s", task.exception())
