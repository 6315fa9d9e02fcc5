"""ONNX Runtime runner (CPU execution provider, fixed intra/inter-op threads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from . import Runner


class ORTRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.version = f"onnxruntime {ort.__version__}"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{path}: not a loadable ONNX model ({msg[:160]})") from None
        inp = self.sess.get_inputs()[0]
        self._in_name = inp.name
        self._out_name = self.sess.get_outputs()[0].name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        self.layout = "NHWC" if self.input_shape[-1] == 3 else "NCHW"
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    def set_input(self, x: np.ndarray) -> None:
        self._x = x

    def invoke(self) -> None:
        self._y = self.sess.run([self._out_name], {self._in_name: self._x})[0]

    def get_output(self) -> np.ndarray:
        return self._y
