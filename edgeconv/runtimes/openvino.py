"""OpenVINO runner. The inference precision is always set explicitly: on CPUs with bf16/AMX support
OpenVINO silently runs "FP32" models in bf16 otherwise."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from . import Runner


def compile_config(threads: int, precision: str | None) -> dict[str, str]:
    return {
        "INFERENCE_NUM_THREADS": str(threads),
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        # fp16 IR holds compressed weights; compute stays f32 unless the user asks for bf16/f16
        "INFERENCE_PRECISION_HINT": precision if precision in ("bf16", "f16") else "f32",
    }


class OpenVINORunner(Runner):
    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int = 1, precision: str | None = None):
        import openvino as ov

        self.version = f"openvino {ov.__version__.split('-')[0]}"
        core = ov.Core()
        weights = Path(path).with_suffix(".bin")
        if Path(path).suffix == ".xml" and Path(path).is_file() and not weights.exists():
            raise ArtifactError(f"{path}: its weights file {weights.name} is missing (an OpenVINO IR is the "
                                ".xml and the .bin beside it; copy both or rebuild)")
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", compile_config(threads, precision))
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else "RuntimeError"
            raise ArtifactError(f"{path}: not a loadable OpenVINO IR ({msg[:160]})") from None
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(int(d) for d in self.compiled.input(0).shape)
        self.layout = "NHWC" if self.input_shape[-1] == 3 else "NCHW"
        self._out = self.compiled.output(0)

    def set_input(self, x: np.ndarray) -> None:
        self.request.set_input_tensor(0, __import__("openvino").Tensor(x, shared_memory=True))

    def invoke(self) -> None:
        self.request.infer()

    def get_output(self) -> np.ndarray:
        return self.request.get_tensor(self._out).data
