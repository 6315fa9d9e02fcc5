#!/usr/bin/env python3
"""`make paper`: the TinyNet paper's latency comparison on this host.

Builds TinyNet-A..E, EfficientNet-B0 and EfficientNet-B^-4 (random weights: the point is latency),
benchmarks them with the paper's protocol (batch 1, one pinned thread, 1000 runs) through the
`edgeconv` CLI, prints the report table, writes the Pareto plot, and prints the latency ratios the
paper reports on a Huawei P40: TinyNet-A / EfficientNet-B0 = 0.81 and TinyNet-E / B^-4 = 0.80.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODELS = ["tinynet-a", "tinynet-b", "tinynet-c", "tinynet-d", "tinynet-e", "efficientnet-b0", "efficientnet-bm4"]
PAPER = {("tinynet-a", "efficientnet-b0"): 0.81, ("tinynet-e", "efficientnet-bm4"): 0.80}


def edgeconv(*args: str, capture: bool = False) -> str:
    exe = Path(sys.executable).with_name("edgeconv")
    cmd = [str(exe) if exe.exists() else "edgeconv", *args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return r.stdout or ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build")
    ap.add_argument("--db", default="build/paper.db")
    ap.add_argument("--runtime", default="tflite")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--runs", default="1000")
    ap.add_argument("--plot", default="build/paper.png")
    args = ap.parse_args()
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    os.environ["EDGECONV_DB"] = args.db
    for m in MODELS:
        edgeconv("build", m, "--out", args.out, "--formats", args.runtime if args.runtime != "onnxruntime"
                 else "onnx", "--precisions", args.precisions, "-q")
        edgeconv("bench", m, "--device", "host", "--runtime", args.runtime, "--precisions", args.precisions,
                 "--runs", args.runs, "--out", args.out)
    models = ",".join(MODELS)
    print(edgeconv("report", "--models", models, "--device", "host", "--markdown", "--plot", args.plot,
                   capture=True))
    rows = json.loads(edgeconv("report", "--models", models, "--device", "host", "--json", capture=True))
    for prec in args.precisions.split(","):
        med = {r["model"]: r["median_ms"] for r in rows
               if r.get("precision") == prec and r.get("runtime", args.runtime) == args.runtime}
        for (a, b), paper in PAPER.items():
            if a in med and b in med:
                print(f"{args.runtime} {prec}: {a} / {b} latency = {med[a]:.3f} / {med[b]:.3f} ms = "
                      f"{med[a] / med[b]:.2f}  (paper, Huawei P40: {paper:.2f})")
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
