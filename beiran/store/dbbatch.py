"""Metadata writes in batches: every write queued while the database thread is busy goes into the
next transaction, one per batch instead of one per blob. Many small blobs arriving at once (apt's
pipelined .debs, npm tarballs) otherwise pay a sqlite commit, and a hop to the one database thread,
each for the blob row, its pin and its plugin's row.

A batch runs as one plain transaction; only when one of its writes fails is it rolled back and run
again with a savepoint per write, so the common case pays no SAVEPOINT/RELEASE per write. The hot
inserts are plain SQL made once (`Insert`): peewee builds each query in Python, which cost more CPU
than sqlite's own work for a row."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import peewee

#: writes in one transaction at most (a long batch would hold the database thread)
MAX_BATCH = 256
#: how long a deferred write (one nobody waits for: a fresh blob's row) waits for company
LINGER = 0.05


class WriteBatcher:
    def __init__(self, run_db: Callable[..., Awaitable[Any]], database: Callable[[], Any]) -> None:
        self._run_db = run_db
        self._database = database  # the peewee database, looked up when a batch runs
        self._pending: list[tuple[Callable[[], Any], asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        self.writes = 0

    async def write(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (blocking peewee calls) in the next batch's transaction; returns its result,
        raises its exception (a failing write rolls back only itself, through a savepoint)."""
        return await asyncio.shield(self.submit(fn))

    def submit(self, fn: Callable[[], Any], *, defer: bool = False) -> asyncio.Future[Any]:
        """Queue `fn` for the next batch now, without a task: a caller with writes of its own and
        another awaitable (e.g. a pin) queues them together and awaits both, in one transaction.

        `defer`: nobody waits for it now (its effect is in memory already), so the batch may wait
        up to LINGER for more: small blobs arriving one after another (apt's .debs) then share a
        transaction instead of paying one (and a database thread hop) each. A write that is not
        deferred, `hurry()` or `flush()` sends what is queued at once."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if not defer:
            self.hurry()
        elif self._timer is None and not self._running():
            self._timer = asyncio.get_running_loop().call_later(LINGER, self.hurry)
        return fut

    def hurry(self) -> None:
        """Start the batch of what is queued now (someone waits for a deferred write)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and not self._running():
            self._task = asyncio.ensure_future(self._drain())

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def flush(self) -> None:
        """Wait until every write queued so far (deferred ones too) is done."""
        self.hurry()
        while self._running():
            assert self._task is not None
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                results = await self._run_db(self._run_batch, [fn for fn, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - the whole transaction failed: tell everyone
                results = [exc] * len(batch)
            self.batches += 1
            self.writes += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def _run_batch(self, fns: list[Callable[[], Any]]) -> list[Any]:
        db = self._database()
        try:
            with db.atomic():
                return [fn() for fn in fns]
        except Exception:  # all of it rolled back: again, each write on its own
            if len(fns) == 1:
                raise
        results: list[Any] = []
        with db.atomic():
            for fn in fns:
                try:
                    with db.atomic():  # a savepoint: one bad write does not undo the others
                        results.append(fn())
                except Exception as exc:  # noqa: BLE001 - handed to that write's caller
                    results.append(exc)
        return results


class Insert:
    """`INSERT OR <conflict>` of one model's row, its SQL made once. Values are given in `columns`'
    order, already in their database form (text, numbers, None)."""

    def __init__(self, model: type[peewee.Model], columns: tuple[str, ...], conflict: str) -> None:
        if conflict not in ("REPLACE", "IGNORE"):
            raise ValueError(f"conflict must be REPLACE or IGNORE, not {conflict!r}")
        meta = model._meta
        names = ", ".join(f'"{meta.fields[c].column_name}"' for c in columns)
        self.model = model
        self.columns = columns
        self.sql = (f'INSERT OR {conflict} INTO "{meta.table_name}" ({names}) '
                    f'VALUES ({", ".join("?" * len(columns))})')

    def __call__(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise TypeError(f"{len(self.columns)} values expected, got {len(values)}")
        self.model._meta.database.execute_sql(self.sql, values)
