"""One runner interface for every runtime: TFLite (LiteRT), OpenVINO, ONNX Runtime and PyTorch.

A runner is opened on one artifact and does batch-1 inference. The benchmark's timed region is
``set_input`` + ``invoke`` + ``get_output``; ``run`` is the convenience used for parity/accuracy.
Inputs are always given NCHW float32 (the PyTorch convention and what preprocessing produces);
runners whose model is NHWC or integer transpose/quantize in ``prepare`` (outside the timed region).

Each backend module imports its runtime lazily, so ``python -m edgeconv.runner`` on a board with
only tflite-runtime installed works.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UserError

RUNTIMES = ("tflite", "openvino", "onnxruntime", "torch")
SUFFIX_RUNTIME = {".tflite": "tflite", ".xml": "openvino", ".onnx": "onnxruntime", ".pt": "torch"}


class Runner(ABC):
    runtime: str = ""
    version: str = ""
    layout: str = "NCHW"  # layout of the model's input tensor
    input_shape: tuple[int, ...] = ()

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        """One NCHW float32 image (1,3,H,W) -> the tensor the model takes (layout, dtype)."""
        x = np.asarray(x_nchw, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x)

    @abstractmethod
    def set_input(self, x: np.ndarray) -> None:
        """Set an already prepared input tensor."""

    @abstractmethod
    def invoke(self) -> None: ...

    @abstractmethod
    def get_output(self) -> np.ndarray:
        """Output as float32 logits of shape (1, classes)."""

    def run(self, x_nchw: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x classes float32, one image at a time (batch 1 models)."""
        x_nchw = np.asarray(x_nchw, dtype=np.float32)
        if x_nchw.ndim == 3:
            x_nchw = x_nchw[None]
        outs = []
        for i in range(x_nchw.shape[0]):
            self.set_input(self.prepare(x_nchw[i:i + 1]))
            self.invoke()
            outs.append(np.array(self.get_output(), dtype=np.float32).reshape(1, -1))
        return np.concatenate(outs)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def runtime_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_RUNTIME:
        raise UserError(f"{path}: cannot tell the runtime from the suffix {suffix!r} "
                        f"(expected .tflite, .xml, .onnx)")
    return SUFFIX_RUNTIME[suffix]


def open_runner(path: str | Path, runtime: str | None = None, threads: int = 1,
                precision: str | None = None) -> Runner:
    """Open ``path`` with ``runtime`` (default: from the suffix). ``precision`` tells OpenVINO which
    INFERENCE_PRECISION_HINT to set (f32 unless the artifact is meant to run in f16)."""
    path = Path(path)
    runtime = runtime or runtime_for(path)
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if not path.exists():
        raise ArtifactError(f"{path}: artifact not found")
    if runtime == "tflite":
        from .tflite import TFLiteRunner

        return TFLiteRunner(path, threads)
    if runtime == "openvino":
        from .openvino import OpenVINORunner

        return OpenVINORunner(path, threads, precision)
    if runtime == "onnxruntime":
        from .onnxruntime import ORTRunner

        return ORTRunner(path, threads)
    from .pytorch import TorchRunner

    return TorchRunner(path, threads)
