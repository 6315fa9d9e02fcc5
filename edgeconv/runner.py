"""``python -m edgeconv.runner``: a device-side stand-in for TFLite's ``benchmark_model``.

Why: ARM boards (and test emulators) often have Python and LiteRT/tflite-runtime but no prebuilt
``benchmark_model`` for their OS. This runner takes benchmark_model's flags and prints its report
in benchmark_model's exact wording, so the host side runs, parses and checks both the same way
(:func:`edgeconv.bench.parsers.parse_benchmark_model`).

Flags (``--name=value``, as benchmark_model): ``--graph``, ``--num_threads``, ``--num_runs``,
``--warmup_runs``, ``--warmup_min_secs``, ``--min_secs``, ``--max_secs``, ``--run_delay``,
``--use_xnnpack``; an unknown flag is ignored with a warning ("Unconsumed cmdline flags"), like
benchmark_model. Flags of our own: ``--report_run_timings=true`` adds a line with every timed
run in nanoseconds, so the host can store raw timings rather than only the aggregates;
``--time_invoke_only=true`` times ``invoke()`` alone, as benchmark_model does (``edgeconv profile``:
a block's output conversion is not the block's cost);
``--parity_inputs=IN.npy --parity_outputs=OUT.npy`` runs each input of IN (K x 3 x H x W float32,
prepared like the timed input) after the timed runs and writes the K outputs (dequantized float32)
to OUT, for the host's output parity check (:mod:`edgeconv.bench.parity`).

Semantics follow benchmark_model (tensorflow/lite/tools/benchmark/benchmark_model.cc):
``--num_runs`` is a minimum, runs continue until ``--min_secs`` have passed, and no run starts
after ``--max_secs`` (which bounds the warm-up and the timed phase separately); per-run times are
integer microseconds; ``std`` is the population standard deviation truncated to an integer; the
percentiles are LiteRT's (``p5= median= p95=``: the n*p/100-th smallest run, not interpolated). One
difference, deliberate: the timed region is ``set_input + invoke + get_output`` of
:mod:`edgeconv.runtimes` (edgeconv's host protocol), not ``Invoke()`` alone.

Memory: "the start of the tool" is after the runtime import (benchmark_model has its runtime linked
in), the peak is the process's VmHWM from /proc/self/status (reset after the import), printed as
benchmark_model's ``Overall peak memory footprint (MB)`` line so the same parser reads both.

This module is pushed to devices in a small zip with only ``edgeconv/__init__.py``, ``errors.py``,
``runtimes/`` and itself (:data:`ZIP_MEMBERS`): it must import nothing else from edgeconv, and
nothing heavy before the model's runtime.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# What the device needs to run this module (paths relative to the package's parent folder).
ZIP_MEMBERS = ("edgeconv/__init__.py", "edgeconv/errors.py", "edgeconv/runtimes/", "edgeconv/runner.py")
TIMINGS_LABEL = "Per-run timings in ns:"

# flag -> (type, default): benchmark_model's defaults (BenchmarkModel::DefaultParams)
FLAGS: dict[str, tuple[type, object]] = {
    "graph": (str, ""),
    "num_threads": (int, -1),
    "num_runs": (int, 50),
    "warmup_runs": (int, 1),
    "warmup_min_secs": (float, 0.5),
    "min_secs": (float, 1.0),
    "max_secs": (float, 150.0),
    "run_delay": (float, -1.0),
    "use_xnnpack": (bool, True),
    "report_run_timings": (bool, False),
    "time_invoke_only": (bool, False),
    "parity_inputs": (str, ""),
    "parity_outputs": (str, ""),
    "help": (bool, False),
}
_LOG_NAMES = (  # LogParams(): (flag, label) in benchmark_model's order
    ("num_runs", "Min num runs"),
    ("min_secs", "Min runs duration (seconds)"),
    ("max_secs", "Max runs duration (seconds)"),
    ("run_delay", "Inter-run delay (seconds)"),
    ("num_threads", "Num threads"),
    ("warmup_runs", "Min warmup runs"),
    ("warmup_min_secs", "Min warmup runs duration (seconds)"),
    ("graph", "Graph"),
    ("use_xnnpack", "Use xnnpack"),
)


class FlagError(ValueError):
    """A known flag with a value of the wrong type."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(text)


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """benchmark_model-style ``--name=value`` flags -> (values with defaults, unconsumed args)."""
    values = {name: default for name, (_kind, default) in FLAGS.items()}
    unconsumed: list[str] = []
    for arg in argv:
        name, sep, text = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        kind = FLAGS.get(name, (None, None))[0]
        if kind is None:
            unconsumed.append(arg)
            continue
        if not sep:
            if kind is not bool:
                raise FlagError(f"Failed to parse the value of flag --{name}: no value given")
            text = "true"
        try:
            values[name] = _bool(text) if kind is bool else kind(text)
        except ValueError:
            raise FlagError(f"Failed to parse the value of flag --{name}: {text!r}") from None
    return values, unconsumed


def fmt(value: float | int) -> str:
    """A number as std::ostream prints it by default (6 significant digits, like %g)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass
class Stat:
    """tsl::Stat<int64_t>: the aggregate benchmark_model prints for a phase (microseconds)."""

    values: list[int] = field(default_factory=list)

    def add(self, us: int) -> None:
        self.values.append(us)

    @property
    def count(self) -> int:
        return len(self.values)

    def avg(self) -> float:
        return sum(self.values) / self.count if self.values else math.nan

    def std(self) -> int:
        """Population std; like tsl::Stat, the variance and the root are truncated to integers."""
        if not self.values or min(self.values) == max(self.values):
            return 0
        mean = self.avg()
        variance = int(sum(float(v) * v for v in self.values) / self.count - mean * mean)
        return int(math.sqrt(max(variance, 0)))

    def percentile(self, p: int) -> int:
        """StatWithPercentiles::percentile: the value at index n*p/100 of the sorted runs."""
        ordered = sorted(self.values)
        return ordered[-1] if p == 100 else ordered[len(ordered) * p // 100]

    def line(self) -> str:
        """``StatWithPercentiles::OutputToStream`` (LiteRT's benchmark_model since TF 2.15)."""
        if not self.values:
            return "count=0"
        v = self.values
        if min(v) == max(v):
            head = f"count={len(v)} curr={v[-1]}" + ("(all same)" if len(v) > 1 else "")
        else:
            head = (f"count={len(v)} first={v[0]} curr={v[-1]} min={min(v)} max={max(v)} "
                    f"avg={fmt(self.avg())} std={self.std()}")
        return f"{head} p5={self.percentile(5)} median={self.percentile(50)} p95={self.percentile(95)}"


def _max_rss_kb() -> float:
    """Peak resident set size in KB (benchmark_model's MemoryUsage.mem_footprint_kb on Linux)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def status_kb(key: str) -> float | None:
    """A ``/proc/self/status`` memory line in KB (``VmRSS``: resident now; ``VmHWM``: the peak,
    since the start or the last :func:`reset_peak`), or None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def reset_peak() -> bool:
    """Restart the peak (VmHWM) from the current resident size (Linux: ``5`` to clear_refs), so a
    later VmHWM measures only what came after. False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Log:
    """TFLITE_LOG: ``LEVEL: message`` on stderr, flushed line by line."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, message: str, level: str = "INFO") -> None:
        self.stream.write(f"{level}: {message}\n")
        self.stream.flush()

    def blank(self) -> None:  # benchmark_model ends each stats line with an extra std::endl
        self.stream.write("\n")


def run_phase(step: Callable[[], None], min_runs: int, min_secs: float, max_secs: float,
              run_delay: float, log: Log) -> tuple[Stat, list[int]]:
    """BenchmarkModel::Run: at least ``min_runs`` runs and ``min_secs`` seconds, none started
    after ``max_secs``. Returns the phase's Stat (µs) and the per-run times in ns."""
    log(f"Running benchmark for at least {min_runs} iterations and at least {fmt(min_secs)} seconds "
        f"but terminate if exceeding {fmt(max_secs)} seconds.")
    clock = time.perf_counter_ns
    stat, timings = Stat(), []
    now = clock()
    min_finish = now + int(min_secs * 1e9)
    max_finish = now + int(max_secs * 1e9)
    run = 0
    while (run < min_runs or now < min_finish) and now <= max_finish:
        t0 = clock()
        step()
        t1 = clock()
        timings.append(t1 - t0)
        stat.add((t1 - t0) // 1000)
        if run_delay > 0:
            time.sleep(run_delay)
        now = clock()
        run += 1
    log(stat.line())
    log.blank()
    return stat, timings


def _import_runtime(graph: str) -> str:
    """Import the model's runtime (its cost is neither init time nor the model's memory, as in the
    host harness and as in benchmark_model, which has the runtime linked in)."""
    from edgeconv.runtimes import runtime_for

    runtime = runtime_for(graph)
    if runtime == "tflite":
        from edgeconv.runtimes.tflite import load_interpreter_class

        load_interpreter_class()
    elif runtime == "openvino":
        import openvino  # noqa: F401
    return runtime


def peak_kb() -> float:
    """The peak resident size in KB: VmHWM, else getrusage's ru_maxrss."""
    return status_kb("VmHWM") or _max_rss_kb()


def _open(graph: str, threads: int):
    """Open the model (its runtime already imported): (runner, ns spent opening)."""
    from edgeconv.runtimes import open_runner, runtime_for

    runtime = runtime_for(graph)
    t0 = time.perf_counter_ns()
    runner = open_runner(graph, runtime, threads=max(threads, 1),
                         precision="f32" if runtime == "openvino" else None)
    return runner, time.perf_counter_ns() - t0


def _random_input(runner):
    """Random data of the model's input shape, prepared (layout/quantization) outside timing."""
    import numpy as np

    shape = [int(d) if int(d) > 0 else 1 for d in runner.input_shape]
    if runner.layout == "NHWC":
        shape = [shape[0], shape[3], shape[1], shape[2]]
    return runner.prepare(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def _write_parity_outputs(runner, inputs_path: str, outputs_path: str) -> None:
    """Each fixed input through the model; the outputs (K x classes) saved atomically as .npy."""
    import numpy as np

    if not outputs_path:
        raise ValueError("--parity_inputs needs --parity_outputs")
    outputs = run_inputs(runner, np.load(inputs_path, allow_pickle=False))
    tmp = f"{outputs_path}.partial"
    with open(tmp, "wb") as f:
        np.save(f, outputs)
    os.replace(tmp, outputs_path)


def run_inputs(runner, inputs):
    """Each input (N x 3 x H x W float32) through an :mod:`edgeconv.runtimes` runner, prepared like
    the timed input: the N outputs, flattened and dequantized (N x classes float32)."""
    import numpy as np

    outputs = []
    for x in inputs:
        runner.set_input(runner.prepare(x[None]))
        runner.invoke()
        outputs.append(np.asarray(runner.get_output(), dtype=np.float32).reshape(-1))
    return np.stack(outputs)


def benchmark(flags: dict[str, Any], log: Log) -> int:
    """Everything after flag parsing; returns the process exit code."""
    graph = str(flags["graph"])
    if not graph:
        log("Please specify the name of your TF Lite input file with --graph", "ERROR")
        return 1
    if not os.path.isfile(graph):
        log(f"Failed to mmap model {graph}", "ERROR")
        return 1
    if graph.endswith(".tflite") and not flags["use_xnnpack"]:
        log("--use_xnnpack=false is not supported by the edgeconv runner (it runs the interpreter's "
            "default delegates)", "ERROR")
        return 1
    try:
        _import_runtime(graph)
        start_kb = status_kb("VmRSS") or _max_rss_kb()  # the tool's start: the runtime is loaded
        reset_peak()
        runner, init_ns = _open(graph, flags["num_threads"])
    except Exception as e:  # UserError and the runtimes' own errors: one line, like the tool
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log(f"Failed to initialize the interpreter: {message[:300]}", "ERROR")
        return 1
    log(f"Runtime: [{runner.version}]")
    log(f"Loaded model {graph}")
    log(f"The input model file size (MB): {fmt(os.path.getsize(graph) / 1e6)}")
    log(f"Initialized session in {fmt(init_ns / 1e6)}ms.")
    init_kb = peak_kb()
    x = _random_input(runner)
    set_input, invoke, get_output = runner.set_input, runner.invoke, runner.get_output

    def step() -> None:
        set_input(x)
        invoke()
        get_output()

    if flags["time_invoke_only"]:
        set_input(x)
        step = invoke  # noqa: F811 - benchmark_model's timed region

    max_secs, delay = flags["max_secs"], flags["run_delay"]
    warmup, _ = run_phase(step, flags["warmup_runs"], flags["warmup_min_secs"], max_secs, delay, log)
    timed, timings = run_phase(step, flags["num_runs"], flags["min_secs"], max_secs, delay, log)
    end_kb = peak_kb()
    if flags["parity_inputs"]:
        try:
            _write_parity_outputs(runner, str(flags["parity_inputs"]), str(flags["parity_outputs"]))
        except (OSError, ValueError) as e:
            log(f"Failed to run the parity inputs: {e}", "ERROR")
            runner.close()
            return 1
        log(f"Wrote the outputs of the parity inputs to {flags['parity_outputs']}")
    runner.close()
    first = warmup.values[0] if warmup.values else 0
    log(f"Inference timings in us: Init: {init_ns // 1000}, First inference: {first}, "
        f"Warmup (avg): {fmt(warmup.avg())}, Inference (avg): {fmt(timed.avg())}")
    if start_kb:
        log("Note: as the benchmark tool itself affects memory footprint, the following is only "
            "APPROXIMATE to the actual memory footprint of the model at runtime. Take the information "
            "at your discretion.")
        log(f"Memory footprint delta from the start of the tool (MB): init={fmt((init_kb - start_kb) / 1024)} "
            f"overall={fmt((end_kb - start_kb) / 1024)}")
        # benchmark_model's wording for its peak resident size; here VmHWM, exact rather than sampled
        log(f"Overall peak memory footprint (MB) via periodic monitoring: {fmt(end_kb / 1024)}")
    if flags["report_run_timings"]:
        log(f"{TIMINGS_LABEL} {' '.join(map(str, timings))}")
    return 0


def main(argv: Sequence[str] | None = None, stream=None) -> int:
    log = Log(stream)
    argv = list(sys.argv[1:] if argv is None else argv)
    log("STARTING!")
    try:
        flags, unconsumed = parse_flags(argv)
    except FlagError as e:
        log(str(e), "ERROR")
        log("Benchmarking failed.", "ERROR")
        return 1
    if flags["help"]:
        usage = " ".join(f"--{name}={FLAGS[name][1]}" for name in FLAGS if name != "help")
        log(f"usage: python -m edgeconv.runner {usage}", "ERROR")
        return 1
    if unconsumed:
        log(f"Unconsumed cmdline flags: {' '.join(unconsumed)}", "WARN")
    log("Log parameter values verbosely: [0]")
    for name, label in _LOG_NAMES:
        value = flags[name]
        shown = int(value) if isinstance(value, bool) else fmt(value) if isinstance(value, float) else value
        log(f"{label}: [{shown}]")
    status = benchmark(flags, log)
    if status != 0:
        log("Benchmarking failed.", "ERROR")
    return status


if __name__ == "__main__":
    sys.exit(main())
