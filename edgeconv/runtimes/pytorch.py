"""PyTorch runner: the reference every artifact is compared against."""
from __future__ import annotations

import numpy as np

from . import Runner


class TorchRunner(Runner):
    runtime = "torch"

    def __init__(self, model, threads: int = 1):
        import torch

        self._torch = torch
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            model = torch.export.load(str(model)).module()
        self.model = model.eval()
        self.threads = threads
        self.version = f"torch {torch.__version__}"
        res = getattr(getattr(model, "arch", None), "resolution", None)
        self.input_shape = (1, 3, res, res) if res else ()
        self._x = self._y = None

    def set_input(self, x: np.ndarray) -> None:
        self._x = self._torch.from_numpy(np.ascontiguousarray(x))

    def invoke(self) -> None:
        with self._torch.inference_mode():
            self._y = self.model(self._x)

    def get_output(self) -> np.ndarray:
        return self._y.numpy()

    def run(self, x_nchw: np.ndarray) -> np.ndarray:
        # batched: the reference does not need to be batch 1
        with self._torch.inference_mode():
            xs = self._torch.from_numpy(np.ascontiguousarray(x_nchw, dtype=np.float32))
            return np.concatenate([self.model(xs[i:i + 64]).numpy() for i in range(0, len(xs), 64)])
