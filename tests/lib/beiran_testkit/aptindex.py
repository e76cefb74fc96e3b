"""Index rows held in memory, as the apt dependency resolver reads them (`depends.Rows`): the
resolver's rules tested on hand-written rows, or on this machine's own Debian lists, without a
daemon or its database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


class IndexRows:
    """`beiran_plugins.apt.depends.Rows` over a list of rows (the daemon's is its database)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.by_name: dict[str, list[Row]] = {}
        for r in rows:
            self.by_name.setdefault(r["package"], []).append(r)

    async def named(self, names: list[str]) -> list[Row]:
        return [r for n in names for r in self.by_name.get(n, [])]

    async def providing(self) -> list[Row]:
        return [r for r in self.rows if r["provides"]]

    async def required(self) -> list[Row]:
        return [r for r in self.rows if r["required"]]

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)
