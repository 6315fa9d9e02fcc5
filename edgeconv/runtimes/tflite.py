"""LiteRT / tflite-runtime / tf.lite interpreter runner (in that import order: boards often only
have tflite-runtime)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from . import Runner


def load_interpreter_class():
    """(Interpreter class, package name, version) from the first runtime that imports."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai-edge-litert", getattr(ai_edge_litert, "__version__", "?")
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod

        return mod.Interpreter, "tflite-runtime", getattr(tflite_runtime, "__version__", "?")
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise ArtifactError("no TFLite interpreter: install ai-edge-litert, tflite-runtime or "
                            "tensorflow") from None
    return tf.lite.Interpreter, "tensorflow", tf.__version__


class TFLiteRunner(Runner):
    runtime = "tflite"
    layout = "NHWC"

    def __init__(self, path: str | Path, threads: int = 1):
        cls, pkg, ver = load_interpreter_class()
        self.version = f"{pkg} {ver}"
        try:
            # XNNPACK is applied by default by every recent interpreter build
            self.interp = cls(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{path}: not a loadable .tflite model ({msg[:160]})") from None
        inp = self.interp.get_input_details()[0]
        out = self.interp.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self._in_dtype = inp["dtype"]
        self._in_q = inp.get("quantization", (0.0, 0))
        self._out_q = out.get("quantization", (0.0, 0))
        self._out_int = np.issubdtype(out["dtype"], np.integer)
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.layout = "NHWC" if self.input_shape[-1] == 3 else "NCHW"

    @property
    def output_step(self) -> float | None:
        """One quantization step of the logits: the scale of an integer output, or of the integer
        tensor of the output's shape that a float-I/O int8 model dequantizes last; None when the
        logits are never integers (fp32/fp16/dynamic-range models)."""
        if self._out_int:
            return float(self._out_q[0]) or None
        out = self.interp.get_output_details()[0]
        steps = [float(d["quantization"][0]) for d in self.interp.get_tensor_details()
                 if list(d["shape"]) == list(out["shape"]) and np.issubdtype(d["dtype"], np.integer)
                 and d["quantization"][0]]
        return steps[-1] if steps else None

    @property
    def integer_io(self) -> bool:
        return np.issubdtype(self._in_dtype, np.integer)

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        x = super().prepare(x_nchw)
        if self.integer_io:
            scale, zero = self._in_q
            info = np.iinfo(self._in_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self._in_dtype)
        return x

    def set_input(self, x: np.ndarray) -> None:
        self.interp.set_tensor(self._in_index, x)

    def invoke(self) -> None:
        self.interp.invoke()

    def get_output(self) -> np.ndarray:
        y = self.interp.get_tensor(self._out_index)
        if self._out_int:
            scale, zero = self._out_q
            y = (y.astype(np.float32) - zero) * scale
        return y
