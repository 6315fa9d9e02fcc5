"""Latency statistics against hand-computed values, and the raw-timings encoding."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgeconv.bench.stats import compress_timings, decompress_timings, summarize

# n = 5, sorted. By hand:
#   mean   = 2000 / 5                                  = 400
#   median = the 3rd value                              = 300
#   p90    = rank (5-1)*0.90 = 3.6 -> 400 + 0.6*(1000-400) = 760   (linear interpolation)
#   p99    = rank (5-1)*0.99 = 3.96 -> 400 + 0.96*600      = 976
#   std    = sqrt((300² + 200² + 100² + 0² + 600²) / 5) = sqrt(100000) = 316.2277...  (population)
TIMINGS = [300, 100, 1000, 200, 400]  # unsorted on purpose: order must not matter


def test_summary_matches_hand_computed_values() -> None:
    s = summarize(TIMINGS)
    assert s.count == 5
    assert s.mean == pytest.approx(400.0)
    assert s.median == pytest.approx(300.0)
    assert s.p90 == pytest.approx(760.0)
    assert s.p99 == pytest.approx(976.0)
    assert (s.min, s.max) == (100.0, 1000.0)
    assert s.std == pytest.approx(math.sqrt(100000.0))  # not the sample std sqrt(125000)


def test_even_count_median_interpolates() -> None:
    assert summarize([10, 20, 30, 40]).median == pytest.approx(25.0)


def test_as_ms_converts_everything_but_count() -> None:
    ms = summarize(TIMINGS).as_ms()
    assert ms["count"] == 5
    assert ms["median"] == pytest.approx(0.0003)
    assert ms["p90"] == pytest.approx(0.00076)


def test_summary_rejects_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])


@pytest.mark.parametrize("values", [
    [],
    [5],
    [1_000_000, 999_000, 1_200_000, 3, 2**40],  # drops and jumps: negative and huge deltas
])
def test_compress_round_trip(values: list[int]) -> None:
    out = decompress_timings(compress_timings(values))
    assert out.dtype == np.int64
    assert out.tolist() == values


def test_compression_is_compact_for_realistic_timings() -> None:
    rng = np.random.default_rng(0)
    t = (2_000_000 + rng.normal(0, 20_000, 1000)).astype(np.int64)
    blob = compress_timings(t)
    assert len(blob) < 0.5 * t.nbytes
    assert np.array_equal(decompress_timings(blob), t)


def test_corrupt_blob_is_rejected() -> None:
    blob = compress_timings([1, 2, 3])
    with pytest.raises(ValueError, match="not an edgeconv timings blob"):
        decompress_timings(b"junk" + blob[4:])
    bad_count = blob[:4] + (7).to_bytes(4, "little") + blob[8:]
    with pytest.raises(ValueError, match="header says 7"):
        decompress_timings(bad_count)
