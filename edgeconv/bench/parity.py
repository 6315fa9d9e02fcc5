"""On-device output parity: does the device compute what the host computes for the same artifact?

K fixed inputs (the first K of edgeconv's bundled calibration photos, preprocessed as the recipe
says: deterministic, the same bytes every time) are run on the device by the runner after its timed
runs; the device's logits come back and are compared with the host's logits of the same file:
max |diff|, cosine similarity, top-1 agreement. Tolerance: int8 outputs may differ by at most one
output quantization step (kernels round differently on ARM and x86); float outputs by a fraction of
the host logits' range (:data:`RELATIVE_TOLERANCE`). Beyond it the run is marked "output differs
from host".

Only edgeconv's own runner (``--runner python``) can take inputs and write outputs. TFLite's
``benchmark_model`` reads inputs from files (``--input_layer_value_files``) but has no flag that
writes its outputs, and OpenVINO's ``benchmark_app`` writes none either: their runs are stored as
"not checked", with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PARITY_INPUTS = 8  # K
RELATIVE_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "dynamic": 2e-2}  # x (host logit max - min)
QUANT_STEP_SLACK = 1e-6  # one quantization step, give or take float rounding of the scale

NOT_CHECKED = {
    "benchmark_model": "benchmark_model has no flag that writes its outputs (it reads inputs with "
                       "--input_layer_value_files, but reports only timings): use --runner python to check",
    "benchmark_app": "benchmark_app does not write its outputs: use --runner python to check",
}


@dataclass
class HostReference:
    """The fixed inputs and the host's outputs of one artifact."""

    inputs: np.ndarray  # K x 3 x H x W float32 (NCHW, before the runner's prepare())
    logits: np.ndarray  # K x classes float32 (dequantized)
    quant_step: float | None  # output scale of an integer-output model
    version: str


def parity_inputs(manifest: dict, k: int = PARITY_INPUTS) -> np.ndarray:
    """The first ``k`` bundled calibration photos, preprocessed like the recipe of ``manifest``."""
    from ..data import bundled_calibration_dir, find_images, load_image
    from ..recipe import Preprocess

    pp = Preprocess(**manifest["input"]["preprocess"])
    resolution = int(manifest["input"]["shape"][-1])
    arrays = []
    for path in find_images(bundled_calibration_dir()):
        a = load_image(path, resolution, pp)
        if a is not None:
            arrays.append(a)
        if len(arrays) == k:
            break
    return np.stack(arrays).astype(np.float32)


def host_reference(file: str | Path, runtime: str, manifest: dict, k: int = PARITY_INPUTS) -> HostReference:
    """The inputs and this host's outputs for ``file`` (one thread, the same runtime)."""
    from ..runner import run_inputs
    from ..runtimes import open_runner

    inputs = parity_inputs(manifest, k)
    runner = open_runner(str(file), runtime, threads=1, precision="f32" if runtime == "openvino" else None)
    try:
        logits = run_inputs(runner, inputs)
        return HostReference(inputs, logits, getattr(runner, "output_step", None), runner.version)
    finally:
        runner.close()


def compare(device: np.ndarray, host: HostReference, precision: str,
            device_version: str | None = None) -> dict[str, Any]:
    """The store's parity record (``store.PARITY_FIELDS``) of the device's outputs; a mismatch
    names both runtimes when they are not the same version."""
    ref = host.logits
    k = len(ref)
    device = np.asarray(device, dtype=np.float32)
    if device.shape != ref.shape:
        return {"status": "differs", "inputs": k,
                "reason": f"the device returned outputs of shape {list(device.shape)}, the host {list(ref.shape)}"}
    diff = np.abs(device.astype(np.float64) - ref)
    max_diff = float(diff.max()) if diff.size else 0.0
    num = (device.astype(np.float64) * ref).sum(axis=1)
    den = np.linalg.norm(device, axis=1) * np.linalg.norm(ref, axis=1)
    cosine = float(np.min(np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)))
    agree = float(np.mean(device.argmax(axis=1) == ref.argmax(axis=1)))
    logit_range = float(ref.max() - ref.min())
    if host.quant_step:
        tolerance = host.quant_step * (1 + QUANT_STEP_SLACK)
        allowed = "1 output quantization step"
    else:
        rel = RELATIVE_TOLERANCE.get(precision, RELATIVE_TOLERANCE["dynamic"])
        tolerance = rel * max(logit_range, 1e-6)
        allowed = f"{rel:g} of the logit range"
    record = {"status": "ok", "inputs": k, "max_abs_diff": max_diff, "cosine": cosine,
              "top1_agreement": agree, "tolerance": tolerance, "quant_step": host.quant_step,
              "logit_range": logit_range, "reason": None}
    if not np.isfinite(device).all():
        record.update(status="differs", reason="the device returned non-finite outputs")
    elif max_diff > tolerance:
        worst = np.unravel_index(int(diff.argmax()), diff.shape)
        record.update(status="differs", reason=f"max |diff| {max_diff:.4g} > {tolerance:.4g} ({allowed}) at "
                      f"input {int(worst[0])}, output {int(worst[1])}; top-1 agreement {100 * agree:.0f}%")
    if record["status"] == "differs" and device_version and device_version != host.version:
        record["reason"] += f" (device runs {device_version}, the host {host.version})"
    return record


def not_checked(reason: str) -> dict[str, Any]:
    return {"status": "not checked", "reason": reason}


def describe_mismatch(label: str, record: dict[str, Any]) -> str:
    return f"output differs from host ({label}): {record.get('reason')}"
