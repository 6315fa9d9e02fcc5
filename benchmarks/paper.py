#!/usr/bin/env python3
"""`make paper`: the TinyNet paper's comparison at equal FLOPs, measured on this host.

Builds EfficientNet-B0, TinyNet-A..E and EfficientNet B^-1..B^-4 (random weights: the point is
latency; the B^-n are the inverse-giant-formula reconstructions in recipes/), measures each with
the paper's protocol (batch 1, one pinned thread, 1000 timed runs; the mean first, as the paper
reports it, the median beside it) in fp32 and int8, and prints the paper's table: for each pair
(B0/A, B^-1/B, B^-2/C, B^-3/D, B^-4/E) params, MACs, published top-1, the measured latency, the
latency ratio TinyNet / EfficientNet and the paper's Huawei P40 ratio where it gives one. Also as
Markdown and JSON, and the latency/top-1 plot (published top-1: the weights are random).

    .venv/bin/python benchmarks/paper.py [--runs 1000] [--precisions fp32,int8] [--runtime tflite]
                                         [--markdown FILE] [--json FILE] [--plot FILE]

Uses the library behind `edgeconv build` / `bench` / `report` (edgeconv.build.build,
edgeconv.bench.run.run_bench, edgeconv.report); results go to --db (a results store of its own).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (EfficientNet, TinyNet) at (about) equal FLOPs, in the paper's order
PAIRS = [("efficientnet-b0", "tinynet-a"), ("efficientnet-bm1", "tinynet-b"), ("efficientnet-bm2", "tinynet-c"),
         ("efficientnet-bm3", "tinynet-d"), ("efficientnet-bm4", "tinynet-e")]
MODELS = [m for pair in PAIRS for m in pair]
# the paper's Huawei P40 latencies (ms; batch 1, one thread, mean of 1000 runs) where it gives them
P40_MS = {"efficientnet-b0": 99.85, "tinynet-a": 81.30, "efficientnet-bm4": 11.54, "tinynet-e": 9.18}
P40_RATIO = {("efficientnet-b0", "tinynet-a"): 0.81, ("efficientnet-bm4", "tinynet-e"): 0.80}
WHY_RATIOS_DIFFER = (
    "Host and P40 ratios differ because latency is not proportional to MACs, and how far it departs "
    "depends on the hardware and its kernels: an x86 server core (wide SIMD, large caches, TFLite's x86 "
    "kernels) and the P40's ARM cores weigh depthwise convolutions, squeeze-excite, the 1280-channel head "
    "and per-layer overheads differently. The EfficientNet side is also our reconstruction of B^-n "
    "(recipes/efficientnet-bm*.yaml), not necessarily the paper's exact architectures.")


def _m(v: object) -> str:
    return "-" if v is None else f"{float(v) / 1e6:.2f}M"  # type: ignore[arg-type]


def _pct(v: object) -> str:
    return "-" if v is None else f"{float(v):.1f}"  # type: ignore[arg-type]


def _lat(row: dict, side: str) -> str:
    mean, median = row.get(f"{side}_mean_ms"), row.get(f"{side}_median_ms")
    return "-" if mean is None else f"{mean:.2f} ({median:.2f})"


def _ratio(v: object) -> str:
    return "-" if v is None else f"{float(v):.2f}"  # type: ignore[arg-type]


COLUMNS = [
    ("precision", "precision", str),
    ("efficientnet", "EfficientNet", str), ("e_params", "params", _m), ("e_macs", "MACs", _m),
    ("e_top1", "top-1 %", _pct), ("e_latency", "mean (median) ms", str),
    ("tinynet", "TinyNet", str), ("t_params", "params", _m), ("t_macs", "MACs", _m),
    ("t_top1", "top-1 %", _pct), ("t_latency", "mean (median) ms", str),
    ("ratio", "TinyNet/EffNet (mean)", _ratio), ("paper_ratio", "paper P40", _ratio),
]


def paper_table(report: list[dict], runtime: str, precisions: list[str],
                published: dict[str, float | None]) -> list[dict]:
    """One row per (precision, pair) from ``report`` rows (edgeconv.report.report_rows): counts,
    published top-1, mean and median latency of each side, the mean-latency ratio TinyNet /
    EfficientNet (and the median one), and the paper's P40 ratio where it gives one."""
    by = {(r["model"], r["precision"]): r for r in report if r.get("runtime", runtime) == runtime}
    rows = []
    for prec in precisions:
        for eff, tiny in PAIRS:
            if (eff, prec) not in by and (tiny, prec) not in by:
                continue  # neither side measured (not asked for, or failed)
            row: dict = {"precision": prec, "runtime": runtime, "efficientnet": eff, "tinynet": tiny}
            for side, model in (("e", eff), ("t", tiny)):
                r = by.get((model, prec), {})
                row.update({f"{side}_params": r.get("params"), f"{side}_macs": r.get("macs"),
                            f"{side}_top1": published.get(model), f"{side}_mean_ms": r.get("mean_ms"),
                            f"{side}_median_ms": r.get("median_ms"), f"{side}_runs": r.get("runs"),
                            f"{side}_p40_ms": P40_MS.get(model)})
                row[f"{side}_latency"] = _lat(row, side)
            both = row["e_mean_ms"] and row["t_mean_ms"]
            row["ratio"] = row["t_mean_ms"] / row["e_mean_ms"] if both else None
            row["median_ratio"] = row["t_median_ms"] / row["e_median_ms"] if both else None
            row["paper_ratio"] = P40_RATIO.get((eff, tiny))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build", help="build folder")
    ap.add_argument("--db", default="build/paper.db", help="results store for these runs")
    ap.add_argument("--runtime", default="tflite", choices=["tflite", "openvino", "onnxruntime"])
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--models", default=",".join(MODELS), help="a subset (both sides of a pair for its ratio)")
    ap.add_argument("--plot", default="build/paper.png")
    ap.add_argument("--markdown", default="build/paper.md", help="write the table as Markdown here")
    ap.add_argument("--json", default="build/paper.json", help="write the table and the runs as JSON here")
    args = ap.parse_args(argv)

    from edgeconv.bench.run import run_bench
    from edgeconv.build import build
    from edgeconv.formats import format_of
    from edgeconv.recipe import load_recipe
    from edgeconv.report import plot_pareto, report_rows, rich_table, to_markdown
    from edgeconv.store import Store
    from edgeconv.util import atomic_write_text

    precisions = args.precisions.split(",")
    models = args.models.split(",")
    fmt = format_of(args.runtime)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    with Store(args.db) as store:
        for i, m in enumerate(models, 1):
            print(f"[{i}/{len(models)}] build {m} ({fmt} {','.join(precisions)})", file=sys.stderr, flush=True)
            build(m, formats=fmt, precisions=",".join(precisions), out=args.out)
            print(f"[{i}/{len(models)}] bench {m}: {args.runs} runs, 1 thread, batch 1", file=sys.stderr, flush=True)
            _info, outcomes = run_bench(m, "host", runtimes=[args.runtime], precisions=precisions, runs=args.runs,
                                        warmup=args.warmup, threads=1, out=args.out, store=store)
            failed = [o for o in outcomes if o.run.status != "ok"]
            for o in failed:
                print(f"  {m} {o.target.label}: FAILED {o.run.error}", file=sys.stderr)
        device = store.devices()[-1]
        report = report_rows(store, models=models, device="host", threads=1)
    published = {m: load_recipe(m).published.get("top1") for m in models}
    table = paper_table(report, args.runtime, precisions, published)
    host = f"{device.get('name')} ({device.get('cpu_model') or 'unknown CPU'})"
    title = f"TinyNet vs EfficientNet at equal FLOPs, {args.runtime}, host {host}, 1 thread, batch 1, {args.runs} runs"
    from rich.console import Console

    Console(width=200).print(rich_table(table, COLUMNS, title=title))
    md = f"**{title}**\n\n" + to_markdown(table, COLUMNS) + f"\n{WHY_RATIOS_DIFFER}\n"
    for r in table:
        if r["ratio"] is not None and r["paper_ratio"] is not None:
            line = (f"{args.runtime} {r['precision']}: {r['tinynet']} / {r['efficientnet']} latency = "
                    f"{r['t_mean_ms']:.2f} / {r['e_mean_ms']:.2f} ms (mean) = {r['ratio']:.2f} "
                    f"(median {r['median_ratio']:.2f}); paper, Huawei P40: {r['t_p40_ms']} / {r['e_p40_ms']} ms "
                    f"= {r['paper_ratio']:.2f}")
            print(line)
    print(WHY_RATIOS_DIFFER)
    atomic_write_text(args.markdown, md)
    atomic_write_text(args.json, json.dumps({"title": title, "device": device, "protocol": {
        "batch": 1, "threads": 1, "runs": args.runs, "warmup": args.warmup, "latency": "mean first, median beside"},
        "pairs": table, "runs": report, "note": WHY_RATIOS_DIFFER}, indent=2, default=str))
    facts = plot_pareto(report, args.plot)  # its title and axes name the device, threads and precisions
    print(f"markdown: {args.markdown}\njson: {args.json}\nplot: {args.plot} ({len(facts)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
