"""What else happened on the host while a worker measured: read before and after the timed loop
(never inside it), for the verdict of :mod:`edgeconv.bench.stability`.

Everything is best effort from Linux's /proc and /sys: a file that cannot be read (another OS, a
container hiding /sys/devices/system/cpu/cpu*/cpufreq, /proc mounted with hidepid) leaves its key
out, which the verdict treats as unknown, never as fine or bad.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .stability import busy_tasks

CPU_SYS = Path("/sys/devices/system/cpu")


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, ValueError):
        return None


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def online_cpus() -> int:
    return os.cpu_count() or 1


def cpufreq(cores: Iterable[int]) -> tuple[dict[str, int], dict[str, str]]:
    """({core: current kHz}, {core: governor}) for the cores whose cpufreq files are readable."""
    freq, gov = {}, {}
    for c in cores:
        base = CPU_SYS / f"cpu{c}" / "cpufreq"
        cur = _read(base / "scaling_cur_freq")
        if cur and cur.isdigit():
            freq[str(c)] = int(cur)
        if g := _read(base / "scaling_governor"):
            gov[str(c)] = g
    return freq, gov


def schedstat() -> tuple[int, int] | None:
    """(ns on the CPU, ns runnable but waiting for a CPU) of this thread, or None."""
    text = _read("/proc/thread-self/schedstat") or _read("/proc/self/schedstat")
    try:
        run, wait, _slices = (int(v) for v in (text or "").split())
    except ValueError:
        return None
    return run, wait


def task_snapshot() -> dict[int, tuple[int, str, int, int]]:
    """Every visible thread: {tid: (pid, comm, processor it last ran on, utime + stime ticks)}."""
    out: dict[int, tuple[int, str, int, int]] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            text = _read(f"/proc/{pid}/task/{tid}/stat")
            if not text or ")" not in text:
                continue
            comm = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
            try:
                out[int(tid)] = (int(pid), comm, int(fields[36]), int(fields[11]) + int(fields[12]))
            except (IndexError, ValueError):
                continue
    return out


class LoopContext:
    """``with LoopContext(cores) as ctx: <timed loop>``; then ``ctx.result`` is the context dict."""

    def __init__(self, cores: Iterable[int]) -> None:
        self.cores = sorted(cores)
        self.result: dict[str, Any] = {}

    def __enter__(self) -> LoopContext:
        import time

        self.result = {"cpus": online_cpus(), "cores": self.cores, "loadavg_before": loadavg()}
        freq, gov = cpufreq(self.cores)
        if freq:
            self.result["freq_khz_before"] = freq
        if gov:
            self.result["governor_before"] = gov
        self._tasks = task_snapshot()
        self._sched = schedstat()
        self._csw = _involuntary_switches()
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        wall = time.perf_counter_ns() - self._t0
        sched, csw, tasks = schedstat(), _involuntary_switches(), task_snapshot()
        r = self.result
        r["wall_ns"] = wall
        if sched and self._sched:
            r["cpu_ns"], r["run_delay_ns"] = sched[0] - self._sched[0], sched[1] - self._sched[1]
        if csw is not None and self._csw is not None:
            r["involuntary_switches"] = csw - self._csw
        try:
            tck = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError, AttributeError):
            tck = 100
        if self._tasks and tasks:
            r["busy"] = busy_tasks(self._tasks, tasks, self.cores, wall, tck, exclude=[os.getpid()])
        r["loadavg_after"] = loadavg()
        freq, gov = cpufreq(self.cores)
        if freq:
            r["freq_khz_after"] = freq
        if gov:
            r["governor_after"] = gov


def _involuntary_switches() -> int | None:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw)
    except (ImportError, OSError):
        return None
