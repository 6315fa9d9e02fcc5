"""Statistics over per-run latencies (integer nanoseconds from ``time.perf_counter_ns``).

Conventions, fixed so numbers stay comparable across devices and releases:

* percentiles (median, p90, p99) use numpy's default ``method="linear"`` (type 7 of Hyndman & Fan:
  linear interpolation between the two closest ranks, ``(n - 1) * q``);
* ``std`` is the *population* standard deviation (``ddof=0``): the timings are the whole measured
  run, not a sample used to estimate another population.

The raw timings are kept too (``compress_timings``) so a statistic added later can be computed on old
runs: int64 first-differences deflate well because consecutive runs differ by little.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILE_METHOD = "linear"
STD_DDOF = 0  # population standard deviation
_MAGIC = b"ECT1"  # edgeconv timings, format 1: magic, uint32 count, zlib(int64 LE deltas)


@dataclass(frozen=True)
class TimingStats:
    """Summary of one benchmark's timed runs, in nanoseconds (floats: means and interpolated
    percentiles are not integers)."""

    count: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    std: float

    def as_ms(self) -> dict[str, float | int]:
        """The same fields in milliseconds (``count`` unchanged), as stored and reported."""
        return {k: (v if k == "count" else v / 1e6) for k, v in asdict(self).items()}


def summarize(timings_ns: Sequence[int] | np.ndarray) -> TimingStats:
    """Statistics of a non-empty list of per-run timings in ns."""
    a = np.asarray(timings_ns, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("summarize() needs a non-empty 1-D list of timings")
    p50, p90, p99 = np.percentile(a, [50, 90, 99], method=PERCENTILE_METHOD)
    return TimingStats(count=int(a.size), mean=float(a.mean()), median=float(p50), p90=float(p90),
                       p99=float(p99), min=float(a.min()), max=float(a.max()),
                       std=float(a.std(ddof=STD_DDOF)))


def compress_timings(timings_ns: Sequence[int] | np.ndarray) -> bytes:
    """Lossless, compact encoding of integer ns timings (order kept: it shows drift/throttling)."""
    a = np.asarray(timings_ns, dtype=np.int64)
    deltas = np.diff(a, prepend=np.int64(0)) if a.size else a
    return _MAGIC + struct.pack("<I", int(a.size)) + zlib.compress(deltas.astype("<i8").tobytes(), 9)


def decompress_timings(blob: bytes) -> np.ndarray:
    """Inverse of ``compress_timings``: an int64 array of ns timings."""
    if len(blob) < 8 or blob[:4] != _MAGIC:
        raise ValueError("not an edgeconv timings blob")
    (count,) = struct.unpack("<I", blob[4:8])
    deltas = np.frombuffer(zlib.decompress(blob[8:]), dtype="<i8")
    if deltas.size != count:
        raise ValueError(f"timings blob holds {deltas.size} values, header says {count}")
    return np.cumsum(deltas, dtype=np.int64)
