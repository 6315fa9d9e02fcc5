"""ONNX -> OpenVINO IR: fp32, fp16 (compressed weights) and int8 (NNCF post-training quantization
on the calibration images)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np


def _save_ir(model, xml_out: Path, compress_to_fp16: bool) -> None:
    """Write .xml/.bin into a temp folder, then move .bin and finally .xml into place, so an
    interrupted build never leaves an .xml that points at a half-written .bin."""
    import openvino as ov

    xml_out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".ov-", dir=xml_out.parent))
    try:
        tmp_xml = tmpdir / xml_out.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        os.replace(tmp_xml.with_suffix(".bin"), xml_out.with_suffix(".bin"))
        os.replace(tmp_xml, xml_out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def int8_parameters(subset_size: int) -> dict:
    """``nncf.quantize`` keyword arguments for int8 (also used by the accuracy-control fallback).

    MIXED = symmetric per-channel weights, asymmetric activations (swish outputs are not centred on
    0). Activations per tensor: NNCF's CPU default quantizes depthwise-conv inputs per channel, and
    per-channel min/max from a few hundred images clips channels that real data drives further
    (EfficientNet-Lite0 on the bundled photos: -2.8 pt vs -0.8 pt top-1). Ranges from NNCF's
    histogram estimator (MSE-optimal per tensor) rather than the mean of per-image min/max."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {"preset": nncf.QuantizationPreset.MIXED, "subset_size": subset_size,
            "advanced_parameters": AdvancedQuantizationParameters(
                activations_quantization_params=QuantizationParameters(per_channel=False),
                activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)}


def convert_openvino(onnx_path: str | Path, xml_out: str | Path, precision: str,
                     calib_inputs: np.ndarray | None = None, activation: str = "swish") -> dict:
    import openvino as ov

    xml_out = Path(xml_out)
    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        import nncf

        if calib_inputs is None:
            raise ValueError("int8 needs calibration inputs")
        data = nncf.Dataset([calib_inputs[i:i + 1] for i in range(len(calib_inputs))])
        model = nncf.quantize(model, data, **int8_parameters(len(calib_inputs)))
    _save_ir(model, xml_out, compress_to_fp16=precision == "fp16")
    return {"ops": openvino_op_counts(xml_out)}


def openvino_op_counts(xml_path: str | Path) -> dict[str, int]:
    import openvino as ov

    m = ov.Core().read_model(str(xml_path))
    skip = {"Parameter", "Result", "Constant"}
    return dict(sorted(Counter(op.get_type_name() for op in m.get_ordered_ops()
                               if op.get_type_name() not in skip).items()))
