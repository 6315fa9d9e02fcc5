#!/usr/bin/env python3
"""OpenVINO int8 of EfficientNet-Lite0 (real weights) under NNCF's three ``overflow_fix`` modes:
top-1 and top-1 agreement with PyTorch on the 1000 shared ImageNet images, 200 calibration images.
On x86 CPUs without VNNI (AVX2 only) 8-bit weights can saturate 16-bit intermediate sums; edgeconv
uses ENABLE (7-bit weights everywhere, see edgeconv.export.openvino.int8_parameters).

    .venv/bin/python benchmarks/ov_overflow.py [--model efficientnet-lite0] [--modes FIRST_LAYER,ENABLE,DISABLE]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--modes", default="FIRST_LAYER,ENABLE,DISABLE")
    args = ap.parse_args()

    import nncf

    from edgeconv.data import calibration_set, default_sample_dir
    from edgeconv.evaluate import artifact_logits, load_eval_data, topk_accuracy, torch_logits
    from edgeconv.export import openvino as ovx
    from edgeconv.export.onnx import export_onnx
    from edgeconv.models.weights import load_model
    from edgeconv.recipe import load_recipe
    from edgeconv.sysinfo import interesting_flags, parse_cpuinfo

    sample = default_sample_dir()
    if sample is None:
        print("no shared sample (../shared/data/imagenet-sample)")
        return 1
    recipe = load_recipe(args.model)
    model, winfo = load_model(recipe, f"pypi:{args.model}")
    recipe = recipe.with_classes(winfo.num_classes)
    work = Path(tempfile.mkdtemp(prefix="edgeconv-ovfix-"))
    export_onnx(model, recipe.resolution, work / "m.onnx")
    calib = calibration_set(str(sample), recipe.resolution, recipe.preprocess, size=200)
    data = load_eval_data(sample, recipe.resolution, recipe.preprocess)
    ref, _ = torch_logits(model, data)
    labels = data.labels
    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else {}
    print(f"CPU: {cpu.get('model name', '?')}; flags: {' '.join(interesting_flags(cpu.get('flags', ''))) or '?'}")
    print(f"{args.model}, {len(labels)} images: pytorch/fp32 top-1 {100 * topk_accuracy(ref, labels, 1):.2f} %")
    base = ovx.int8_parameters
    for mode in args.modes.split(","):
        def params(n, mode=mode):
            p = base(n)
            p["advanced_parameters"] = dataclasses.replace(p["advanced_parameters"],
                                                           overflow_fix=getattr(nncf.OverflowFix, mode))
            return p

        ovx.int8_parameters = params
        t = time.perf_counter()
        ovx.convert_openvino(work / "m.onnx", work / f"{mode}.xml", "int8", calib.inputs)
        seconds = time.perf_counter() - t
        logits, _ = artifact_logits(work / f"{mode}.xml", "openvino", data)
        print(f"  overflow_fix={mode:<12} top-1 {100 * topk_accuracy(logits, labels, 1):6.2f} %  agreement "
              f"{100 * (logits.argmax(1) == ref.argmax(1)).mean():6.2f} %  ({seconds:.1f} s)", flush=True)
    ovx.int8_parameters = base
    return 0


if __name__ == "__main__":
    sys.exit(main())
