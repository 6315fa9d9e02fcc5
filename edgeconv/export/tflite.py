"""Keras twin -> .tflite in four precisions, and a look inside the result.

TensorFlow is imported lazily inside :func:`convert_tflite` (seconds of import time, and loud);
:func:`tflite_op_counts` and :func:`float_islands` only read the flatbuffer, with the schema
module that ships with LiteRT (``ai_edge_litert``), falling back to TensorFlow's copy.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolError
from ..formats import TABLE
from ..util import captured_output, import_tensorflow, new_temp_file
from .tflite_int8 import Calibrated, bias_corrected, calibrate_tflite, calibration_structure
from .tflite_int8 import tflite_schema as _schema

PRECISIONS = TABLE["tflite"].precisions


class TFLiteConversionError(ToolError):
    """The TFLite converter failed; the message carries the tail of its log."""


# ----------------------------------------------------------------------------------------------
# Quiet TensorFlow
# ----------------------------------------------------------------------------------------------
def _import_tf():
    tf = import_tensorflow()
    tf.get_logger().setLevel("ERROR")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TF
        pass
    return tf


_captured_output = captured_output  # the name the rest of edgeconv imports


def _log_tail(log: str, lines: int = 12) -> str:
    keep = [ln for ln in log.splitlines() if ln.strip() and "absl::InitializeLog" not in ln]
    return "\n".join(keep[-lines:])


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------
def _model_hw(keras_model) -> tuple[int, int]:
    shape = tuple(keras_model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(f"expected a Keras model with a static NHWC input (N, H, W, 3), got {shape}")
    return int(shape[1]), int(shape[2])


def _check_calib(calib: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    if calib is None or len(calib) == 0:
        raise ValueError("int8 conversion needs calibration inputs (calib_inputs_nhwc)")
    calib = np.asarray(calib, np.float32)
    if calib.ndim != 4 or calib.shape[1:] != (*hw, 3):
        hint = " (looks NCHW: transpose to NHWC)" if calib.ndim == 4 and calib.shape[1] == 3 else ""
        raise ValueError(f"calibration inputs must be N x {hw[0]} x {hw[1]} x 3, got "
                         f"{calib.shape}{hint}")
    return calib


def _configure(converter, tf, precision: str, calib: np.ndarray | None, int8_io: bool) -> None:
    if precision == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":

        def representative_dataset():
            for i in range(len(calib)):
                yield [calib[i:i + 1]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_disable_per_channel = False  # per-channel conv weights (default)
        io_type = tf.int8 if int8_io else tf.float32
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    # "dynamic": Optimize.DEFAULT without a representative dataset = int8 weights, float activations


def calibrate_only(converter) -> bytes:
    """Run the converter (configured for int8) up to calibration: a float model whose tensors
    carry the calibrator's min/max, the input of :func:`quantize_calibrated`. Quantizing it
    without changes gives what ``converter.convert()`` gives."""
    converter._experimental_calibrate_only = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        return converter.convert()


def _frozen_converter_class(lite, frozen):
    class FrozenTwinConverter(lite.TFLiteFrozenGraphConverterV2):
        """TensorFlow's converter of a concrete function, given the function already frozen."""

        def _freeze_concrete_function(self):
            return frozen

    return FrozenTwinConverter


SIGNATURE_KEY = "serving_default"
INPUT_NAME, OUTPUT_NAME = "input", "logits"  # as in the ONNX export


def with_signature(data: bytes) -> bytes:
    """``data`` with a ``serving_default`` signature (input ``input``, output ``logits``, the names
    of the ONNX export) and those names on its I/O tensors: Android's ``Interpreter.runSignature``
    and LiteRT's signature runners need it; a conversion from a concrete function has none. A model
    that has a signature is returned as it is."""
    schema = _schema()
    if schema.Model.GetRootAsModel(data, 0).SignatureDefsLength():
        return data
    from .tflite_int8 import pack_tflite

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    sub = model.subgraphs[0]
    if len(sub.inputs) != 1 or len(sub.outputs) != 1:
        raise ValueError(f"expected one input and one output, got {len(sub.inputs)} and {len(sub.outputs)}")

    def tensor_map(name: str, index: int):
        m = schema.TensorMapT()
        m.name, m.tensorIndex = name, int(index)
        sub.tensors[int(index)].name = name
        return m

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE_KEY, 0
    sig.inputs = [tensor_map(INPUT_NAME, sub.inputs[0])]
    sig.outputs = [tensor_map(OUTPUT_NAME, sub.outputs[0])]
    model.signatureDefs = [sig]
    return pack_tflite(model)


class FrozenTwin:
    """The Keras twin traced once into a frozen graph (weights as constants) for several
    conversions. ``TFLiteConverter.from_keras_model`` exports a SavedModel on every call and
    converting an exported SavedModel costs that export once (three traces of the model, gradient
    functions, the trackable tree), several times what tracing once and freezing costs;
    ``from_concrete_functions`` freezes again on every conversion. The
    converted graph is the same (ops, weights, outputs); the I/O names and the signature are set
    by :func:`with_signature`. ``with FrozenTwin(keras_model) as twin: tflite_bytes(twin, ...)``."""

    def __init__(self, keras_model):
        self.hw = _model_hw(keras_model)
        self._fp32: bytes | None = None
        tf = _import_tf()
        from tensorflow.python.framework import convert_to_constants

        try:
            with _captured_output() as log:
                try:
                    fn = tf.function(lambda x: keras_model(x, training=False))
                    self._function = fn.get_concrete_function(
                        tf.TensorSpec(tuple(keras_model.inputs[0].shape), tf.float32, name=INPUT_NAME))
                    frozen_func, graph_def = convert_to_constants.convert_variables_to_constants_v2_as_graph(
                        self._function, lower_control_flow=False)
                except Exception as e:
                    raise TFLiteConversionError(f"tracing the Keras model failed: {type(e).__name__}: "
                                                f"{str(e).strip()[:400]}\n{_log_tail(log())}") from e
        except BaseException:
            self.close()
            raise
        inputs = [t for t in frozen_func.inputs if t.dtype != tf.resource]
        self._frozen = (graph_def, inputs, frozen_func.outputs, frozen_func)

    def fp32(self) -> bytes:
        """The plain fp32 conversion (made once; int8 calibration starts from it too)."""
        if self._fp32 is None:
            with _captured_output():
                self._fp32 = self.converter().convert()
        return self._fp32

    def converter(self):
        """A ``TFLiteConverter`` of the frozen graph (configure it, then ``convert()``)."""
        tf = _import_tf()
        try:
            from tensorflow.lite.python import lite

            lite.TFLiteConverterBase._set_original_model_type(lite.conversion_metadata_fb.ModelType.KERAS_MODEL)
            converter = _frozen_converter_class(lite, self._frozen)([self._function])
        except (ImportError, AttributeError, TypeError):  # another TensorFlow: the public way
            converter = tf.lite.TFLiteConverter.from_concrete_functions([self._function])
        converter.experimental_lower_to_saved_model = False
        return converter

    def close(self) -> None:
        self._frozen = self._function = None

    def __enter__(self) -> FrozenTwin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def calibrated_model(source: FrozenTwin, calib: np.ndarray, int8_io: bool = False,
                     ranges: str = "histogram") -> Calibrated:
    """The calibrated float model of ``source`` (input of :func:`quantize_calibrated`).
    ``histogram``: range fields are laid out on the fp32 conversion
    (:func:`edgeconv.export.tflite_int8.calibration_structure`), then
    :func:`edgeconv.export.tflite_int8.calibrate_tflite` fills them from all of ``calib`` (batched,
    multi-threaded, MSE-optimal ranges) and measures what bias correction needs; ``minmax``: the
    converter's own calibrator (global min/max, one image at a time), no bias correction."""
    if ranges != "minmax":
        return calibrate_tflite(calibration_structure(source.fp32()), calib)
    converter = source.converter()
    _configure(converter, _import_tf(), "int8", calib, int8_io)
    with _captured_output():
        return Calibrated(calibrate_only(converter))


def quantize_calibrated(calibrated: Calibrated | bytes, int8_io: bool = False, float_nodes: list[str] | None = None,
                        numeric_verify: bool = False) -> bytes:
    """The int8 model of a :func:`calibrated_model` (or a plain :func:`calibrate_only` model):
    bias correction of the ops that get int8 weights, then the MLIR quantizer: per-channel weights,
    float (or int8) I/O; the ops whose output tensors are named in ``float_nodes`` stay in float.
    ``numeric_verify`` adds the NumericVerify ops of ``tf.lite.experimental.QuantizationDebugger``."""
    from tensorflow.lite.python import convert

    tf = _import_tf()
    if isinstance(calibrated, Calibrated):
        calibrated = bias_corrected(calibrated, float_nodes or ())
    io_type = tf.int8 if int8_io else tf.float32
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        data = convert.mlir_quantize(calibrated, disable_per_channel=False,
                                     input_data_type=io_type, output_data_type=io_type,
                                     enable_numeric_verify=numeric_verify,
                                     denylisted_nodes=list(float_nodes) if float_nodes else None)
    return data if numeric_verify else with_signature(convert.deduplicate_readonly_buffers(data))


def _write_atomic(data: bytes, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(out_path.parent, f".{out_path.name}.", ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


INT8_RANGES = ("histogram", "minmax")


def convert_tflite(model, out_path: str | os.PathLike, precision: str,
                   calib_inputs_nhwc: np.ndarray | None = None, int8_io: bool = False,
                   ranges: str = "histogram", float_nodes: list[str] | None = None) -> dict[str, Any]:
    """:func:`tflite_bytes` written atomically to ``out_path``; returns its description with
    ``path`` added."""
    data, info = tflite_bytes(model, precision, calib_inputs_nhwc, int8_io, ranges, float_nodes)
    _write_atomic(data, Path(out_path))
    return {"path": str(out_path), **info}


def tflite_bytes(model, precision: str, calib_inputs_nhwc: np.ndarray | None = None, int8_io: bool = False,
                 ranges: str = "histogram", float_nodes: list[str] | None = None) -> tuple[bytes, dict[str, Any]]:
    """Convert ``model`` (a Keras model, NHWC, static H x W, or a :class:`FrozenTwin` of one, to
    convert several precisions from one export) to a .tflite flatbuffer with batch 1.

    ``precision``: ``fp32``; ``fp16`` (float16 weights); ``dynamic`` (int8 weights, float
    activations); ``int8`` (full integer, per-channel weights, calibrated on ``calib_inputs_nhwc``,
    N x H x W x 3 float32, builtin int8 ops only; float input/output unless ``int8_io``).
    int8 activation ``ranges``: ``histogram`` (MSE-optimal range of each activation's histogram
    over the calibration images, :mod:`edgeconv.export.ranges`) or ``minmax`` (the converter's
    own); ``float_nodes`` (op output tensor names) stay in float.
    Returns the flatbuffer and its description: precision, size, conversion seconds, op counts
    and the I/O dtypes."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if int8_io and precision != "int8":
        raise ValueError("int8_io only applies to precision 'int8'")
    if ranges not in INT8_RANGES:
        raise ValueError(f"unknown int8 ranges {ranges!r} (known: {', '.join(INT8_RANGES)})")
    hw = model.hw if isinstance(model, FrozenTwin) else _model_hw(model)
    calib = _check_calib(calib_inputs_nhwc, hw) if precision == "int8" else None

    tf = _import_tf()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        source = model if isinstance(model, FrozenTwin) else stack.enter_context(FrozenTwin(model))
        log = stack.enter_context(_captured_output())
        # "Statistics for quantized inputs were expected": int8 I/O scales come from calibration
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        try:
            if precision == "int8":
                calibrated = calibrated_model(source, calib, int8_io, ranges)
                data = quantize_calibrated(calibrated, int8_io, float_nodes)
            elif precision == "fp32":
                data = source.fp32()
            else:
                converter = source.converter()
                _configure(converter, tf, precision, None, int8_io)
                data = converter.convert()
            data = with_signature(data)
        except Exception as e:
            tail = _log_tail(log())
            raise TFLiteConversionError(f"TFLite conversion ({precision}) failed: "
                                        f"{type(e).__name__}: {str(e).strip()[:400]}"
                                        + (f"\n{tail}" if tail else "")) from e
    seconds = time.perf_counter() - start
    info = _graph_info(data)
    return data, {
        "precision": precision,
        "int8_io": bool(int8_io),
        "bytes": len(data),
        "seconds": round(seconds, 3),
        "calib_size": 0 if calib is None else len(calib),
        **({"ranges": ranges, "bias_correction": ranges == "histogram"} if precision == "int8" else {}),
        "input_dtype": info["input_dtype"],
        "output_dtype": info["output_dtype"],
        "input_shape": info["input_shape"],
        "ops": info["ops"],
    }


# ----------------------------------------------------------------------------------------------
# Reading the flatbuffer
# ----------------------------------------------------------------------------------------------
def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


class _Graph:
    """The main subgraph of a .tflite flatbuffer: ops (name, inputs, outputs) and tensor types."""

    def __init__(self, data: bytes):
        schema = _schema()
        model = schema.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("not a TFLite model: no subgraphs")
        op_names = _enum_names(schema.BuiltinOperator)
        self.type_names = _enum_names(schema.TensorType)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            if code == schema.BuiltinOperator.CUSTOM:
                codes.append(f"CUSTOM:{(oc.CustomCode() or b'?').decode()}")
            else:
                codes.append(op_names.get(code, f"BUILTIN_{code}"))
        self.subgraphs = [model.Subgraphs(i) for i in range(model.SubgraphsLength())]
        sg = self.subgraphs[0]
        self.ops = []
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            ins = op.InputsAsNumpy().tolist() if op.InputsLength() else []
            outs = op.OutputsAsNumpy().tolist() if op.OutputsLength() else []
            self.ops.append((codes[op.OpcodeIndex()], ins, outs))
        self.all_op_names = [codes[sg_.Operators(i).OpcodeIndex()]
                             for sg_ in self.subgraphs for i in range(sg_.OperatorsLength())]
        self.tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
        self.inputs = set(sg.InputsAsNumpy().tolist())
        self.outputs = set(sg.OutputsAsNumpy().tolist())
        self.model = model

    def dtype(self, t: int) -> str:
        return self.type_names.get(self.tensors[t].Type(), "?")

    def name(self, t: int) -> str:
        return (self.tensors[t].Name() or b"").decode("utf-8", "replace")

    def is_const(self, t: int) -> bool:
        buf = self.tensors[t].Buffer()
        return buf > 0 and self.model.Buffers(buf).DataLength() > 0


def _graph_info(data: bytes) -> dict[str, Any]:
    g = _Graph(data)
    sg = g.subgraphs[0]
    t_in, t_out = sg.Inputs(0), sg.Outputs(0)
    return {
        "ops": dict(sorted(Counter(g.all_op_names).items())),
        "input_dtype": g.dtype(t_in).lower(),
        "output_dtype": g.dtype(t_out).lower(),
        "input_shape": g.tensors[t_in].ShapeAsNumpy().tolist(),
    }


def _read(path: str | os.PathLike) -> bytes:
    return Path(path).read_bytes()


def tflite_op_counts(path: str | os.PathLike) -> dict[str, int]:
    """Op type -> count over all subgraphs of a .tflite file (custom ops as ``CUSTOM:name``)."""
    return _graph_info(_read(path))["ops"]


_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def float_islands(path: str | os.PathLike) -> list[str]:
    """What keeps an int8 model from being integer-only, one line per op: a QUANTIZE or
    DEQUANTIZE that is not at the graph's input/output boundary, or any other op with a float
    input or output (computing in float, or fed float constants). Empty = integer-only inside."""
    g = _Graph(_read(path))
    found = []
    for i, (op, ins, outs) in enumerate(g.ops):
        ins = [t for t in ins if t >= 0]  # -1 = optional input not given
        float_in = [t for t in ins if g.dtype(t) in _FLOAT_TYPES]
        float_out = [t for t in outs if g.dtype(t) in _FLOAT_TYPES]
        if op == "QUANTIZE" and float_in:
            if all(t in g.inputs for t in float_in):
                continue
            found.append(f"#{i} QUANTIZE of {g.name(float_in[0])!r} inside the graph")
        elif op == "DEQUANTIZE":
            if all(t in g.outputs for t in outs):
                continue
            what = "a constant" if all(g.is_const(t) for t in ins) else "an activation"
            found.append(f"#{i} DEQUANTIZE of {what} ({g.name(ins[0])!r}) inside the graph")
        elif float_in or float_out:
            t = (float_out or float_in)[0]
            found.append(f"#{i} {op} computes in {g.dtype(t).lower()} ({g.name(t)!r})")
    return found
