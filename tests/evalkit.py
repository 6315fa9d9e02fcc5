"""Set-ups shared by the accuracy tests (test_eval, test_check, test_digits); not a test module.

Builds are expensive, and a session fixture imported into several test modules is instantiated
once per module, so the builds themselves are cached here, per process, under pytest's base temp
folder. Session set-ups never write to the results database (the per-test $EDGECONV_DB of
conftest.py does not exist yet when they run); tests do, through that isolated database.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "build" / "fixtures"
_cache: dict[str, object] = {}


@dataclass
class Digits:
    weights: Path
    test: Path
    calib: Path
    info: dict


def digits() -> Digits:
    """The trained digits model and its held-out/calibration folders (``make fixtures``; trained
    here, about a minute, when missing or stale)."""
    if "digits" not in _cache:
        sys.path.insert(0, str(REPO / "tools"))
        import train_digits

        info = train_digits.ensure(FIXTURES, log=lambda *a: None)
        _cache["digits"] = Digits(FIXTURES / train_digits.CHECKPOINT, FIXTURES / "digits" / "test",
                                  FIXTURES / "digits" / "calib", info)
    return _cache["digits"]  # type: ignore[return-value]


def once(key: str, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def digits_build(base: Path) -> Path:
    """OUT folder with every artifact of the digits tinynet-e, calibrated on its calib split."""

    def make() -> Path:
        from edgeconv.build import build

        d, out = digits(), base / "digits-build"
        build("tinynet-e", weights=str(d.weights), out=out, calib=str(d.calib))
        return out

    return once("digits-build", make)


OUTLIER_GAIN = 100.0


def strongest_channel(sd: dict[str, torch.Tensor]) -> int:
    """The output channel of blocks.0.0 with the largest magnitude on the calibration images.

    The outlier must sit on a channel the network uses: a weak channel made 100x larger only
    widens the tensor's range a little, and the histogram calibration then clips it instead
    (channel 3 of the digits model: 2.3 of the tensor's 4.8, a 0.6 pt int8 drop), while the
    strongest one breaks both backends' per-tensor int8 far past the gate. Which channel is the
    strongest depends on the training run (other float kernels on another CPU): it is measured."""
    import numpy as np

    from edgeconv.data import load_image
    from edgeconv.models.torch_model import build_model
    from edgeconv.recipe import load_recipe

    recipe = load_recipe("tinynet-e")
    model = build_model(recipe)
    model.classifier = torch.nn.Linear(model.classifier.in_features, sd["classifier.weight"].shape[0])
    model.load_state_dict(sd)
    model.eval()
    images = sorted(digits().calib.rglob("*.png"))
    x = torch.from_numpy(np.stack([load_image(p, recipe.resolution, recipe.preprocess) for p in images]))
    seen: list[torch.Tensor] = []
    hook = model.blocks[0][0].register_forward_hook(lambda _m, _i, out: seen.append(out.abs().amax(dim=(0, 2, 3))))
    with torch.no_grad():
        model(x)
    hook.remove()
    return int(seen[0].argmax())


def outlier_weights(base: Path) -> Path:
    """The digits checkpoint with one outlier channel: blocks.0.0's strongest output channel scaled
    up 100x (its BN) and blocks.1.0's 1x1 expansion scaled down 100x on that input channel. The
    function is the same in float (neither block has a skip connection), but one channel now sets
    the int8 range of a tensor for all of them — the classic way per-tensor int8 breaks."""

    def make() -> Path:
        sd = torch.load(str(digits().weights), weights_only=True)
        c, k = strongest_channel(sd), OUTLIER_GAIN
        sd["blocks.0.0.bn2.weight"][c] *= k
        sd["blocks.0.0.bn2.bias"][c] *= k
        sd["blocks.1.0.conv_pw.weight"][:, c] /= k
        path = base / "digits-outlier.pth"
        torch.save(sd, str(path))
        return path

    return once("outlier-weights", make)


INT8_ONLY = ["--formats", "tflite,openvino", "--precisions", "int8"]


def outlier_build(base: Path) -> Path:
    def make() -> Path:
        from edgeconv.build import build

        out = base / "outlier-build"
        build("tinynet-e", weights=str(outlier_weights(base)), out=out, calib=str(digits().calib),
              formats="tflite,openvino", precisions="int8")
        return out

    return once("outlier-build", make)


def copy_build(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def invoke(command, args: list[str]):
    """Run an edgeconv Click command in-process; stdout and stderr separately."""
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def stdout_json(result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)
