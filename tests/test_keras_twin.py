"""The NHWC Keras twin and its TFLite conversions against the PyTorch model, on real images.

Tolerances are relative to the PyTorch logit range: max |twin - torch| <= 1e-3 * (max - min).
tinynet-e runs with random weights, BN statistics measured on real images and random BN affine
terms (a fresh BN is the identity, which would let a wrong fold pass, and its random logits would
be nothing but the classifier bias); efficientnet-lite0 with its real ImageNet weights.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeconv.data import find_images, load_image
from edgeconv.export.tflite import convert_tflite, float_islands, tflite_op_counts
from edgeconv.models.weights import load_model
from edgeconv.recipe import load_recipe, resolve

SAMPLE = Path(os.environ.get("EDGECONV_SAMPLE", "/work/shared/data/imagenet-sample"))
TOL = 1e-3
N_EVAL, N_CALIB = 50, 32

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"no image sample at {SAMPLE}")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
class _LazyTwin:
    """``edgeconv.models.keras_model``, imported on first use: Keras/TF cost seconds, and other
    test modules should not pay for them at collection."""

    def __getattr__(self, name):
        from edgeconv.models import keras_model as module

        return getattr(module, name)


keras_model = _LazyTwin()


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / (ref.max() - ref.min()))


def top1_agreement(out: np.ndarray, ref: np.ndarray) -> float:
    return float((out.argmax(1) == ref.argmax(1)).mean())


def randomise_bn(model: torch.nn.Module, x_nchw: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """Give a randomly initialised model BN statistics measured on ``x_nchw`` (so activations keep
    their scale and the logits depend on the image, not just on the classifier bias), random BN
    affine terms and non-zero conv/linear biases: every folded term then matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif getattr(m, "bias", None) is not None and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        model.train()
        model(torch.from_numpy(x_nchw))
    return model.eval()


def torch_logits(model: torch.nn.Module, x_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nchw)).numpy()


def keras_logits(torch_model: torch.nn.Module, x_nchw: np.ndarray, **kw) -> np.ndarray:
    km = keras_model.keras_from_torch(torch_model, batch_size=None, **kw)
    return np.asarray(km(keras_model.nchw_to_nhwc(x_nchw), training=False))


def run_tflite(path: str | Path, x_nchw: np.ndarray) -> np.ndarray:
    """Logits from a .tflite file, one image at a time; int8 I/O is (de)quantized here."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, *x_nchw.shape[2:], 3]
    results = []
    for x in keras_model.nchw_to_nhwc(x_nchw):
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        y = it.get_tensor(out["index"])[0]
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(y)
    return np.stack(results)


class Case:
    """A PyTorch model, held-out real images and their reference logits, plus its conversions."""

    def __init__(self, name: str, weights: str | None, files: list[Path], calib_files: list[Path],
                 tmpdir: Path):
        self.recipe = load_recipe(name)
        model, _ = load_model(self.recipe, weights)
        self.x = self.images(files)
        self.calib = self.images(calib_files)
        self.model = model if weights else randomise_bn(model, self.calib)
        self.ref = torch_logits(self.model, self.x)
        self.tmpdir = tmpdir
        self._keras = None
        self._converted: dict[tuple[str, bool], dict] = {}

    def images(self, files: list[Path]) -> np.ndarray:
        r = self.recipe
        return np.stack([load_image(f, r.resolution, r.preprocess) for f in files])

    def convert(self, precision: str, int8_io: bool = False) -> dict:
        key = (precision, int8_io)
        if key not in self._converted:
            if self._keras is None:
                self._keras = keras_model.keras_from_torch(self.model)
            calib = keras_model.nchw_to_nhwc(self.calib) if precision == "int8" else None
            # "out" does not exist yet: convert_tflite makes it
            out = self.tmpdir / "out" / f"{precision}{'-io8' if int8_io else ''}.tflite"
            self._converted[key] = convert_tflite(self._keras, out, precision, calib, int8_io=int8_io)
        return self._converted[key]


@pytest.fixture(scope="module")
def sample_files() -> tuple[list[Path], list[Path]]:
    files = find_images(SAMPLE)
    if len(files) < 2 * (N_EVAL + N_CALIB):
        pytest.skip(f"{SAMPLE}: need at least {2 * (N_EVAL + N_CALIB)} images")
    step = len(files) // N_EVAL
    evaluation = files[::step][:N_EVAL]  # spread over the classes
    calibration = files[step // 2::step][:N_CALIB]  # disjoint from the evaluation images
    return evaluation, calibration


@pytest.fixture(scope="module")
def tinynet(sample_files, tmp_path_factory) -> Case:
    ev, cal = sample_files
    return Case("tinynet-e", None, ev[:8], cal[:8], tmp_path_factory.mktemp("tinynet"))


@pytest.fixture(scope="module")
def lite0(sample_files, tmp_path_factory) -> Case:
    ev, cal = sample_files
    return Case("efficientnet-lite0", "pypi:efficientnet-lite0", ev, cal, tmp_path_factory.mktemp("lite0"))


# ----------------------------------------------------------------------------------------------
# Keras twin vs PyTorch
# ----------------------------------------------------------------------------------------------
def test_keras_twin_matches_torch_tinynet_e(tinynet):
    out = keras_logits(tinynet.model, tinynet.x)
    assert out.shape == tinynet.ref.shape == (8, 1000)
    assert rel_err(out, tinynet.ref) <= TOL


def test_keras_twin_matches_torch_lite0(lite0):
    out = keras_logits(lite0.model, lite0.x[:8])
    assert rel_err(out, lite0.ref[:8]) <= TOL
    assert top1_agreement(out, lite0.ref[:8]) == 1.0


def test_keras_twin_structure_and_names(tinynet):
    km = keras_model.keras_from_torch(tinynet.model)
    r = tinynet.recipe.resolution
    assert tuple(km.inputs[0].shape) == (1, r, r, 3)
    assert tuple(km.outputs[0].shape) == (1, 1000)
    names = {layer.name for layer in km.layers}
    assert {"conv_stem", "blocks_0_0_conv_dw", "blocks_3_1_conv_dw", "blocks_3_1_se_conv_reduce",
            "conv_head", "classifier"} <= names
    assert not any("batch_norm" in n or "normalization" in n for n in names)  # BN folded


def test_stride2_padding_on_odd_feature_maps(tinynet):
    """tinynet-e at 106: stride-2 convs see 106, 53, 27, 14 and 7. TF SAME equals PyTorch's
    symmetric padding only on the odd sizes, so only the even ones get an explicit pad."""
    km = keras_model.keras_from_torch(tinynet.model)
    pads = sorted(layer.name for layer in km.layers if layer.name.endswith("_pad"))
    assert pads == ["blocks_3_0_conv_dw_pad", "conv_stem_pad"]


def test_padding_control_same_padding_would_not_match(tinynet):
    """The parity check is sensitive to padding: TF SAME on this symmetric model must fail it."""
    arch = replace(resolve(tinynet.recipe), padding="same")
    km = keras_model.copy_torch_weights(tinynet.model, keras_model.build_keras_model(arch, batch_size=None))
    out = np.asarray(km(keras_model.nchw_to_nhwc(tinynet.x[:2])))
    assert rel_err(out, tinynet.ref[:2]) > 10 * TOL


@pytest.mark.parametrize("resolution", [97, 110, 131])
def test_keras_twin_other_resolutions(resolution):
    """Odd inputs (97: 49, 25, 13, 7, 4) and mixed ones (110: 55, 28, 14, 7, 4; 131: 66, 33, ...)."""
    recipe = replace(load_recipe("tinynet-e"), resolution=resolution)
    model, _ = load_model(recipe)
    x = np.random.default_rng(resolution).standard_normal((6, 3, resolution, resolution)).astype(np.float32)
    randomise_bn(model, x[2:], seed=resolution)
    assert rel_err(keras_logits(model, x[:2]), torch_logits(model, x[:2])) <= TOL


# ----------------------------------------------------------------------------------------------
# TFLite
# ----------------------------------------------------------------------------------------------
def test_tflite_fp32_tinynet_e(tinynet):
    info = tinynet.convert("fp32")
    ops = tflite_op_counts(info["path"])
    assert ops == info["ops"]
    assert ops.get("TRANSPOSE", 0) == 0
    assert ops["PAD"] == 2 and "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    assert ops["LOGISTIC"] == ops["MUL"]  # swish = LOGISTIC + MUL, SE gate = LOGISTIC + MUL
    assert info["input_dtype"] == "float32" and info["input_shape"] == [1, 106, 106, 3]
    assert rel_err(run_tflite(info["path"], tinynet.x), tinynet.ref) <= TOL


def test_tflite_fp32_lite0(lite0):
    info = lite0.convert("fp32")
    ops = tflite_op_counts(info["path"])
    # BN folded, ReLU6 fused: nothing but convs, adds, one mean and the classifier
    assert set(ops) == {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"}
    assert ops["MEAN"] == 1
    out = run_tflite(info["path"], lite0.x)
    assert rel_err(out, lite0.ref) <= TOL
    assert top1_agreement(out, lite0.ref) == 1.0


def test_tflite_int8_lite0(lite0):
    info = lite0.convert("int8")
    assert float_islands(info["path"]) == []
    ops = tflite_op_counts(info["path"])
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1  # float I/O, only at the boundary
    assert info["input_dtype"] == info["output_dtype"] == "float32"
    agree = top1_agreement(run_tflite(info["path"], lite0.x), lite0.ref)
    assert agree >= 0.9, f"int8 top-1 agreement with PyTorch {agree:.2f}"


def test_tflite_int8_io_lite0(lite0):
    info = lite0.convert("int8", int8_io=True)
    assert info["input_dtype"] == info["output_dtype"] == "int8"
    assert float_islands(info["path"]) == []
    ops = tflite_op_counts(info["path"])
    assert "DEQUANTIZE" not in ops
    agree = top1_agreement(run_tflite(info["path"], lite0.x), lite0.ref)
    assert agree >= 0.9, f"int8-I/O top-1 agreement with PyTorch {agree:.2f}"


@pytest.mark.parametrize("precision, min_agree", [("fp16", 0.96), ("dynamic", 0.9)])
def test_tflite_fp16_and_dynamic_lite0(lite0, precision, min_agree):
    info = lite0.convert(precision)
    assert info["input_dtype"] == "float32"
    assert info["bytes"] < 0.6 * lite0.convert("fp32")["bytes"]
    agree = top1_agreement(run_tflite(info["path"], lite0.x), lite0.ref)
    assert agree >= min_agree, f"{precision} top-1 agreement with PyTorch {agree:.2f}"


def test_float_islands_flags_float_graphs(lite0, tinynet):
    """The island check must be able to fail: a float graph is all islands, and fp16's weight
    DEQUANTIZEs sit inside the graph."""
    fp32 = float_islands(lite0.convert("fp32")["path"])
    assert len(fp32) == sum(tflite_op_counts(lite0.convert("fp32")["path"]).values())
    fp16 = float_islands(lite0.convert("fp16")["path"])
    assert any("DEQUANTIZE of a constant" in s for s in fp16)


def test_tflite_int8_tinynet_e_is_integer_only(tinynet):
    """Swish and squeeze-excite (LOGISTIC, MUL, MEAN, PAD) stay integer too."""
    info = tinynet.convert("int8")
    assert float_islands(info["path"]) == []
    assert tflite_op_counts(info["path"]).get("TRANSPOSE", 0) == 0


# ----------------------------------------------------------------------------------------------
# Converter plumbing
# ----------------------------------------------------------------------------------------------
def test_convert_writes_atomically(tinynet):
    info = tinynet.convert("fp32")
    out = Path(info["path"])
    assert out.stat().st_size == info["bytes"] and info["seconds"] > 0
    assert not [p.name for p in out.parent.iterdir() if not p.name.endswith(".tflite")]  # no temp files


def test_convert_rejects_bad_arguments(tinynet, tmp_path):
    km = keras_model.keras_from_torch(tinynet.model)
    with pytest.raises(ValueError, match="unknown precision"):
        convert_tflite(km, tmp_path / "m.tflite", "int4")
    with pytest.raises(ValueError, match="calibration"):
        convert_tflite(km, tmp_path / "m.tflite", "int8")
    with pytest.raises(ValueError, match="NCHW"):
        convert_tflite(km, tmp_path / "m.tflite", "int8", tinynet.calib)
    with pytest.raises(ValueError, match="int8_io"):
        convert_tflite(km, tmp_path / "m.tflite", "fp16", int8_io=True)
    assert not list(tmp_path.iterdir())


def test_tflite_module_imports_without_tensorflow(tinynet):
    path = tinynet.convert("fp32")["path"]
    code = ("import sys; from edgeconv.export.tflite import tflite_op_counts; "
            f"ops = tflite_op_counts({path!r}); assert ops['CONV_2D'] > 0; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
