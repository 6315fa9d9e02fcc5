"""ONNX -> OpenVINO IR: fp32, fp16 (compressed weights) and int8 (NNCF post-training quantization
on the calibration images)."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..util import naming


def _save_ir(model, xml_out: Path, compress_to_fp16: bool) -> None:
    """Write .xml/.bin into a temp folder, then move .bin and finally .xml into place, so an
    interrupted build never leaves an .xml that points at a half-written .bin."""
    import openvino as ov

    with naming(xml_out):
        xml_out.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=".ov-", dir=xml_out.parent))
    try:
        tmp_xml = tmpdir / xml_out.name
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        except RuntimeError as e:  # OpenVINO reports a failed write as a RuntimeError
            free = shutil.disk_usage(tmpdir).free
            raise OSError(errno.EIO, f"OpenVINO could not write the IR ({e}; {free / 1e6:.1f} MB free there)",
                          str(xml_out)) from e
        with naming(xml_out):
            os.replace(tmp_xml.with_suffix(".bin"), xml_out.with_suffix(".bin"))
            os.replace(tmp_xml, xml_out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# Calibration images per inference while NNCF collects the int8 statistics (quantize_int8). Part
# of the range estimator too, see int8_parameters: changing it changes the int8 models.
STATS_BATCH = 8


def int8_parameters(subset_size: int) -> dict:
    """``nncf.quantize`` keyword arguments for int8 (also used by the accuracy-control fallback).
    ``subset_size`` counts dataset items: batches of :data:`STATS_BATCH` images in
    :func:`quantize_int8`, single images in the fallback.

    MIXED = symmetric per-channel weights, asymmetric activations (swish outputs are not centred on
    0). Activations per tensor: NNCF's CPU default quantizes depthwise-conv inputs per channel, and
    per-channel min/max from a few hundred images clips channels that real data drives further
    (EfficientNet-Lite0 on the bundled photos: -2.8 pt vs -0.8 pt top-1).

    Activation ranges: the min/max of each dataset item, averaged over the items (MEAN_MINMAX,
    ``batchwise_statistics=False``). On batches of 8 images that is the mean over groups of 8 of
    each group's min/max: wider than the mean of per-image ranges (what the fallback's single
    images give), which clips swish outputs (digits TinyNet-E logits: 18 vs 26.5 dB SQNR), and,
    unlike the global min/max, not set by the most extreme image (digits with one 100x channel:
    86 % vs 56 % top-1). It is as accurate as NNCF's HISTOGRAM (MSE-optimal ranges, used before):
    EfficientNet-Lite0 top-1 87.6-88.0 % vs 87.4-87.9 % over four draws of 200 calibration images
    (fp32: 88.1 %), KL divergence to the fp32 outputs within 3 % on Lite0-2. HISTOGRAM histograms
    every activation of every image with NumPy, most of the int8 step's time.

    Fast bias correction (NNCF's default) stays: it costs a sub-model compiled per conv, but
    without it Lite2 loses 1.1 pt more top-1 (89.5 % -> 88.4 %, fp32 89.4 %).

    Weights of every layer use 7 of their 8 bits (``OverflowFix.ENABLE``; NNCF's default does it for
    the first layer only). x86 CPUs without VNNI (AVX2 only, e.g. this AMD EPYC) multiply u8 x s8
    pairs into saturating 16-bit sums, which full-range weights overflow: EfficientNet-Lite0 int8
    there scored 86.4 % top-1 with 94.1 % agreement with PyTorch, 86.9 % / 96.9 % with 7-bit
    weights (88.0 % / 97.8 % with NNCF's default on a VNNI CPU; fp32 88.1 %). An IR is built once and
    deployed anywhere, so it is made safe for every x86 CPU."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {"preset": nncf.QuantizationPreset.MIXED, "subset_size": subset_size,
            "advanced_parameters": AdvancedQuantizationParameters(
                activations_quantization_params=QuantizationParameters(per_channel=False),
                activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_MINMAX,
                batchwise_statistics=False, overflow_fix=nncf.OverflowFix.ENABLE)}


def _dynamic_batch(model) -> bool:
    """Make the batch dimension of ``model``'s input dynamic if every output follows it (a graph
    exported at batch 1 may pin it, e.g. in a Reshape); else leave the model as it was. True if
    it did."""
    import openvino as ov

    if len(model.inputs) != 1:
        return False
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() < 1:
        return False
    batched = ov.PartialShape([ov.Dimension(-1)] + [shape[i] for i in range(1, shape.rank.get_length())])
    try:
        model.reshape({model.input(0): batched})
        if all(o.get_partial_shape().rank.is_static and o.get_partial_shape()[0].is_dynamic
               for o in model.outputs):
            return True
    except Exception:  # noqa: BLE001 - shape inference failures are plain RuntimeErrors
        pass
    model.reshape({model.input(0): shape})
    return False


def quantize_int8(model, calib_inputs: np.ndarray):
    """NNCF post-training int8 of an OpenVINO model on ``calib_inputs`` (N x C x H x W).

    NNCF infers :data:`STATS_BATCH` images at a time (the last batch may be smaller) with the
    batch made dynamic, then the model gets its input shape back: fewer, fuller inferences than
    image by image (25 instead of 200 rounds of Python bookkeeping for 200 images; timings in
    ``benchmarks/build.py``). A model whose graph pins the
    batch to 1 is calibrated image by image. The IR's rt_info records NNCF's ``subset_size``, the
    number of batches."""
    import nncf

    shape = model.input(0).get_partial_shape()
    batch = STATS_BATCH if _dynamic_batch(model) else 1
    items = [calib_inputs[i:i + batch] for i in range(0, len(calib_inputs), batch)]
    quantized = nncf.quantize(model, nncf.Dataset(items), **int8_parameters(len(items)))
    if batch > 1:
        quantized.reshape({quantized.input(0): shape})
    return quantized


def read_onnx(onnx_path: str | Path):
    """The ONNX file as an OpenVINO model (``ov.convert_model``), to convert to several IRs."""
    import openvino as ov

    return ov.convert_model(str(onnx_path))


def convert_openvino(source, xml_out: str | Path, precision: str,
                     calib_inputs: np.ndarray | None = None, activation: str = "swish") -> dict:
    """``source`` (an ONNX path, or a :func:`read_onnx` model: converted once for the three IRs;
    cloned, never changed) -> IR in ``precision`` at ``xml_out``. The IRs equal
    those of a fresh conversion but for generated node names."""
    xml_out = Path(xml_out)
    model = read_onnx(source) if isinstance(source, str | Path) else source.clone()
    if precision == "int8":
        if calib_inputs is None:
            raise ValueError("int8 needs calibration inputs")
        model = quantize_int8(model, calib_inputs)
    _save_ir(model, xml_out, compress_to_fp16=precision == "fp16")
    return {"ops": openvino_op_counts(xml_out)}


def openvino_op_counts(xml_path: str | Path) -> dict[str, int]:
    import openvino as ov

    m = ov.Core().read_model(str(xml_path))
    skip = {"Parameter", "Result", "Constant"}
    return dict(sorted(Counter(op.get_type_name() for op in m.get_ordered_ops()
                               if op.get_type_name() not in skip).items()))
