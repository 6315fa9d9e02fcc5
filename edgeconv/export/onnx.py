"""PyTorch -> ONNX with the dynamo exporter (opset 18), checked by onnx.checker."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from pathlib import Path

from ..errors import ArtifactError
from ..util import atomic_path

OPSET = 18


@contextlib.contextmanager
def quiet():
    """The exporter prints progress and warnings (e.g. about torchvision ops) we do not need."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                              "onnxscript", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def export_onnx(model, resolution: int, out: str | Path) -> dict:
    """``model`` (an :class:`~edgeconv.models.torch_model.EfficientNet`, or any module taking one
    N x 3 x H x W input) -> ONNX at batch 1, checked by ``onnx.checker``. BatchNorms are folded into
    the convs first: the dynamo exporter's time grows with the op count, and the ONNX optimizer
    would fold them anyway."""
    import onnx
    import torch

    from ..models.torch_model import EfficientNet, fold_batchnorm

    if isinstance(model, EfficientNet):
        model = fold_batchnorm(model)
    x = torch.zeros(1, 3, resolution, resolution)
    with atomic_path(out) as tmp, quiet():
        prog = torch.onnx.export(model.eval(), (x,), dynamo=True, opset_version=OPSET,
                                 input_names=["input"], output_names=["logits"], verbose=False)
        prog.save(str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ArtifactError(f"{out}: onnx.checker rejected the export: {str(e).splitlines()[0]}") from None
    return {"ops": onnx_op_counts(out), "opset": OPSET}


def onnx_op_counts(path: str | Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in m.graph.node).items()))
