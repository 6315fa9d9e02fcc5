"""Parsers for the text reports of TFLite's ``benchmark_model`` and OpenVINO's ``benchmark_app``.

Why parse text: both tools are run as prebuilt binaries on devices we do not control, in whatever
version is there, and their text report is the only interface every version shares. The
wordings handled (fixtures in tests/data/, sources in tests/data/*/README.md):

benchmark_model (all times in MICROSECONDS, memory in MB)
  * per phase a stats line ``count=N first=X curr=X min=X max=X avg=X std=X`` - with
    `` p5=X median=X p95=X`` in newer tools, ``count=N curr=X(all same)`` when every run took the
    same time, ``count=1 curr=X`` for a single run, numbers possibly like ``2.95034e+06``. The
    warm-up line comes first, the timed-run line last (after "Running benchmark for at least N
    iterations"); the op profiler's ``Timings (microseconds): count=...`` is not a phase line.
  * ``Inference timings in us: Init: X, First inference: X, Warmup (avg): X, Inference (avg): X``
    or, before TF 2.3, ``Average inference timings in us: Warmup: X, Init: X, Inference: X``
    (TF <= 1.14 labelled the last value ``no stats``).
  * memory: ``Memory footprint delta from the start of the tool (MB): init=X overall=X`` (TF 2.4
    said ``Peak memory footprint (MB): init=X overall=X``), ``Overall peak memory footprint (MB) via
    periodic monitoring: X``, ``- VmRSS : X MB``.
  * failure: ``Benchmarking failed.`` (with or without ``ERROR:``) and the ``ERROR:`` lines before.
  * lines may carry ``INFO: ``/``ERROR: `` prefixes or logcat prefixes (``... I tflite  : ``).

benchmark_app (all times in MILLISECONDS; sub-millisecond latencies printed in ``us`` are converted)
  * ``Count: N iterations``, ``Duration: X ms``, a ``Latency:`` section with ``Median:``/``N
    percentile:``, ``Average:``, ``Min:``, ``Max:`` (2022-era ``AVG/MIN/MAX`` too), or the 2020-era
    single ``Latency: X ms`` (the median), then ``Throughput: X FPS``; ``[ ERROR ]`` lines on failure.

A report without its final summary line (the device was lost, the tool was killed) parses as
failed with ``failure == "output truncated"``: partial numbers are never passed off as a result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from edgeconv.errors import UserError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_KEY_VALUE = re.compile(rf"(\w+)=({_NUMBER})")
TRUNCATED = "output truncated"


class BenchmarkOutputError(UserError):
    """A benchmark report says the benchmark failed, or stops before its results."""


def _parse_labels(text: str) -> dict[str, float]:
    """``Init: 16242, First inference: 360262`` -> {"init": 16242.0, "first inference": 360262.0}."""
    values = {}
    for part in text.split(","):
        label, sep, value = part.partition(":")
        if sep and re.fullmatch(_NUMBER, value.strip()):
            values[label.strip().lower()] = float(value.strip())
    return values


# --- TFLite benchmark_model --------------------------------------------------------------------

_TFLITE_PREFIXES = (
    # logcat -v threadtime / brief / the README's "... tflite  : "
    re.compile(
        r"^(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+|[VDIWEF][ /]|\.\.\.\s+)"
        r"\s*tflite\s*(?:\(\s*\d+\))?\s*:\s?"
    ),
    # glog, as printed by TensorFlow's (non-lite) tools
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "),
)
_LEVEL = re.compile(r"^(INFO|WARN|WARNING|ERROR|FATAL|VERBOSE): ?")
_ERROR_TEXT = re.compile(r"^(?:Benchmarking failed|Failed to |Didn't find op|Registration failed|Aborted)")


@dataclass(frozen=True)
class RunStats:
    """One phase's ``count=`` line of benchmark_model, in microseconds.

    When the tool printed only ``count=N curr=X`` (one run, or every run the same), min, max,
    avg and first are X and std is 0, so consumers can always read full stats.
    """

    count: int
    curr_us: float | None
    first_us: float | None
    min_us: float | None
    max_us: float | None
    avg_us: float | None
    std_us: float | None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None
    all_same: bool = False
    min_iterations: int | None = None  # N of the "Running benchmark for at least N iterations" header


@dataclass(frozen=True)
class TfliteBenchmark:
    """A parsed benchmark_model report. Times in microseconds (``*_us``), memory in MB.

    ``ok`` is False when the tool reported a failure or the report is truncated; ``failure``
    then says why in one line and ``errors`` holds the tool's error lines.
    """

    ok: bool
    failure: str | None
    errors: tuple[str, ...]
    timed: RunStats | None
    warmup: RunStats | None
    init_us: float | None
    first_inference_us: float | None
    warmup_avg_us: float | None
    inference_avg_us: float | None
    model_size_mb: float | None = None
    init_memory_mb: float | None = None
    overall_memory_mb: float | None = None
    peak_memory_mb: float | None = None
    rss_mb: float | None = None
    legacy_summary: bool = False  # the pre-TF-2.3 "Average inference timings" wording

    @property
    def latency_ms(self) -> float | None:
        """Average latency of the timed runs in milliseconds."""
        return None if self.inference_avg_us is None else self.inference_avg_us / 1000.0

    def raise_for_failure(self) -> TfliteBenchmark:
        """Raise BenchmarkOutputError (one line) unless ``ok``; returns self for chaining."""
        if not self.ok:
            raise BenchmarkOutputError(f"benchmark_model: {self.failure}")
        return self


def _tflite_line(raw: str) -> tuple[str | None, str]:
    """Strip logcat/glog and ``LEVEL: `` prefixes -> (level or None, text)."""
    line = raw.rstrip("\r\n")
    for prefix in _TFLITE_PREFIXES:
        line = prefix.sub("", line, count=1)
    level = _LEVEL.match(line)
    return (level.group(1) if level else None), (line[level.end() :] if level else line).strip()


def _run_stats(text: str, min_iterations: int | None) -> RunStats:
    values = {key: float(value) for key, value in _KEY_VALUE.findall(text)}
    count = int(values.get("count", 0))
    curr = values.get("curr")
    same = "(all same)" in text or (count == 1 and "min" not in values)
    if same and curr is not None:
        for key in ("first", "min", "max", "avg"):
            values.setdefault(key, curr)
        values.setdefault("std", 0.0)
    stats = {
        f"{key}_us": values.get(key)
        for key in ("curr", "first", "min", "max", "avg", "std", "p5", "median", "p95")
    }
    return RunStats(count=count, **stats, all_same=same, min_iterations=min_iterations)


def _close(a: float | None, b: float | None) -> bool:
    """Equal up to the 6 significant digits std::ostream prints."""
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-5, abs_tol=0.5)


def parse_benchmark_model(text: str) -> TfliteBenchmark:
    """Parse the stdout+stderr of TFLite's benchmark_model (any version seen since TF 1.13)."""
    stats: list[RunStats] = []
    summary: dict[str, float] = {}
    legacy = False
    errors: list[str] = []
    failed = False
    header: int | None = None
    found: dict[str, float] = {}
    for raw in text.splitlines():
        level, line = _tflite_line(raw)
        if not line or line.startswith("#"):
            continue
        if run := re.match(r"Running benchmark for (?:at least )?(\d+) iterations", line):
            header = int(run.group(1))
        elif line.startswith("count="):
            stats.append(_run_stats(line, header))
            header = None
        elif line.startswith("Inference timings in us:"):
            summary = _parse_labels(line.split(":", 1)[1])
        elif line.startswith("Average inference timings in us:"):
            summary, legacy = _parse_labels(line.split(":", 1)[1]), True
        elif memory := re.match(
            rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
            rf"init=({_NUMBER}) overall=({_NUMBER})",
            line,
        ):
            found["init_memory_mb"], found["overall_memory_mb"] = float(memory[1]), float(memory[2])
        elif peak := re.match(
            rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUMBER})", line
        ):
            found["peak_memory_mb"] = float(peak[1])
        elif rss := re.match(r"- VmRSS\s*: (\d+) MB", line):
            found["rss_mb"] = float(rss[1])
        elif size := re.match(rf"The input model file size \(MB\): ({_NUMBER})", line):
            found["model_size_mb"] = float(size[1])
        elif session := re.match(rf"Initialized session in ({_NUMBER}) ?ms", line):
            found["session_init_us"] = float(session[1]) * 1000.0
        if level in ("ERROR", "FATAL") or (level is None and _ERROR_TEXT.match(line)):
            errors.append(line)
            failed = failed or line.startswith("Benchmarking failed")

    inference_avg = summary.get("inference (avg)", summary.get("inference", summary.get("no stats")))
    timed, warmup = _split_phases(stats, inference_avg)
    if failed:
        causes = [e for e in errors if not e.startswith("Benchmarking failed")]
        failure: str | None = "benchmarking failed" + (f": {_clip(causes[0])}" if causes else "")
    elif inference_avg is None:
        failure = TRUNCATED
    else:
        failure = None
    return TfliteBenchmark(
        ok=failure is None,
        failure=failure,
        errors=tuple(errors),
        timed=timed,
        warmup=warmup,
        init_us=summary.get("init", found.get("session_init_us")),
        first_inference_us=summary.get("first inference"),
        warmup_avg_us=summary.get("warmup (avg)", summary.get("warmup")),
        inference_avg_us=inference_avg,
        **{
            key: found.get(key)
            for key in ("model_size_mb", "init_memory_mb", "overall_memory_mb", "peak_memory_mb")
        },
        rss_mb=found.get("rss_mb"),
        legacy_summary=legacy,
    )


def _split_phases(
    stats: list[RunStats], inference_avg: float | None
) -> tuple[RunStats | None, RunStats | None]:
    """(timed, warmup): the last stats line is the timed runs, the one before it the warm-up.

    A lone line is the timed runs only if it agrees with the summary's average; otherwise the
    report stopped after the warm-up.
    """
    if len(stats) >= 2:
        return stats[-1], stats[-2]
    if len(stats) == 1:
        return (stats[0], None) if _close(stats[0].avg_us, inference_avg) else (None, stats[0])
    return None, None


# --- OpenVINO benchmark_app --------------------------------------------------------------------

_OV_PREFIX = re.compile(r"^\[ (INFO|WARNING|ERROR) \] ?")
_OV_LATENCY = re.compile(
    rf"^(Median|Average|AVG|Min|MIN|Max|MAX|(\d+) percentile):\s+({_NUMBER}) (ms|us)\s*$", re.I
)


@dataclass(frozen=True)
class OpenVinoBenchmark:
    """A parsed benchmark_app report. Times in milliseconds, throughput in frames per second.

    ``latency_percentile_ms`` is the value benchmark_app printed for ``percentile`` (50 unless run
    with ``-latency_percentile``); ``median_ms`` is set only when that percentile is 50.
    """

    ok: bool
    failure: str | None
    errors: tuple[str, ...]
    count: int | None
    duration_ms: float | None
    throughput_fps: float | None
    percentile: int = 50
    latency_percentile_ms: float | None = None
    median_ms: float | None = None
    average_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    first_inference_ms: float | None = None
    execution_devices: tuple[str, ...] = ()

    def raise_for_failure(self) -> OpenVinoBenchmark:
        """Raise BenchmarkOutputError (one line) unless ``ok``; returns self for chaining."""
        if not self.ok:
            raise BenchmarkOutputError(f"benchmark_app: {self.failure}")
        return self


def parse_benchmark_app(text: str) -> OpenVinoBenchmark:
    """Parse the output of OpenVINO's benchmark_app (Python or C++, 2020.4 to 2026)."""
    values: dict[str, float] = {}
    percentile = 50
    errors: list[list[str]] = []  # each [ ERROR ] line with the message lines that follow it
    devices: tuple[str, ...] = ()
    in_latency = in_error = False
    for raw in text.splitlines():
        prefix = _OV_PREFIX.match(raw)
        line = (raw[prefix.end() :] if prefix else raw).strip()
        if prefix and prefix.group(1) == "ERROR":
            errors.append([line])
            in_error = True
            continue
        if in_error and not prefix and line and not line.startswith(("Traceback", "[Step")):
            errors[-1].append(line)
            continue
        in_error = False
        if count := re.match(r"Count:\s+(\d+) iterations", line):
            values["count"] = float(count[1])
        elif duration := re.match(rf"Duration:\s+({_NUMBER}) ms", line):
            values["duration_ms"] = float(duration[1])
        elif single := re.match(rf"Latency:\s+({_NUMBER}) (ms|us)\s*$", line):
            values["percentile_ms"] = _ms(single[1], single[2])
        elif line == "Latency:":
            in_latency = True
        elif line.startswith("Latency for each data shape group"):
            in_latency = False  # per-shape-group statistics follow; the totals came first
        elif in_latency and (stat := _OV_LATENCY.match(line)):
            label = stat[1].lower()
            key = {"avg": "average", "average": "average", "min": "min", "max": "max"}.get(
                label, "percentile"
            )
            if key == "percentile" and stat[2]:
                percentile = int(stat[2])
            values[f"{key}_ms"] = _ms(stat[3], stat[4])
        elif throughput := re.match(rf"Throughput:\s+({_NUMBER}) FPS", line):
            values["throughput_fps"] = float(throughput[1])
            in_latency = False
        elif first := re.match(rf"First inference took ({_NUMBER}) ms", line):
            values["first_inference_ms"] = float(first[1])
        elif line.startswith("Execution Devices:"):
            devices = tuple(re.findall(r"[A-Z][A-Z0-9_.]*", line.split(":", 1)[1]))
    if errors:
        failure: str | None = f"benchmark failed: {_clip(errors[0][-1])}"  # the innermost cause
    elif "throughput_fps" not in values:
        failure = TRUNCATED
    else:
        failure = None
    count = values.get("count")
    return OpenVinoBenchmark(
        ok=failure is None,
        failure=failure,
        errors=tuple(" ".join(block) for block in errors),
        count=None if count is None else int(count),
        duration_ms=values.get("duration_ms"),
        throughput_fps=values.get("throughput_fps"),
        percentile=percentile,
        latency_percentile_ms=values.get("percentile_ms"),
        median_ms=values.get("percentile_ms") if percentile == 50 else None,
        average_ms=values.get("average_ms"),
        min_ms=values.get("min_ms"),
        max_ms=values.get("max_ms"),
        first_inference_ms=values.get("first_inference_ms"),
        execution_devices=devices,
    )


def _ms(value: str, unit: str) -> float:
    """A latency as printed (``11.22 us`` or ``4.31 ms``) in milliseconds."""
    number = float(value)
    return number / 1000.0 if unit.lower() == "us" else number


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
