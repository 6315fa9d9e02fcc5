"""Robust int8: calibrated activation ranges, and the float fallback of ``edgeconv check``.

Ranges. TFLite int8 activation ranges are MSE-optimal ranges of each activation's histogram over
the calibration images, plus bias correction (:mod:`edgeconv.export.tflite_int8`); OpenVINO gets
NNCF's mean of min/max over 8-image batches and fast bias correction
(:func:`edgeconv.export.openvino.int8_parameters`).

Float fallback. When an int8 artifact's top-1 drop is over the limit, the ops that do the damage
stay in float until it holds: :func:`tflite_fallback` ranks the ops with the QuantizationDebugger's
per-layer statistics on calibration images held aside and re-quantizes with ``denylisted_nodes``;
:func:`openvino_fallback` is ``nncf.quantize_with_accuracy_control``. The result is recorded by
``edgeconv.build.replace_artifact`` as the build's int8 artifact (same file, same cache key) with a
``float_fallback`` list of the PyTorch modules kept in float and a ``fallback`` record (drops,
steps, single-thread latency of the plain and the mixed model).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------
# Readable layer names: the PyTorch module path of a TFLite tensor or an ONNX/OpenVINO node
# ----------------------------------------------------------------------------------------------
_KERAS_LAYER = re.compile(r"(?:^|/)(conv_stem|conv_head|classifier|global_pool|act[12]|blocks_\d+_\d+_[a-z0-9_]+?)"
                          r"(?:_\d+)?/")
_BN_CONV = {"ir": {"bn1": "conv_pw", "bn2": "conv_dw", "bn3": "conv_pwl"},
            "ds": {"bn1": "conv_dw", "bn2": "conv_pw"}}


def tflite_layer(tensor_name: str) -> str:
    """``edgeconv_1/blocks_3_1_conv_dw_1/depthwise;...`` -> ``blocks.3.1.conv_dw``: the Keras twin
    names its layers after the PyTorch modules (see ``edgeconv.models.keras_model``)."""
    found = [m.group(1) for part in tensor_name.split(";") for m in [_KERAS_LAYER.search(part + "/")] if m]
    if not found:
        return tensor_name
    # a fused op is named after all its parts (act1/Relu6;conv_stem/BiasAdd;...): name the layer
    name = next((f for f in found if "conv" in f or f == "classifier"), found[0])
    b = re.match(r"^blocks_(\d+)_(\d+)_(.+)$", name)
    if b:
        rest = b.group(3).replace("se_", "se.", 1)
        return f"blocks.{b.group(1)}.{b.group(2)}.{rest}"
    return name


def onnx_layers(onnx_path: str | Path, arch=None) -> dict[str, str]:
    """ONNX node name -> PyTorch module path, from the dynamo exporter's name scopes (a chain of
    nested module paths, then the op). A convolution carries the scope of the batch norm folded
    into it; with ``arch`` (the resolved architecture) that becomes the conv's own name."""
    import ast

    import onnx

    kinds = {}
    if arch is not None:
        kinds = {f"blocks.{s}.{b}": blk.block for s, st in enumerate(arch.stages)
                 for b, blk in enumerate(st.blocks)}
    out = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        chain: list[str] = []
        for sc in scopes[1:]:
            if chain and not sc.startswith(chain[-1] + "."):
                break
            chain.append(sc)
        path = chain[-1] if chain else node.name
        parent, _, leaf = path.rpartition(".")
        if not parent and leaf in ("bn1", "bn2"):
            path = {"bn1": "conv_stem", "bn2": "conv_head"}[leaf]
        elif parent in kinds and leaf in _BN_CONV[kinds[parent]]:
            path = f"{parent}.{_BN_CONV[kinds[parent]][leaf]}"
        out[node.name] = path
    return out


# ----------------------------------------------------------------------------------------------
# Float fallback
# ----------------------------------------------------------------------------------------------
Judge = Callable[[Path], tuple[float, float]]  # artifact -> (top-1 drop in pt, agreement with fp32)


@dataclass
class Fallback:
    """The outcome of a sensitivity pass on one int8 artifact."""

    format: str
    path: Path  # the mixed-precision artifact (a work file beside the build's artifact)
    float_ops: list[str]  # PyTorch module paths kept in float
    nodes: list[str]  # the backend's names for them
    drop_before: float  # pt, the all-int8 model the pass started from
    drop_after: float
    max_drop: float
    method: str
    steps: list[dict] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)  # {"int8": median, "mixed": median}, 1 thread

    @property
    def reached(self) -> bool:
        return self.drop_after <= self.max_drop + 1e-9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["reached"] = self.reached
        return d


def split_calibration(inputs: np.ndarray, held_aside: float = 0.25, minimum: int = 8,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(calibrate on, held aside): a deterministic split of the calibration images; held aside is
    None when there are too few images to spare ``minimum`` of them."""
    n = len(inputs)
    k = int(round(n * held_aside))
    if k < minimum or n - k < minimum:
        return inputs, None
    idx = np.random.default_rng(seed).permutation(n)
    return inputs[np.sort(idx[k:])], inputs[np.sort(idx[:k])]


def channel_nsr(float_values: np.ndarray, quant_values: np.ndarray, scale: float, zero_point: int) -> float:
    """Median over channels (last axis) of the quantization noise-to-signal ratio rms(q - f) / rms(f)
    of one op's output. Unlike RMSE in units of the quantization step, this sees a tensor whose
    range one outlier channel inflates: the other channels drown in rounding noise."""
    f = np.asarray(float_values, np.float64)
    q = (np.asarray(quant_values, np.float64) - zero_point) * scale
    f2, e2 = f.reshape(-1, f.shape[-1]), (q - f).reshape(-1, f.shape[-1])
    sig = np.sqrt((f2 ** 2).mean(0))
    nsr = np.sqrt((e2 ** 2).mean(0)) / (sig + 1e-6 * (sig.max() + 1e-12))
    return float(np.median(nsr))


def _consumers(calibrated: bytes) -> dict[str, list[str]]:
    """Tensor name -> output names of the ops reading it (denylisting works on op output names)."""
    from .export.tflite import _Graph

    g = _Graph(calibrated)
    out: dict[str, list[str]] = {}
    for _op, ins, outs in g.ops:
        for t in ins:
            if t >= 0 and not g.is_const(t):
                out.setdefault(g.name(t), []).extend(g.name(o) for o in outs)
    return out


def rank_tflite_layers(calibrated, held_aside_nhwc: np.ndarray, int8_io: bool = False) -> list[dict]:
    """Every quantized op output of ``calibrated``, most damaged first, from ``tf.lite.experimental.
    QuantizationDebugger``'s per-layer statistics on the held-aside images: the int8 op vs the float
    op on the same int8 input, ranked by :func:`channel_nsr` (``rmse_per_step``, RMSE in units of the
    quantization step, is reported too: 1/sqrt(12) = 0.29 is pure rounding). Each entry's ``nodes``
    are what keeps that tensor in float: the op that writes it and the ops that read it."""
    import csv
    import io

    from .export.tflite import Calibrated, _captured_output, _import_tf, quantize_calibrated

    tf = _import_tf()
    options = tf.lite.experimental.QuantizationDebugOptions(layer_direct_compare_metrics={"nsr": channel_nsr})
    with _captured_output(), warnings.catch_warnings():
        # the debugger runs tf.lite.Interpreter with every tensor kept, and says so twice
        warnings.filterwarnings("ignore", category=UserWarning, module=r"tensorflow\.lite\.python\.interpreter")
        debug_model = quantize_calibrated(calibrated, int8_io, numeric_verify=True)
        dbg = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_options=options,
            debug_dataset=lambda: ([x[None]] for x in np.asarray(held_aside_nhwc, np.float32)))
        dbg.run()
        buf = io.StringIO()
        dbg.layer_statistics_dump(buf)
    readers = _consumers(calibrated.model if isinstance(calibrated, Calibrated) else calibrated)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        scale, name = float(r["scale"]), r["tensor_name"]
        layer = tflite_layer(name)
        rows.append({"node": name, "op": r["op_name"], "layer": layer if layer != name else f"{r['op_name']} {name}",
                     "nsr": round(float(r["nsr"]), 4),
                     "rmse_per_step": round(float(np.sqrt(float(r["mean_squared_error"])) / scale), 4)
                     if scale > 0 else None,
                     "nodes": list(dict.fromkeys([name, *readers.get(name, [])]))})
    rows.sort(key=lambda r: -r["nsr"])
    return rows


def _union(groups: list[dict]) -> list[str]:
    return list(dict.fromkeys(n for g in groups for n in g["nodes"]))


def _layers(nodes: list[str]) -> list[str]:
    return list(dict.fromkeys(tflite_layer(n) for n in nodes))


def tflite_fallback(torch_model, calib_nchw: np.ndarray, judge: Judge, max_drop: float, drop_before: float,
                    work_path: Path, int8_io: bool = False, max_trials: int = 24, progress=None) -> Fallback:
    """Keep the most damaged TFLite ops in float until the top-1 drop is within ``max_drop``.

    Calibrates (histogram ranges) on 75 % of the calibration images, ranks the quantized ops with
    :func:`rank_tflite_layers` on the 25 % held aside, then walks down the ranking: each damaged
    tensor's writer and readers are denylisted (``denylisted_nodes`` of the MLIR quantizer, as
    ``QuantizationDebugOptions`` does), the model re-quantized from the same calibration and judged
    on the evaluation data; they stay in float only if that improved the drop (ties: the agreement
    with PyTorch). Stops when the drop
    is within the limit or after ``max_trials`` ops. ``drop_before``: the build's int8 artifact's
    drop (calibrated on all images); the search starts from the all-int8 model of the 75 %."""
    from .export.tflite import FrozenTwin, _captured_output, _write_atomic, calibrated_model, quantize_calibrated
    from .models.keras_model import keras_from_torch, nchw_to_nhwc

    progress = progress or (lambda *a, **k: None)
    calib_on, held = split_calibration(calib_nchw)
    if held is None:
        progress("warn", message=f"only {len(calib_nchw)} calibration images: ranking TFLite ops on the "
                                 "calibration images themselves (none can be held aside)")
    calib_on = nchw_to_nhwc(calib_on)
    held = calib_on if held is None else nchw_to_nhwc(held)
    kmodel = keras_from_torch(torch_model)
    with FrozenTwin(kmodel) as sm:
        calibrated = calibrated_model(sm, calib_on, int8_io)
    ranking = rank_tflite_layers(calibrated, held, int8_io)

    written: list[list[str]] = []

    def trial(nodes: list[str]) -> tuple[float, float]:
        with _captured_output():
            data = quantize_calibrated(calibrated, int8_io, nodes)
        _write_atomic(data, work_path)
        written.append(nodes)
        return judge(work_path)

    drop0, agree0 = trial([])
    steps = [{"float": None, "drop_pt": round(drop0, 3), "agreement": agree0, "kept": True,
              "note": "all int8, calibrated on the 75 % split"}]
    kept: list[dict] = []
    best = (drop0, -agree0)
    for cand in ranking[:max_trials]:
        if best[0] <= max_drop + 1e-9:
            break
        drop, agree = trial(_union(kept + [cand]))
        better = (drop, -agree) < best
        steps.append({"float": cand["layer"], "op": cand["op"], "nsr": cand["nsr"],
                      "drop_pt": round(drop, 3), "agreement": agree, "kept": better})
        progress("trial", fmt="tflite", layer=cand["layer"], drop=drop, kept=better)
        if better:
            kept.append(cand)
            best = (drop, -agree)
    best_nodes = _union(kept)
    if written[-1] != best_nodes:  # the work file holds a rejected trial: write the best one again
        trial(best_nodes)
    return Fallback("tflite", work_path, _layers(best_nodes), best_nodes,
                    drop_before, best[0], max_drop, "QuantizationDebugger per-layer noise/signal ranking on the "
                    "held-aside calibration split; denylisted_nodes; greedy on the evaluation data",
                    steps, {"images": int(len(calib_on)), "held_aside": 0 if held is calib_on else int(len(held)),
                            "ranking": ranking[:max_trials]})


def _float_layers(ov_model) -> list[str]:
    """Friendly names of the convolutions/matmuls whose weights are float: neither fake-quantized
    nor stored as an integer constant (Constant i8 -> Convert -> Multiply, NNCF's compressed form)."""
    out = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        src = op.input_value(1).get_node()
        while src.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose"):
            src = src.input_value(0).get_node()
        quantized = src.get_type_name() == "FakeQuantize" or (
            src.get_type_name() == "Constant" and src.get_output_element_type(0).is_integral())
        if not quantized:
            out.append(op.get_friendly_name())
    return out


def openvino_fallback(onnx_path: str | Path, calib_nchw: np.ndarray, items: list[tuple[np.ndarray, int]],
                      judge: Judge, max_drop: float, drop_before: float, work_xml: Path,
                      arch=None, int8_xml: str | Path | None = None) -> Fallback:
    """``nncf.quantize_with_accuracy_control``: quantize with the build's parameters and calibration
    images (:func:`edgeconv.export.openvino.int8_parameters`, fed one image at a time, so ranges are
    means of per-image min/max rather than of 8-image batches; ``drop_before`` is the build's
    artifact's drop), then
    revert the quantizers that cost the most top-1 on ``items`` (the evaluation images and their
    labels; NNCF ranks on a subset of them) to float until the drop is within ``max_drop`` points.
    The ops reported as kept in float are those float in the result but not in the plain int8
    model ``int8_xml`` (NNCF never quantizes squeeze-excite convs); without it, it is quantized."""
    import logging

    import nncf
    import openvino as ov
    from nncf.common.logging import nncf_logger

    from .export.openvino import _save_ir, int8_parameters

    def validate(compiled, data) -> tuple[float, list[float]]:
        hits = [float(int(np.argmax(compiled(x)[0])) == y) for x, y in data]
        return float(np.mean(hits)), hits

    kw = int8_parameters(len(calib_nchw))
    kw["advanced_quantization_parameters"] = kw.pop("advanced_parameters")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # one INFO line per step otherwise; we report our own
    try:
        mixed = nncf.quantize_with_accuracy_control(
            ov.convert_model(str(onnx_path)), nncf.Dataset([calib_nchw[i:i + 1] for i in range(len(calib_nchw))]),
            nncf.Dataset(items), validate, max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, **kw)
        if int8_xml is None:
            plain = nncf.quantize(ov.convert_model(str(onnx_path)),
                                  nncf.Dataset([calib_nchw[i:i + 1] for i in range(len(calib_nchw))]),
                                  **int8_parameters(len(calib_nchw)))
        else:
            plain = ov.Core().read_model(str(int8_xml))
    finally:
        nncf_logger.setLevel(level)
    _save_ir(mixed, work_xml, compress_to_fp16=False)
    drop, agree = judge(work_xml)
    never = set(_float_layers(plain))
    nodes = [n for n in _float_layers(mixed) if n not in never]
    names = onnx_layers(onnx_path, arch)
    layers = [names.get(n.split("/")[0], n) for n in nodes]
    return Fallback("openvino", work_xml, layers, nodes, drop_before, drop, max_drop,
                    "nncf.quantize_with_accuracy_control (ranking and validation on the evaluation data)",
                    [{"float": None, "drop_pt": round(drop_before, 3)},
                     {"float": layers, "drop_pt": round(drop, 3), "agreement": agree}],
                    {"images": int(len(calib_nchw)), "held_aside": 0})


def host_latency_ms(path: str | Path, runtime: str, precision: str | None = "int8", runs: int = 200,
                    warmup: int = 20) -> float | None:
    """Median single-thread latency (ms) of one artifact, measured by the host benchmark harness
    in a fresh pinned process; None if the run failed."""
    from .bench.host import BenchJob, run_job
    from .bench.stats import summarize

    rec = run_job(BenchJob(path=str(path), runtime=runtime, precision=precision, threads=1, warmup=warmup,
                           runs=runs))
    if rec.status != "ok" or not rec.timings_ns:
        return None
    return round(summarize(rec.timings_ns).as_ms()["median"], 4)
