#!/usr/bin/env python3
"""Figures behind the stability verdict, peak memory and ``edgeconv compare``:

    python benchmarks/bench_trust.py verdicts --artifact build/tinynet-e/tflite/int8.tflite
        # the verdict of a run as the machine is, then with a Python busy loop pinned to the same core
    python benchmarks/bench_trust.py memory build/tinynet-e/tflite/{fp32,int8}.tflite ...
        # peak resident memory of the host worker: runtime import alone, load + inference above it
    python benchmarks/bench_trust.py memory-adb tinynet-e efficientnet-b0 --out build
        # the same on the emulated phone of tests/adb_emulator.py (the Python runner's VmHWM)
    python benchmarks/bench_trust.py false-alarms --artifact build/tinynet-e/tflite/int8.tflite --pairs 10
        # the same artifact measured twice, PAIRS times: how often compare calls it a regression

Every measurement is a real worker process (``edgeconv.bench.host.run_job``), stored in a temporary
results database exactly as ``edgeconv bench`` stores it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout (memory-adb: its tests/)

from edgeconv.bench.host import BenchJob, run_job  # noqa: E402
from edgeconv.bench.stability import assess_run  # noqa: E402
from edgeconv.runtimes import runtime_for  # noqa: E402
from edgeconv.store import ArtifactRecord, Store  # noqa: E402
from edgeconv.sysinfo import host_info  # noqa: E402
from edgeconv.util import sha256_file  # noqa: E402

BUSY = ("import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
        "end = time.monotonic() + float(sys.argv[2])\nwhile time.monotonic() < end:\n    pass\n")


def _job(path: str, args, core: int | None = None) -> BenchJob:
    precision = Path(path).stem.split(".")[0]
    return BenchJob(path, runtime_for(path), precision if precision in ("fp32", "fp16", "dynamic", "int8") else None,
                    runs=args.runs, warmup=args.warmup, core=core)


def _record(store: Store, device: int, path: str, rec, tag: str) -> int:
    rec.tag = tag
    p = Path(path)
    art = ArtifactRecord(model=p.parent.parent.name, format=runtime_for(path).replace("onnxruntime", "onnx"),
                         precision=p.stem, path=str(p.resolve()), sha256=sha256_file(p))
    return store.record_run(device, art, rec)


def _line(rec) -> str:
    v = assess_run(rec)
    ctx = rec.context or {}
    wait = 100 * ctx.get("run_delay_ns", 0) / ctx["wall_ns"] if ctx.get("wall_ns") else float("nan")
    med = sorted(rec.timings_ns)[len(rec.timings_ns) // 2] / 1e6
    return (f"median {med:.4g} ms, waited {wait:.0f} % for the core, load {ctx.get('loadavg_before')} -> "
            f"{ctx.get('loadavg_after')}: {v.text()}")


def verdicts(args) -> int:
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    rec = run_job(_job(args.artifact, args, core))
    print(f"as the machine is (core {core}): {_line(rec)}")
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(core), "600"])
    try:
        time.sleep(0.3)
        rec = run_job(_job(args.artifact, args, core))
    finally:
        busy.kill()
        busy.wait()
    print(f"with a busy loop (pid {busy.pid}) pinned to core {core}: {_line(rec)}")
    return 0


def memory(args) -> int:
    print("artifact | runtime | import MB | load+inference MB | peak MB")
    for path in args.artifacts:
        rec = run_job(_job(path, args))
        if rec.status != "ok":
            print(f"{path}: {rec.error}", file=sys.stderr)
            return 1
        print(f"{path} | {rec.runtime} | {rec.import_rss_mb} | {rec.mem_mb} | {rec.peak_rss_mb}")
    return 0


def memory_adb(args) -> int:
    """``edgeconv bench NAME --device android --runner python`` on the test suite's emulated phone."""
    import json

    from click.testing import CliRunner

    from edgeconv.cli.bench import bench
    from tests.adb_emulator import AdbDeviceEmulator, IsolatedAdbServer

    with tempfile.TemporaryDirectory() as tmp:
        server = IsolatedAdbServer(Path(tmp)).start()
        emu = AdbDeviceEmulator().start()
        try:
            server.connect(emu)
            os.environ.update({k: v for k, v in server.env.items() if k.startswith(("ANDROID", "ADB")) or k == "HOME"})
            print("model | precision | import MB | load+inference MB | peak MB | verdict")
            for model in args.models:
                r = CliRunner().invoke(bench, [model, "--device", "android", "--serial", emu.serial, "--out", args.out,
                                               "--runner", "python", "--cooldown", "0", "--runs", str(args.runs),
                                               "--warmup", str(args.warmup), "--precisions", "fp32,int8",
                                               "--db", str(Path(tmp) / "r.db"), "--json"])
                if r.exit_code:
                    print(r.stderr, file=sys.stderr)
                    return 1
                for x in json.loads(r.stdout)["results"]:
                    print(f"{model} | {x['precision']} | {x['import_rss_mb']} | {x['mem_mb']} | {x['peak_rss_mb']} | "
                          f"{x['verdict']}")
        finally:
            server.run("disconnect", emu.serial, timeout=15)
            emu.close()
            server.kill()
    return 0


def false_alarms(args) -> int:
    from edgeconv.compare import REGRESSION, compare

    counts: dict[str, int] = {}
    raw = 0  # pairs whose interval alone lies above the limit (what a gate without verdicts would fail)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "r.db") as store:
        device = store.upsert_device(host_info())
        for i in range(args.pairs):
            a, b = (run_job(_job(args.artifact, args, args.core)) for _ in range(2))
            _record(store, device, args.artifact, a, f"a{i}")
            _record(store, device, args.artifact, b, f"b{i}")
            (row,) = compare(f"a{i}", f"b{i}", store=store, max_slowdown_pct=args.max_slowdown).latency
            counts[row.verdict] = counts.get(row.verdict, 0) + 1
            raw += row.ci[0] > 1 + args.max_slowdown / 100
            print(f"pair {i + 1}: ratio {row.ratio:.3f} (CI {row.ci[0]:.3f}-{row.ci[1]:.3f}) -> {row.verdict}; "
                  f"runs {assess_run(a).status}/{assess_run(b).status}")
    alarms = counts.get(REGRESSION, 0)
    print(f"false alarms (regression on the same artifact): {alarms} of {args.pairs}; verdicts {counts}; "
          f"without the stability rule (CI above +{args.max_slowdown:g} % alone): {raw} of {args.pairs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--core", type=int)
    sub = ap.add_subparsers(dest="what", required=True)
    v = sub.add_parser("verdicts")
    v.add_argument("--artifact", required=True)
    m = sub.add_parser("memory")
    m.add_argument("artifacts", nargs="+")
    a = sub.add_parser("memory-adb")
    a.add_argument("models", nargs="+")
    a.add_argument("--out", default="build", help="build folder (built when missing)")
    f = sub.add_parser("false-alarms")
    f.add_argument("--artifact", required=True)
    f.add_argument("--pairs", type=int, default=10)
    f.add_argument("--max-slowdown", type=float, default=5.0)
    args = ap.parse_args(argv)
    return {"verdicts": verdicts, "memory": memory, "memory-adb": memory_adb,
            "false-alarms": false_alarms}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
