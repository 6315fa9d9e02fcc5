"""Parsers of benchmark_model / benchmark_app reports, on every fixture in tests/data/."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeconv.bench.parsers import (
    TRUNCATED,
    BenchmarkOutputError,
    RunStats,
    parse_benchmark_app,
    parse_benchmark_model,
)
from edgeconv.errors import UserError

DATA = Path(__file__).parent / "data"
TFLITE = DATA / "benchmark_model"
OPENVINO = DATA / "benchmark_app"


def tflite(name: str):
    return parse_benchmark_model((TFLITE / name).read_text())


def openvino(name: str):
    return parse_benchmark_app((OPENVINO / name).read_text())


def test_every_fixture_is_covered_and_has_a_source_line() -> None:
    names = {p.name for p in TFLITE.glob("*.txt")} | {p.name for p in OPENVINO.glob("*.txt")}
    tested = {name for case in TFLITE_OK + OPENVINO_OK for name in case[:1]} | FAILED_FIXTURES
    assert names == tested
    for path in [*TFLITE.glob("*.txt"), *OPENVINO.glob("*.txt")]:
        assert path.read_text().startswith("# source: "), path.name


# name, inference avg, init, first inference, warmup avg, timed (count, min, max, avg, std), legacy
TFLITE_OK = [
    ("tf1.14_no_stats.txt", 40127.4, 5217, None, 41302.6, (50, 39702, 41877, 40127.4, 412), True),
    ("tf2.2_legacy_op_profiling.txt", 20802.4, 2734, None, 21143.2, (50, 20398, 22106, 20802.4, 311), True),
    ("tf2.4_peak_memory.txt", 249871, 16402, 362018, 331788, (50, 247215, 254903, 249871, 1503), False),
    ("tf2.10_memory_delta.txt", 25376.9, 48611, 38104, 26442.2, (50, 24911, 27015, 25376.9, 402), False),
    ("litert_percentiles.txt", 17588.3, 21874, 40211, 18342.5, (57, 17102, 19560, 17588.3, 387), False),
    ("all_same.txt", 1, 412, 9, 9, (20, 1, 1, 1, 0), False),
    (
        "riscv_scientific.txt",
        2.94813e6,
        18021,
        3498210,
        3.49821e6,
        (50, 2731904, 3201187, 2.94813e6, 108215),
        False,
    ),
    ("android_logcat.txt", 80660.1, 4108, None, 91471, (50, 79730, 82277, 80660.1, 488), True),
]


@pytest.mark.parametrize(("name", "avg", "init", "first", "warmup_avg", "timed", "legacy"), TFLITE_OK)
def test_benchmark_model_reports(name, avg, init, first, warmup_avg, timed, legacy) -> None:
    result = tflite(name)
    assert result.ok and result.failure is None and result.errors == ()
    assert result.raise_for_failure() is result
    assert (result.inference_avg_us, result.init_us, result.first_inference_us) == (avg, init, first)
    assert result.warmup_avg_us == warmup_avg
    assert result.latency_ms == pytest.approx(avg / 1000)
    assert result.legacy_summary is legacy
    stats = result.timed
    assert (stats.count, stats.min_us, stats.max_us, stats.avg_us, stats.std_us) == timed
    assert result.warmup is not None and result.warmup.count < stats.count


def test_timed_run_is_the_line_after_the_second_header_not_the_warmup_or_profiler() -> None:
    result = tflite("tf2.2_legacy_op_profiling.txt")
    assert result.warmup == RunStats(24, 20874, 26011, 20512, 26011, 21143.2, 1098, min_iterations=1)
    assert result.timed == RunStats(50, 20733, 20911, 20398, 22106, 20802.4, 311, min_iterations=50)
    # the profiler's "Timings (microseconds): count=50 ... avg=20799" is not a phase line
    assert result.timed.avg_us != 20799


def test_percentiles() -> None:
    result = tflite("litert_percentiles.txt")
    assert (result.timed.p5_us, result.timed.median_us, result.timed.p95_us) == (17190, 17512, 18351)
    assert (result.warmup.p5_us, result.warmup.median_us, result.warmup.p95_us) == (17221, 17610, 19904)
    assert result.model_size_mb == 5.42299
    assert (result.init_memory_mb, result.overall_memory_mb, result.peak_memory_mb) == (
        9.10156,
        19.3828,
        None,
    )


def test_all_same_and_single_run_lines_get_full_stats() -> None:
    result = tflite("all_same.txt")
    assert result.timed == RunStats(20, 1, 1, 1, 1, 1, 0.0, 1, 1, 1, all_same=True, min_iterations=20)
    assert result.warmup == RunStats(1, 9, 9, 9, 9, 9, 0.0, 9, 9, 9, all_same=True, min_iterations=1)


def test_memory_wordings() -> None:
    legacy = tflite("tf2.4_peak_memory.txt")
    assert (legacy.init_memory_mb, legacy.overall_memory_mb, legacy.peak_memory_mb) == (
        4.97266,
        138.902,
        None,
    )
    current = tflite("tf2.10_memory_delta.txt")
    assert (current.init_memory_mb, current.overall_memory_mb) == (38.2148, 52.6875)
    assert (current.peak_memory_mb, current.rss_mb, current.model_size_mb) == (61.4531, 58, 24.5337)
    assert tflite("tf1.14_no_stats.txt").overall_memory_mb is None


FAILED_FIXTURES = {
    "failed_op_version.txt",
    "failed_missing_model.txt",
    "truncated.txt",
    "ov2026.4_failed_missing_model.txt",
    "ov2026.4_truncated.txt",
}


def test_failure_with_interpreter_errors() -> None:
    result = tflite("failed_op_version.txt")
    assert not result.ok
    assert result.failure.startswith(
        "benchmarking failed: Didn't find op for builtin opcode 'MUL' version '5'."
    )
    assert result.errors == (
        "Didn't find op for builtin opcode 'MUL' version '5'. An older version of this builtin might be "
        "supported. Are you using an old TFLite binary with a newer model?",
        "Registration failed.",
        "Failed to initialize the interpreter",
        "Benchmarking failed.",
    )
    assert result.timed is None and result.inference_avg_us is None


def test_failure_with_error_prefixes() -> None:
    result = tflite("failed_missing_model.txt")
    assert (
        result.failure == "benchmarking failed: Failed to mmap model /data/local/tmp/edgeconv/missing.tflite"
    )
    with pytest.raises(BenchmarkOutputError) as caught:
        result.raise_for_failure()
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("benchmark_model: benchmarking failed: Failed to mmap model")


def test_truncated_report_is_failed_not_partial() -> None:
    result = tflite("truncated.txt")
    assert (result.ok, result.failure) == (False, TRUNCATED)
    assert result.timed is None
    assert result.warmup.count == 19 and result.warmup.avg_us == 26442.2  # kept, but not as the result
    with pytest.raises(BenchmarkOutputError, match="output truncated"):
        result.raise_for_failure()


def test_cut_after_the_stats_line_but_before_the_summary_is_truncated() -> None:
    text = (TFLITE / "tf2.10_memory_delta.txt").read_text().split("INFO: Inference timings")[0]
    result = parse_benchmark_model(text)
    assert result.failure == TRUNCATED and result.timed.count == 50  # stats present, summary missing


def test_empty_output_is_truncated() -> None:
    assert parse_benchmark_model("").failure == TRUNCATED
    assert parse_benchmark_app("").failure == TRUNCATED


def test_warning_lines_are_not_errors() -> None:
    text = (
        TFLITE / "tf2.10_memory_delta.txt"
    ).read_text() + "WARN: Failed to get the input model file size.\n"
    assert parse_benchmark_model(text).errors == ()


# name, count, duration ms, FPS, percentile, its value ms, (average, min, max) ms, first ms, devices
OPENVINO_OK = [
    ("ov2026.4_latency_us.txt", 300, 7.07, 42420.23, 50, 0.01122, (0.01914, 0.0109, 2.06318), 4.02, ("CPU",)),
    ("ov2026.4_throughput_ms.txt", 152, 3029.69, 50.17, 50, 36.16, (38.24, 11.37, 90.52), 54.56, ("CPU",)),
    ("ov2026.4_percentile90.txt", 40, 1283.70, 31.16, 90, 38.49, (30.60, 19.55, 46.49), 48.09, ("CPU",)),
    ("ov2024.1_cpp.txt", 12847, 60003.58, 214.10, 50, 4.61, (4.66, 4.12, 11.08), 9.83, ("CPU",)),
    ("ov2020.4_python_legacy.txt", 7396, 60024.31, 123.22, 50, 16.21, (None, None, None), None, ()),
]


@pytest.mark.parametrize(
    ("name", "count", "duration", "fps", "percentile", "value", "avg_min_max", "first", "devices"),
    OPENVINO_OK,
)
def test_benchmark_app_reports(
    name, count, duration, fps, percentile, value, avg_min_max, first, devices
) -> None:
    result = openvino(name)
    assert result.ok and result.raise_for_failure() is result
    assert (result.count, result.duration_ms, result.throughput_fps) == (count, duration, fps)
    assert (result.percentile, result.latency_percentile_ms) == (percentile, pytest.approx(value))
    assert result.median_ms == (pytest.approx(value) if percentile == 50 else None)
    got = (result.average_ms, result.min_ms, result.max_ms)
    assert got == (avg_min_max if None in avg_min_max else pytest.approx(avg_min_max))
    assert (result.first_inference_ms, result.execution_devices) == (first, devices)


def test_benchmark_app_us_values_are_converted_to_ms() -> None:
    result = openvino("ov2026.4_latency_us.txt")
    assert result.median_ms == pytest.approx(11.22e-3) and result.max_ms == pytest.approx(2063.18e-3)


def test_benchmark_app_failure_reports_the_innermost_cause() -> None:
    result = openvino("ov2026.4_failed_missing_model.txt")
    assert not result.ok
    assert result.failure == 'benchmark failed: ir: Could not open the file: "/tmp/ov/missing.xml"'
    assert len(result.errors) == 1 and result.errors[0].startswith(
        "Exception from src/inference/src/cpp/core.cpp:84:"
    )
    with pytest.raises(BenchmarkOutputError) as caught:
        result.raise_for_failure()
    assert "\n" not in str(caught.value)


def test_benchmark_app_truncated_in_the_latency_section() -> None:
    result = openvino("ov2026.4_truncated.txt")
    assert (result.ok, result.failure, result.throughput_fps) == (False, TRUNCATED, None)
    assert result.count == 152  # partial numbers stay visible for diagnosis


def test_benchmark_app_tolerates_upper_case_labels_and_skips_shape_groups() -> None:
    text = """[Step 11/11] Dumping statistics report
[ INFO ] Count:      1000 iterations
[ INFO ] Duration:   10034.56 ms
[ INFO ] Latency:
[ INFO ] 	Median:     9.87 ms
[ INFO ] 	AVG:        10.01 ms
[ INFO ] 	MIN:        8.42 ms
[ INFO ] 	MAX:        21.30 ms
[ INFO ] Latency for each data shape group:
[ INFO ] 1. data: {1, 3, 224, 224}
[ INFO ] 	Median:     99.99 ms
[ INFO ] 	AVG:        99.99 ms
[ INFO ] Throughput: 99.66 FPS
"""
    result = parse_benchmark_app(text)
    assert (result.median_ms, result.average_ms, result.min_ms, result.max_ms) == (9.87, 10.01, 8.42, 21.30)
    assert result.throughput_fps == 99.66
