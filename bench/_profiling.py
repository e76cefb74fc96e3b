"""Sampling the daemons while a bench runs: `--profile DIR` on a bench attaches py-spy to the
daemons for the timed part and prints the top of each profile (self and inclusive time per function).

py-spy is not a dependency: `pip install py-spy` anywhere and put it on PATH (or set PYSPY=path);
PYSPY_ARGS adds options (e.g. `--threads`, `--native`), PYSPY_RATE sets the samples per second (250).
Two profiles per daemon: every sample of a thread that was not idle (where the time goes) and, with
`--gil`, only samples of the thread holding the GIL (what serialises the node on one core).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path


class Profiler:
    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.exe = os.environ.get("PYSPY") or shutil.which("py-spy")
        if out is not None and not self.exe:
            raise SystemExit("--profile needs py-spy (pip install py-spy; or set PYSPY=path)")

    def start(self, targets: dict[str, int], tag: str) -> None:
        """Sample each named pid until stop(); files go to OUT/NAME-TAG[-gil].txt."""
        if self.out is None or self.exe is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name, pid in targets.items():
            for gil in (False, True):
                path = self.out / f"{name}-{tag}{'-gil' if gil else ''}.txt"
                rate = os.environ.get("PYSPY_RATE", "250")
                cmd = [self.exe, "record", "--nonblocking", "--rate", rate, "--format", "raw",
                       "-o", str(path), "-p", str(pid), *(["--gil"] if gil else []),
                       *os.environ.get("PYSPY_ARGS", "").split()]
                self.procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                                   path))

    def stop(self) -> list[Path]:
        paths = []
        for proc, _ in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc, path in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if path.exists():
                paths.append(path)
        self.procs.clear()
        return paths


def summary(path: Path, top: int = 15) -> str:
    """The functions with the most samples: self (leaf) and inclusive, as % of all samples."""
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not stack:
            continue
        count = int(n)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        leaf[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", f"  {'self%':>6} {'incl%':>6}  function"]
    for name, n in leaf.most_common(top):
        lines.append(f"  {100 * n / total:6.1f} {100 * incl[name] / total:6.1f}  {name}")
    lines.append("  -- inclusive:")
    for name, n in incl.most_common(top):
        lines.append(f"  {100 * leaf[name] / total:6.1f} {100 * n / total:6.1f}  {name}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`; threads' names kept."""
    func, _, where = frame.partition(" (")
    if not where:
        return frame
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = file.split("/")
    return f"{func} ({'/'.join(parts[-2:])})"
