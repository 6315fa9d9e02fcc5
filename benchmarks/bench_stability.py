#!/usr/bin/env python3
"""Is the host benchmark repeatable? Runs the paper's protocol (batch 1, one pinned thread, 1000 timed
runs) several times, each in a fresh worker process, and prints every median, their coefficient of
variation (target <= 2 %) and what the Python harness itself costs per invocation compared with the
runtime's own invoke().

    python benchmarks/bench_stability.py                      # tinynet-e TFLite int8 (builds it)
    python benchmarks/bench_stability.py --artifact m.tflite  # any artifact, no build needed
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edgeconv.bench.host import BenchJob, run_job  # noqa: E402
from edgeconv.bench.stats import summarize  # noqa: E402
from edgeconv.errors import UserError  # noqa: E402
from edgeconv.runtimes import runtime_for  # noqa: E402


def built_artifact(model: str, out: str) -> tuple[Path, str]:
    """(path, precision) of MODEL's TFLite int8 artifact, built with edgeconv's build step."""
    from edgeconv.bench.run import read_manifest, select_targets
    from edgeconv.build import build

    manifest = build(model, formats=["tflite"], precisions=["int8"], out=out)
    folder = Path(out) / manifest.get("model", model)
    manifest, sha = read_manifest(folder)
    targets = select_targets(manifest, folder, sha, ["tflite"], ["int8"])
    if not targets:
        raise UserError(f"{folder}: the build made no tflite int8 artifact")
    return targets[0].file, "int8"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tinynet-e", help="zoo model to build (default tinynet-e)")
    ap.add_argument("--artifact", help="benchmark this .tflite/.xml/.onnx instead of building")
    ap.add_argument("--precision", help="precision of --artifact (default: from its file name)")
    ap.add_argument("--out", default="build", help="build folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target-cv", type=float, default=2.0, help="percent (default 2)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the CV misses the target")
    args = ap.parse_args(argv)
    try:
        if args.artifact:
            path = Path(args.artifact)
            precision = args.precision or path.stem
        else:
            path, precision = built_artifact(args.model, args.out)
        runtime = runtime_for(path)
    except UserError as e:
        print(f"bench_stability: error: {e}", file=sys.stderr)
        return 1

    print(f"{path} ({runtime} {precision}): {args.repeats} x {args.runs} runs, {args.warmup} warmup, "
          f"{args.threads} thread(s), a fresh process each")
    medians, overheads, invoke_only = [], [], []
    for i in range(args.repeats):
        rec = run_job(BenchJob(str(path), runtime, precision, threads=args.threads, warmup=args.warmup,
                               runs=args.runs, invoke_only_runs=args.runs))
        if rec.status != "ok":
            print(f"bench_stability: error: repeat {i + 1}: {rec.error}", file=sys.stderr)
            return 1
        s = summarize(rec.timings_ns or [])
        medians.append(s.median / 1e6)
        overheads.append(rec.harness_overhead_ns or 0.0)
        invoke_only.append(rec.extra.get("invoke_only_median_ns", 0.0) / 1e6)
        print(f"repeat {i + 1}: median {medians[-1]:.4g} ms  (mean {s.mean / 1e6:.4g}, p90 "
              f"{s.p90 / 1e6:.4g}, std {s.std / 1e6:.4g}; invoke() alone {invoke_only[-1]:.4g} ms; "
              f"core {rec.cores})")

    mean = statistics.fmean(medians)
    cv = 100 * statistics.stdev(medians) / mean if len(medians) > 1 else 0.0  # sample std of medians
    verdict = "OK" if cv <= args.target_cv else "ABOVE TARGET"
    overhead = statistics.median(overheads)
    inv = statistics.median(invoke_only)
    print(f"medians: {', '.join(f'{m:.4g}' for m in medians)} ms")
    print(f"coefficient of variation: {cv:.2f} % (sample std / mean of the medians; target <= "
          f"{args.target_cv:g} %): {verdict}")
    print(f"harness overhead: {overhead:.0f} ns per invocation (empty loop of the same timed calls) = "
          f"{100 * overhead / 1e6 / mean:.3f} % of the median")
    print(f"runtime's own invoke(): {inv:.4g} ms median; set_input + get_output + harness: "
          f"{mean - inv:.4g} ms ({100 * (mean - inv) / mean:.1f} % of the median)")
    return 1 if args.strict and cv > args.target_cv else 0


if __name__ == "__main__":
    sys.exit(main())
