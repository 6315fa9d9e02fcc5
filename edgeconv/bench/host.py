"""Host benchmark harness, following the TinyNet paper's protocol: batch 1, one thread, average (we
also keep the median and tails) of 1000 timed runs.

Every artifact is measured in a fresh worker process (``python -m edgeconv.bench.host``), so one
runtime's thread pools, allocator state or crash cannot disturb another's measurement. With one
thread the worker pins itself to one core *before* importing the runtime, so the runtime's pools
size themselves to that core. The timed region is ``set_input + invoke + get_output``; input
preparation (layout, quantization) happens before it. Timings travel back as JSON in a temp file
(stdout/stderr carry runtime log chatter and progress lines), with the context of the timed loop
(:mod:`edgeconv.bench.context`: the wait for the core, busy tasks, load, clock) and the worker's
memory: its resident size after the runtime import, and the peak (VmHWM, reset after the import)
of loading the model and running it.

This module must stay importable without torch/TensorFlow: boards only have a TFLite runtime.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats import RUNTIMES
from ..runner import peak_kb, reset_peak, status_kb
from ..store import RunRecord, now_iso
from ..sysinfo import cpu_temperature
from ..util import atomic_write_text
from .context import LoopContext
from .stability import assess_run

HOST_RUNTIMES = RUNTIMES  # every format's runtime runs on the host
PROGRESS_PREFIX = "@edgeconv-progress "
OVERHEAD_RUNS = 1000  # iterations of the empty loop that measures the harness's own cost
LOG_LIMIT = 20_000  # characters of runtime log kept per run

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class BenchJob:
    """What one worker measures."""

    path: str
    runtime: str
    precision: str | None = None  # the artifact's precision (fp32/fp16/dynamic/int8)
    threads: int = 1
    warmup: int = 50
    runs: int = 1000
    core: int | None = None  # pin here when threads == 1 (default: the last allowed core)
    invoke_only_runs: int = 0  # extra loop timing invoke() alone, to split runtime vs harness time
    invoke_only: bool = False  # the timed loop itself times invoke() alone (edgeconv profile)
    seed: int = 0
    label: str = ""


def inference_precision(runtime: str, precision: str | None) -> str | None:
    """The compute precision to request explicitly. OpenVINO otherwise picks bf16 on AMX/AVX512-BF16
    CPUs by itself; fp16 and int8 IRs compute in f32 (fp16 only compresses the weights)."""
    return "f32" if runtime == "openvino" else None


def cpuset_str(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5' (the form taskset and /sys use)."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


# ------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------
class _NullRunner:
    """The same three bound-method calls as a runner, doing nothing: timing them gives the cost of
    the harness itself (clock reads + Python calls) per invocation."""

    def set_input(self, x: np.ndarray) -> None:
        pass

    def invoke(self) -> None:
        pass

    def get_output(self) -> None:
        pass


def timed_loop(runner, x: np.ndarray, n: int, on_step: Callable[[int], None] | None = None,
               invoke_only: bool = False) -> list[int]:
    """``n`` timed invocations; per-run ns. ``on_step`` is called ~20 times, outside the timed
    region."""
    clock = time.perf_counter_ns
    set_input, invoke, get_output = runner.set_input, runner.invoke, runner.get_output
    out = [0] * n
    every = max(1, n // 20)
    if invoke_only:
        set_input(x)
        for i in range(n):
            t0 = clock()
            invoke()
            out[i] = clock() - t0
            if on_step is not None and (i + 1) % every == 0:
                on_step(i + 1)
        return out
    for i in range(n):
        t0 = clock()
        set_input(x)
        invoke()
        get_output()
        out[i] = clock() - t0
        if on_step is not None and (i + 1) % every == 0:
            on_step(i + 1)
    return out


def _pin(job: BenchJob) -> str:
    """Pin to one core for single-threaded runs; returns the affinity set actually in force."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux: no pinning
        return ""
    if job.threads == 1:
        core = job.core if job.core is not None else max(allowed)
        if core not in allowed:
            raise UserError(f"--core {core}: not one of the usable cores {cpuset_str(allowed)}")
        os.sched_setaffinity(0, {core})
    return cpuset_str(os.sched_getaffinity(0))


def _preload(runtime: str) -> None:
    """Import the runtime before opening the model, so init time excludes the import."""
    if runtime == "tflite":
        from ..runtimes.tflite import load_interpreter_class

        load_interpreter_class()
        return
    package = {"openvino": "openvino", "onnxruntime": "onnxruntime"}[runtime]
    try:
        __import__(package)
    except ImportError:
        raise UserError(f"runtime {runtime} is not installed (pip install {package})") from None


def _input_for(runner, seed: int) -> np.ndarray:
    """A random NCHW float32 image of the model's input size, already prepared for the model."""
    shape = tuple(int(d) if int(d) > 0 else 1 for d in runner.input_shape)
    if runner.layout == "NHWC":
        shape = (shape[0], shape[3], shape[1], shape[2])
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return runner.prepare(x)


def _elapsed_ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


def _mb(kb: float | None) -> float | None:
    return None if not kb else round(kb / 1024, 2)


def _cores(cpuset: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5] (the affinity in force; every allowed core when not pinned)."""
    out: list[int] = []
    for part in filter(None, cpuset.split(",")):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def measure(job: BenchJob, progress: ProgressFn | None = None) -> dict:
    """Measure ``job`` in this process. Returns a JSON-able dict; errors become a failed result."""
    from ..runtimes import open_runner

    res: dict = {"status": "failed", "started_at": now_iso(), "temp_before_c": cpu_temperature()}
    progress = progress or (lambda phase, done, total: None)
    gc_was_enabled = gc.isenabled()
    try:
        res["cores"] = _pin(job)
        t0 = time.perf_counter_ns()
        _preload(job.runtime)
        res["import_ms"] = _elapsed_ms(t0)
        # memory: what the runtime import alone holds, then the peak of load + inference above it
        res["import_rss_mb"] = _mb(status_kb("VmRSS"))
        peak_from_import = reset_peak()
        t0 = time.perf_counter_ns()
        runner = open_runner(job.path, job.runtime, threads=job.threads,
                             precision=inference_precision(job.runtime, job.precision))
        res["init_ms"] = _elapsed_ms(t0)
        res["runtime_version"] = runner.version
        x = _input_for(runner, job.seed)
        res["first_ms"] = timed_loop(runner, x, 1)[0] / 1e6
        progress("warmup", 0, job.warmup)
        timed_loop(runner, x, job.warmup, invoke_only=job.invoke_only)
        gc.collect()
        gc.disable()  # a collection inside the timed loop would be charged to the model
        progress("runs", 0, job.runs)
        with LoopContext(_cores(res["cores"])) as ctx:
            res["timings_ns"] = timed_loop(runner, x, job.runs, lambda i: progress("runs", i, job.runs),
                                           invoke_only=job.invoke_only)
        res["context"] = ctx.result
        res["harness_overhead_ns"] = float(np.median(timed_loop(_NullRunner(), x, OVERHEAD_RUNS)))
        if job.invoke_only_runs:
            res["invoke_only_median_ns"] = float(np.median(
                timed_loop(runner, x, job.invoke_only_runs, invoke_only=True)))
        y = np.asarray(runner.get_output())
        res["peak_rss_mb"] = _mb(peak_kb())
        if peak_from_import and res["peak_rss_mb"] and res["import_rss_mb"]:
            res["mem_mb"] = round(res["peak_rss_mb"] - res["import_rss_mb"], 2)
        # else the peak may be the import's own: no difference to report, the peak alone
        res["output_shape"] = list(y.shape)
        res["output_finite"] = bool(np.isfinite(y).all())
        runner.close()
        res["status"] = "ok"
    except UserError as e:
        res["error"] = str(e)
    except Exception as e:  # a runtime's own exception types: report, do not crash the bench
        first = (str(e).strip().splitlines() or [""])[0]
        res["error"] = f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__
    finally:
        if gc_was_enabled:
            gc.enable()
    res["finished_at"] = now_iso()
    res["temp_after_c"] = cpu_temperature()
    return res


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process: ``--job JSON --out RESULT.json``."""
    ap = argparse.ArgumentParser(prog="python -m edgeconv.bench.host")
    ap.add_argument("--job", required=True, help="BenchJob as JSON")
    ap.add_argument("--out", required=True, help="where to write the result JSON")
    args = ap.parse_args(argv)
    job = BenchJob(**json.loads(args.job))
    from ..util import die_with_parent

    die_with_parent()
    # SIGTERM (the parent stopping, or dying): leave quietly, no traceback; no result is written
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))

    def progress(phase: str, done: int, total: int) -> None:
        print(f"{PROGRESS_PREFIX}{phase} {done} {total}", file=sys.stderr, flush=True)

    # atomic: the parent treats a missing file as a crash, never reads half a result
    atomic_write_text(args.out, json.dumps(measure(job, progress)))
    return 0


# ------------------------------------------------------------------------------------------------
# parent side
# ------------------------------------------------------------------------------------------------
def _worker_env(threads: int) -> dict[str, str]:
    """Keep helper thread pools (OpenMP, BLAS) at the requested size and quieten TF logging."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                "PYTHONUNBUFFERED": "1"})
    # the worker must import this same edgeconv, even when it is not installed
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _failure_reason(returncode: int, log: deque[str]) -> str:
    if returncode < 0:
        try:
            why = f"worker killed by {signal.Signals(-returncode).name}"
        except ValueError:
            why = f"worker killed by signal {-returncode}"
    else:
        why = f"worker exited with code {returncode} without a result"
    last = next((ln.strip() for ln in reversed(log) if ln.strip()), "")
    return f"{why}: {last[:200]}" if last else why


def _to_record(job: BenchJob, res: dict, log: str) -> RunRecord:
    extra = {k: res[k] for k in ("import_ms", "invoke_only_median_ns", "output_shape", "output_finite")
             if k in res}
    extra["inference_precision"] = inference_precision(job.runtime, job.precision)
    if job.invoke_only:
        extra["timed_region"] = "invoke"
    extra["python"] = sys.version.split()[0]
    return RunRecord(
        runtime=job.runtime, status=res.get("status", "failed"), runs_requested=job.runs,
        warmup=job.warmup, threads=job.threads, timings_ns=res.get("timings_ns"),
        runtime_version=res.get("runtime_version"), cores=res.get("cores"), error=res.get("error"),
        init_ms=res.get("init_ms"), first_ms=res.get("first_ms"), started_at=res.get("started_at"),
        finished_at=res.get("finished_at") or now_iso(), temp_before_c=res.get("temp_before_c"),
        temp_after_c=res.get("temp_after_c"), raw_log=log[-LOG_LIMIT:] or None,
        harness_overhead_ns=res.get("harness_overhead_ns"), extra=extra, context=res.get("context"),
        peak_rss_mb=res.get("peak_rss_mb"), import_rss_mb=res.get("import_rss_mb"), mem_mb=res.get("mem_mb"))


def run_job(job: BenchJob, on_progress: ProgressFn | None = None,
            timeout: float | None = None) -> RunRecord:
    """Measure one artifact in a fresh worker process. Never raises for a bad artifact or a
    crashing runtime: the record is ``failed`` with a one-line ``error``."""
    started = now_iso()
    if job.runtime not in HOST_RUNTIMES:
        raise UserError(f"unknown runtime {job.runtime!r} (choose from {', '.join(HOST_RUNTIMES)})")
    if not Path(job.path).is_file():
        return _to_record(job, {"error": f"{job.path}: artifact not found", "started_at": started}, "")
    log: deque[str] = deque(maxlen=400)
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as td:
        out = Path(td) / "result.json"
        cmd = [sys.executable, "-m", "edgeconv.bench.host", "--job", json.dumps(asdict(job)),
               "--out", str(out)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=_worker_env(job.threads))
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    phase, done, total = line[len(PROGRESS_PREFIX):].split()
                    if on_progress:
                        on_progress(phase, int(done), int(total))
                else:
                    log.append(line)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:  # interrupted: do not leave a worker spinning on a core
                proc.kill()
                proc.wait()
        text = "".join(log)
        if out.is_file():
            return _to_record(job, json.loads(out.read_text()), text)
        res = {"error": _failure_reason(proc.returncode, log), "started_at": started}
        return _to_record(job, res, text)


def bench_host(jobs: list[BenchJob], on_result: Callable[[BenchJob, RunRecord], None] | None = None,
               on_progress: Callable[[BenchJob, str, int, int], None] | None = None,
               timeout: float | None = None, until_stable: int = 1) -> list[RunRecord]:
    """Measure ``jobs`` one after another (never in parallel: they would share cores). ``on_result``
    is called as soon as each result exists, so the caller can commit it before the next starts.
    ``until_stable`` > 1: measure a job again (a fresh worker each time) until its verdict is
    stable, at most that many times; every repeat is a result (``extra["repeat"]``)."""
    results = []
    for job in jobs:
        cb = (lambda phase, done, total, job=job: on_progress(job, phase, done, total)) \
            if on_progress else None
        for repeat in range(1, until_stable + 1):
            rec = run_job(job, cb, timeout)
            if until_stable > 1:
                rec.extra["repeat"] = repeat
            if on_result:
                on_result(job, rec)
            results.append(rec)
            if rec.status != "ok" or assess_run(rec).stable:
                break
    return results


if __name__ == "__main__":
    sys.exit(worker_main())
