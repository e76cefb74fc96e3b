"""Progress for long CLI work (pulls, saves, uploads, downloads): one implementation for all.

On a terminal (stderr is one) rich draws a bar per step; otherwise each finished step is one plain
line on stderr, printed when it finishes, so logs and CI output show the work as it goes. rich is
imported only when a bar is drawn: `beiran --help` must stay fast.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, BinaryIO

import click

from beiran.cli.output import human_size


class Progress:
    """Steps keyed by a name: `add(key, label, total)`, `update(key, done, total)`, `finish(key, note)`."""

    def __init__(self, enabled: bool = True, stream: Any = None, unit: str = "bytes") -> None:
        self.stream = stream or sys.stderr
        self.unit = unit  # "bytes" (sizes and speed) or "items" (n of m)
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._labels: dict[str, str] = {}
        self._totals: dict[str, int | None] = {}
        self._finished: set[str] = set()

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            amount = ([DownloadColumn(binary_units=True), TransferSpeedColumn()] if self.unit == "bytes"
                      else [MofNCompleteColumn()])
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), *amount, TimeRemainingColumn(),
                                      console=Console(file=self.stream), transient=False)
            self._rich.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def say(self, text: str) -> None:
        """One line about the work as a whole (above the bars on a terminal)."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        elif self.enabled:
            click.echo(text, file=self.stream)

    def add(self, key: str, label: str, total: int | None = None) -> None:
        if key in self._labels:
            return
        self._labels[key], self._totals[key] = label, total
        if self._rich is not None:
            self._tasks[key] = self._rich.add_task(label, total=total)

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               advance: int | None = None) -> None:
        if key not in self._labels:
            self.add(key, key, total)
        if total is not None:
            self._totals[key] = total
        if self._rich is not None:
            self._rich.update(self._tasks[key], completed=completed, total=total, advance=advance)

    def finish(self, key: str, note: str = "", size: int | None = None, plain: bool = True) -> None:
        """Mark a step done (once): its bar full, or its one plain line (unless not `plain`)."""
        if key in self._finished:
            return
        self._finished.add(key)
        if key not in self._labels:
            self.add(key, key, size)
        total = size if size is not None else self._totals.get(key)
        if self._rich is not None:
            task = self._tasks[key]
            self._rich.update(task, total=total, completed=total,
                              description=f"{self._labels[key]} {note}".rstrip())
        elif self.enabled and plain:
            amount = human_size(total) if self.unit == "bytes" else (str(total) if total is not None else "")
            click.echo(f"{self._labels[key]}  {amount}  {note}".rstrip(), file=self.stream)
            self.stream.flush()


class CountingReader:
    """A file object for a request body that reports how much has been read (sent) so far."""

    def __init__(self, fh: BinaryIO, on_read: Any) -> None:
        self.fh = fh
        self.on_read = on_read
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sent += len(data)
        self.on_read(self.sent)
        return data
