"""Can a measurement be trusted? A verdict — ``stable``, ``noisy`` or ``throttled`` — with its
reasons in words, from a run's raw timings and the context it ran in.

Pure functions only (no file or process access: :mod:`edgeconv.bench.context` collects the context
on the host, :mod:`edgeconv.bench.android` on devices), so the store, the bench table and
``edgeconv compare`` all reach the same verdict from the same stored data.

What is checked, and why (thresholds are the constants below):

* the 1000 timed runs cut into ``WINDOWS`` consecutive windows: the spread of the window medians
  (a second job taking the core for a few seconds moves some windows, not the overall median) and
  the drift from the first to the last window (a slow-down while the run went on is what thermal
  throttling looks like);
* the share of outliers (runs over ``OUTLIER_FACTOR`` times the median) and p90/median: the tail a
  preempted run leaves;
* aggregates only (benchmark_model prints no per-run times): std relative to the mean, as pyperf's
  check does;
* context: how long the worker waited for its core while runnable (``/proc/self/schedstat``), other
  tasks that used the pinned core (``/proc/*/task/*/stat``), the load average, the CPU clock and
  governor of the pinned core before and after, the temperature before and after.

``throttled`` needs evidence of a slower clock: a clock that fell, or a slow-down drift while the
temperature rose. Anything else that fails a check is ``noisy``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STABLE, NOISY, THROTTLED = "stable", "noisy", "throttled"
VERDICTS = (STABLE, NOISY, THROTTLED)

WINDOWS = 10  # consecutive windows the timed runs are cut into
MIN_PER_WINDOW = 5  # fewer runs than WINDOWS * this: fewer windows; under 2 windows: no window checks
WINDOW_SPREAD_PCT = 10.0  # (max - min) of the window medians, % of the overall median
DRIFT_PCT = 10.0  # last window's median vs the first's
OUTLIER_FACTOR = 1.5  # a run this many times the median is an outlier
OUTLIER_SHARE_PCT = 5.0
P90_RATIO = 1.25
SUMMARY_CV_PCT = 10.0  # std / mean for aggregate-only runs (pyperf warns from 10 %)
WAIT_PCT = 5.0  # worker runnable but waiting for its core, % of the timed loop's wall time
BUSY_SHARE_PCT = 10.0  # another task's CPU time on the pinned core, % of the timed loop
BUSY_MIN_TICKS = 2  # /proc clock ticks (10 ms): below this a share is not measurable
LOAD_PER_CPU = 1.5  # 1-minute load average per online CPU (and at least one task more than CPUs);
# only where the worker's wait for its core is not measured (devices): it is machine-wide
FREQ_DROP_PCT = 10.0
TEMP_RISE_C = 3.0  # with a slow-down drift: throttled
TEMP_JUMP_C = 10.0  # on its own: noisy (the device heats up fast)


@dataclass(frozen=True)
class Verdict:
    status: str  # stable | noisy | throttled
    reasons: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def stable(self) -> bool:
        return self.status == STABLE

    def text(self) -> str:
        """``noisy: reason; reason`` (or ``stable``)."""
        return self.status + (f": {'; '.join(self.reasons)}" if self.reasons else "")

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.status, "reasons": list(self.reasons), "metrics": self.metrics}


def _ms(ns: float) -> str:
    v = ns / 1e6
    return f"{v:.3g}"


def window_medians(timings_ns: Sequence[int] | np.ndarray, windows: int = WINDOWS) -> np.ndarray:
    """Medians of ``windows`` consecutive, (nearly) equal slices of the runs, in run order. Fewer
    windows when there are fewer than ``MIN_PER_WINDOW`` runs per window; empty under 2."""
    a = np.asarray(timings_ns, dtype=np.float64)
    n = min(windows, a.size // MIN_PER_WINDOW)
    if n < 2:
        return np.zeros(0)
    return np.array([np.median(part) for part in np.array_split(a, n)])


def timing_metrics(timings_ns: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """The shape statistics the verdict reads (JSON-able)."""
    a = np.asarray(timings_ns, dtype=np.float64)
    med = float(np.median(a))
    out: dict[str, Any] = {"runs": int(a.size), "median_ns": med,
                           "p90_over_median": float(np.percentile(a, 90) / med) if med > 0 else None,
                           "outlier_pct": float(100 * np.mean(a > OUTLIER_FACTOR * med)) if med > 0 else None}
    wm = window_medians(a)
    if wm.size and med > 0:
        out.update(windows=int(wm.size), window_min_ns=float(wm.min()), window_max_ns=float(wm.max()),
                   window_spread_pct=float(100 * (wm.max() - wm.min()) / med),
                   drift_pct=float(100 * (wm[-1] - wm[0]) / wm[0]) if wm[0] > 0 else None)
    return out


def _timing_reasons(m: Mapping[str, Any]) -> tuple[list[str], float | None]:
    """(reasons, drift %) from :func:`timing_metrics`."""
    reasons = []
    spread, drift = m.get("window_spread_pct"), m.get("drift_pct")
    if spread is not None and spread > WINDOW_SPREAD_PCT:
        reasons.append(f"window medians vary by {spread:.0f} % ({m['windows']} windows of the runs: "
                       f"{_ms(m['window_min_ns'])} to {_ms(m['window_max_ns'])} ms)")
    if drift is not None and abs(drift) > DRIFT_PCT:
        way = "slower" if drift > 0 else "faster"
        reasons.append(f"the last window is {abs(drift):.0f} % {way} than the first (drift)")
    if (share := m.get("outlier_pct")) is not None and share > OUTLIER_SHARE_PCT:
        reasons.append(f"{share:.1f} % of the runs are outliers (over {OUTLIER_FACTOR:g}x the median)")
    if (p90 := m.get("p90_over_median")) is not None and p90 > P90_RATIO:
        reasons.append(f"p90 is {p90:.2f}x the median")
    return reasons, drift


def _summary_reasons(summary: Mapping[str, Any]) -> list[str]:
    mean, std = summary.get("mean_ms"), summary.get("std_ms")
    if mean and std is not None and 100 * std / mean > SUMMARY_CV_PCT:
        return [f"std is {100 * std / mean:.0f} % of the mean (the runner printed aggregates only)"]
    return []


def _freq_changes(ctx: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(throttling reasons, noise reasons) from the clock and governor before/after."""
    throttled, noisy = [], []
    before, after = ctx.get("freq_khz_before") or {}, ctx.get("freq_khz_after") or {}
    for core in sorted(set(before) & set(after), key=lambda c: int(c)):
        b, a = before[core], after[core]
        if b and a and a < b * (1 - FREQ_DROP_PCT / 100):
            throttled.append(f"core {core} clock fell from {b / 1000:.0f} to {a / 1000:.0f} MHz")
    gb, ga = ctx.get("governor_before") or {}, ctx.get("governor_after") or {}
    for core in sorted(set(gb) & set(ga), key=lambda c: int(c)):
        if gb[core] != ga[core]:
            noisy.append(f"core {core} governor changed from {gb[core]} to {ga[core]}")
    return throttled, noisy


def _context_reasons(ctx: Mapping[str, Any]) -> list[str]:
    reasons = []
    wall, wait = ctx.get("wall_ns"), ctx.get("run_delay_ns")
    if wall and wait is not None and 100 * wait / wall > WAIT_PCT:
        reasons.append(f"the worker waited for its core {100 * wait / wall:.0f} % of the timed loop "
                       "(another task was runnable there)")
    for b in ctx.get("busy") or []:
        reasons.append(f"pid {b['pid']} ({b['comm']}) used {b['share_pct']:.0f} % of core {b['core']} "
                       "during the timed loop")
    # the load average is machine-wide: it decides only where the worker's own wait is unknown (devices)
    cpus = ctx.get("cpus")
    loads = [la[0] for la in (ctx.get("loadavg_before"), ctx.get("loadavg_after")) if la]
    if wait is None and cpus and loads and max(loads) >= max(LOAD_PER_CPU * cpus, cpus + 1):
        reasons.append(f"load average {max(loads):.1f} on {cpus} CPU{'s' if cpus > 1 else ''}")
    return reasons


def busy_tasks(before: Mapping[int, tuple[int, str, int, int]], after: Mapping[int, tuple[int, str, int, int]],
               cores: Sequence[int], wall_ns: int, clk_tck: int = 100, exclude: Sequence[int] = ()
               ) -> list[dict[str, Any]]:
    """Processes that used a pinned core during a loop of ``wall_ns``, from two snapshots of every
    thread ``{tid: (pid, comm, processor, utime + stime ticks)}`` (the processor is where the thread
    last ran). The threads of a process count together; processes ``exclude``d (the worker) do not
    count; most used first."""
    if wall_ns <= 0:
        return []
    per: dict[tuple[int, int], list] = {}
    for tid, (pid, comm, core, ticks) in after.items():
        if pid in exclude or core not in cores or tid not in before:
            continue
        delta = ticks - before[tid][3]
        if delta > 0:
            per.setdefault((pid, core), [comm, 0])[1] += delta
    out = []
    for (pid, core), (comm, ticks) in per.items():
        share = 100 * ticks * 1e9 / clk_tck / wall_ns
        if ticks >= BUSY_MIN_TICKS and share >= BUSY_SHARE_PCT:
            out.append({"pid": pid, "comm": comm, "core": core, "share_pct": round(min(share, 100.0), 1)})
    return sorted(out, key=lambda b: -b["share_pct"])


def assess(timings_ns: Sequence[int] | np.ndarray | None = None, summary: Mapping[str, Any] | None = None,
           context: Mapping[str, Any] | None = None, temp_before_c: float | None = None,
           temp_after_c: float | None = None) -> Verdict:
    """The verdict of one run: from its raw timings (or, without them, the runner's printed
    aggregates) and its context (:mod:`edgeconv.bench.context`'s dict; missing keys are unknown)."""
    ctx = dict(context or {})
    metrics: dict[str, Any] = {}
    noisy: list[str] = []
    drift = None
    if timings_ns is not None and len(timings_ns):
        metrics = timing_metrics(timings_ns)
        noisy, drift = _timing_reasons(metrics)
    elif summary:
        noisy = _summary_reasons(summary)
    throttled, governor = _freq_changes(ctx)
    noisy += governor + _context_reasons(ctx)
    rise = None if temp_before_c is None or temp_after_c is None else temp_after_c - temp_before_c
    if rise is not None:
        metrics["temp_rise_c"] = round(rise, 1)
        if drift is not None and drift > DRIFT_PCT and rise >= TEMP_RISE_C:
            throttled.append(f"the temperature rose {rise:.1f} °C while the runs slowed down")
        elif rise >= TEMP_JUMP_C:
            noisy.append(f"the temperature rose {rise:.1f} °C during the run")
    if throttled:
        return Verdict(THROTTLED, tuple(throttled + noisy), metrics)
    return Verdict(NOISY if noisy else STABLE, tuple(noisy), metrics)


def assess_run(run: Any) -> Verdict:
    """:func:`assess` for a :class:`edgeconv.store.RunRecord` (duck-typed: no store import here).
    A failed run has no verdict worth the name: ``noisy`` with the reason 'the run failed'."""
    if getattr(run, "status", "ok") != "ok":
        return Verdict(NOISY, ("the run failed",))
    extra = getattr(run, "extra", None) or {}
    return assess(run.timings_ns, extra.get("summary"), getattr(run, "context", None),
                  run.temp_before_c, run.temp_after_c)

