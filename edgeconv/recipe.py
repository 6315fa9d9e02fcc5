"""Recipes: YAML data files that describe one model variant, and the scaling rules that turn them
into a concrete architecture.

Nothing here imports torch: the resolved architecture is plain data (typed dataclasses), consumed
by the PyTorch builder, the NHWC Keras twin and the CLI alike.

Stage strings follow timm's grammar: ``ir_r2_k3_s2_e6_c24_se0.25`` is an inverted-residual block
type, repeated 2 times, kernel 3, stride 2 on the first repeat, expansion 6, 24 output channels,
squeeze-excite with 0.25 of the block's input channels.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

BLOCK_TYPES = {"ds": "depthwise-separable", "ir": "inverted-residual"}
ACTIVATIONS = ("swish", "relu", "relu6")
PADDINGS = ("symmetric", "same")
DEPTH_ROUNDING = ("round", "ceil")
HEAD_RULES = ("fixed", "scaled", "max_scaled")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


# ----------------------------------------------------------------------------------------------
# Stage strings
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """One line of the base architecture table, before scaling."""

    block: str  # "ds" or "ir"
    repeats: int
    kernel: int
    stride: int
    expansion: float
    channels: int
    se_ratio: float = 0.0
    skip: bool = True

    def to_string(self) -> str:
        e = int(self.expansion) if float(self.expansion).is_integer() else self.expansion
        s = f"{self.block}_r{self.repeats}_k{self.kernel}_s{self.stride}_e{e}_c{self.channels}"
        if self.se_ratio:
            s += f"_se{self.se_ratio:g}"
        if not self.skip:
            s += "_noskip"
        return s


_TOKEN = re.compile(r"^(r|k|s|e|c|se)(\d+(?:\.\d+)?)$")


def parse_stage(text: str) -> StageSpec:
    """Parse a timm-style stage string; raise ValueError with a short reason."""
    if not isinstance(text, str) or not text:
        raise ValueError("stage must be a non-empty string like 'ir_r2_k3_s2_e6_c24_se0.25'")
    parts = text.split("_")
    block = parts[0]
    if block not in BLOCK_TYPES:
        raise ValueError(f"unknown block type {block!r} in {text!r} (known: {', '.join(BLOCK_TYPES)})")
    vals: dict[str, float] = {}
    skip = True
    for tok in parts[1:]:
        if tok == "noskip":
            skip = False
            continue
        m = _TOKEN.match(tok)
        if not m:
            raise ValueError(f"bad token {tok!r} in {text!r}")
        key, num = m.group(1), m.group(2)
        if key in vals:
            raise ValueError(f"token {key!r} repeated in {text!r}")
        vals[key] = float(num)
    for key in ("r", "k", "s", "c"):
        if key not in vals:
            raise ValueError(f"missing '{key}' in {text!r}")
    for key in ("r", "k", "s", "c"):
        if not float(vals[key]).is_integer() or vals[key] < 1:
            raise ValueError(f"'{key}' must be a positive integer in {text!r}")
    if int(vals["k"]) % 2 == 0:
        raise ValueError(f"kernel must be odd in {text!r}")
    exp = vals.get("e", 1.0)
    if block == "ds" and exp != 1.0:
        raise ValueError(f"depthwise-separable blocks have no expansion (e1) in {text!r}")
    se = vals.get("se", 0.0)
    if not 0.0 <= se <= 1.0:
        raise ValueError(f"se ratio must be within 0..1 in {text!r}")
    return StageSpec(block, int(vals["r"]), int(vals["k"]), int(vals["s"]), exp, int(vals["c"]), se, skip)


# ----------------------------------------------------------------------------------------------
# Scaling rules (the same arithmetic as timm's EfficientNet builder and the TinyNet code)
# ----------------------------------------------------------------------------------------------
def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round to a multiple of ``divisor``; bump by one divisor if that lost more than 10 %."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    if multiplier == 1.0:
        return channels
    return make_divisible(channels * multiplier, divisor)


def scale_depth(repeats: int, multiplier: float, rounding: str) -> int:
    if rounding == "round":
        return max(1, round(repeats * multiplier))
    return int(math.ceil(repeats * multiplier))


# ----------------------------------------------------------------------------------------------
# Recipe data
# ----------------------------------------------------------------------------------------------
@dataclass
class Preprocess:
    mean: list[float]  # pixel units (0..255)
    std: list[float]  # pixel units (0..255)
    crop_fraction: float = 0.875
    interpolation: str = "bicubic"


@dataclass
class Recipe:
    name: str
    family: str
    description: str
    stages: list[StageSpec]
    width: float
    depth: float
    resolution: int
    depth_rounding: str
    fix_first_last: bool
    channel_divisor: int
    stem_channels: int
    stem_scaled: bool
    head_channels: int
    head_rule: str
    activation: str
    bn_eps: float
    padding: str
    dropout: float
    num_classes: int
    preprocess: Preprocess
    resolution_multiplier: float | None = None
    max_drop: float = 1.0
    published: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.resolution, self.resolution)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [s.to_string() for s in self.stages]
        d.pop("path")
        return d

    def digest(self) -> str:
        """Stable hash of everything that shapes the model and its preprocessing."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def with_classes(self, num_classes: int) -> Recipe:
        from dataclasses import replace

        return replace(self, num_classes=num_classes)


# Schema: key -> (type(s), required). Nested mappings have their own schema.
_SCHEMA: dict[str, Any] = {
    "name": (str, True),
    "family": (str, True),
    "description": (str, False),
    "arch": ({
        "stages": (list, True),
        "width": ((int, float), True),
        "depth": ((int, float), True),
        "resolution": (int, True),
        "resolution_multiplier": ((int, float), False),
        "depth_rounding": (str, True),
        "fix_first_last": (bool, False),
        "channel_divisor": (int, False),
        "stem": ({"channels": (int, True), "scaled": (bool, True)}, True),
        "head": ({"channels": (int, True), "rule": (str, True)}, True),
        "activation": (str, True),
        "bn_eps": ((int, float), True),
        "padding": (str, True),
        "dropout": ((int, float), True),
        "num_classes": (int, False),
    }, True),
    "preprocess": ({
        "mean": (list, True),
        "std": (list, True),
        "crop_fraction": ((int, float), True),
        "interpolation": (str, True),
    }, True),
    "quantization": ({"max_drop": ((int, float), False)}, False),
    "published": (dict, False),
    "provenance": (dict, False),
}


class RecipeError(UserError):
    pass


def _check(data: Any, schema: dict[str, Any], where: str, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: {prefix.rstrip('.') or 'top level'}: expected a mapping")
    for key in data:
        if key not in schema:
            raise RecipeError(f"{where}: {prefix}{key}: unknown key (known: {', '.join(schema)})")
    for key, (typ, required) in schema.items():
        if key not in data:
            if required:
                raise RecipeError(f"{where}: {prefix}{key}: missing")
            continue
        val = data[key]
        if isinstance(typ, dict):
            _check(val, typ, where, f"{prefix}{key}.")
            continue
        ok = isinstance(val, typ) and not (isinstance(val, bool) and typ is not bool and bool not in
                                           (typ if isinstance(typ, tuple) else (typ,)))
        if not ok:
            tn = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise RecipeError(f"{where}: {prefix}{key}: expected {tn}, got {type(val).__name__} {val!r}")


def _choice(val: str, choices: tuple[str, ...], where: str, fieldname: str) -> str:
    if val not in choices:
        raise RecipeError(f"{where}: {fieldname}: {val!r} is not one of {', '.join(choices)}")
    return val


def recipe_from_dict(data: Any, where: str = "<recipe>") -> Recipe:
    _check(data, _SCHEMA, where)
    a, p = data["arch"], data["preprocess"]
    stages = []
    for i, s in enumerate(a["stages"]):
        try:
            stages.append(parse_stage(s))
        except ValueError as e:
            raise RecipeError(f"{where}: arch.stages[{i}]: {e}") from None
    if not stages:
        raise RecipeError(f"{where}: arch.stages: empty")
    for key in ("width", "depth", "bn_eps"):
        if a[key] <= 0:
            raise RecipeError(f"{where}: arch.{key}: must be > 0")
    if not 0 <= a["dropout"] < 1:
        raise RecipeError(f"{where}: arch.dropout: must be within [0, 1)")
    if a["resolution"] < 16:
        raise RecipeError(f"{where}: arch.resolution: must be at least 16")
    for key in ("mean", "std"):
        v = p[key]
        if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise RecipeError(f"{where}: preprocess.{key}: expected 3 numbers (pixel units, 0..255)")
    if any(x <= 0 for x in p["std"]):
        raise RecipeError(f"{where}: preprocess.std: must be > 0")
    if not 0 < p["crop_fraction"] <= 1:
        raise RecipeError(f"{where}: preprocess.crop_fraction: must be within (0, 1]")
    return Recipe(
        name=data["name"],
        family=data["family"],
        description=data.get("description", ""),
        stages=stages,
        width=float(a["width"]),
        depth=float(a["depth"]),
        resolution=a["resolution"],
        resolution_multiplier=a.get("resolution_multiplier"),
        depth_rounding=_choice(a["depth_rounding"], DEPTH_ROUNDING, where, "arch.depth_rounding"),
        fix_first_last=a.get("fix_first_last", False),
        channel_divisor=a.get("channel_divisor", 8),
        stem_channels=a["stem"]["channels"],
        stem_scaled=a["stem"]["scaled"],
        head_channels=a["head"]["channels"],
        head_rule=_choice(a["head"]["rule"], HEAD_RULES, where, "arch.head.rule"),
        activation=_choice(a["activation"], ACTIVATIONS, where, "arch.activation"),
        bn_eps=float(a["bn_eps"]),
        padding=_choice(a["padding"], PADDINGS, where, "arch.padding"),
        dropout=float(a["dropout"]),
        num_classes=a.get("num_classes", 1000),
        preprocess=Preprocess(
            mean=[float(x) for x in p["mean"]],
            std=[float(x) for x in p["std"]],
            crop_fraction=float(p["crop_fraction"]),
            interpolation=_choice(p["interpolation"], INTERPOLATIONS, where, "preprocess.interpolation"),
        ),
        max_drop=float(data.get("quantization", {}).get("max_drop", 1.0)),
        published=data.get("published", {}) or {},
        provenance=data.get("provenance", {}) or {},
    )


def load_recipe_file(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" (line {mark.line + 1})" if mark else ""
        raise RecipeError(f"{path}: not valid YAML{loc}: {getattr(e, 'problem', e)}") from None
    r = recipe_from_dict(data, str(path))
    r.path = str(path)
    return r


def recipe_to_yaml(recipe: Recipe) -> str:
    import yaml

    d = {
        "name": recipe.name,
        "family": recipe.family,
        "description": recipe.description,
        "arch": {
            "stages": [s.to_string() for s in recipe.stages],
            "width": recipe.width,
            "depth": recipe.depth,
            "resolution": recipe.resolution,
            **({"resolution_multiplier": recipe.resolution_multiplier}
               if recipe.resolution_multiplier is not None else {}),
            "depth_rounding": recipe.depth_rounding,
            "fix_first_last": recipe.fix_first_last,
            "channel_divisor": recipe.channel_divisor,
            "stem": {"channels": recipe.stem_channels, "scaled": recipe.stem_scaled},
            "head": {"channels": recipe.head_channels, "rule": recipe.head_rule},
            "activation": recipe.activation,
            "bn_eps": recipe.bn_eps,
            "padding": recipe.padding,
            "dropout": recipe.dropout,
            "num_classes": recipe.num_classes,
        },
        "preprocess": asdict(recipe.preprocess),
        "quantization": {"max_drop": recipe.max_drop},
        "published": recipe.published,
        "provenance": recipe.provenance,
    }
    return yaml.safe_dump(d, sort_keys=False, width=100)


# ----------------------------------------------------------------------------------------------
# Finding recipes
# ----------------------------------------------------------------------------------------------
def recipes_dir() -> Path:
    env = os.environ.get("EDGECONV_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "recipes"


def recipe_names() -> list[str]:
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _sort_key(name: str) -> tuple:
    # tinynet-a..e, efficientnet-b0..b7, bm1..bm4, lite0..4: natural order within each family
    fam_order = {"tinynet": 0, "efficientnet-b": 1, "efficientnet-bm": 2, "efficientnet-lite": 3}
    m = re.match(r"^(tinynet|efficientnet-bm|efficientnet-b|efficientnet-lite)-?(\w+)$", name)
    if not m:
        return (9, name)
    return (fam_order[m.group(1)], m.group(2))


def sorted_names(names: list[str]) -> list[str]:
    return sorted(names, key=_sort_key)


def unknown_model_message(name: str) -> str:
    import difflib

    names = recipe_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    msg = f"unknown model {name!r}"
    if close:
        msg += f"; did you mean {', '.join(close)}?"
    else:
        msg += "; run 'edgeconv models' to list them"
    return msg


def load_recipe(name_or_path: str) -> Recipe:
    """A zoo name (``tinynet-e``) or a path to a recipe YAML file."""
    p = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        if not p.exists():
            raise RecipeError(f"{name_or_path}: no such recipe file")
        return load_recipe_file(p)
    f = recipes_dir() / f"{name_or_path}.yaml"
    if not f.exists():
        raise UserError(unknown_model_message(name_or_path))
    return load_recipe_file(f)


# ----------------------------------------------------------------------------------------------
# Resolved architecture
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSpec:
    block: str
    in_chs: int
    out_chs: int
    mid_chs: int
    kernel: int
    stride: int
    expansion: float
    se_chs: int  # 0 = no squeeze-excite
    skip: bool


@dataclass(frozen=True)
class StageArch:
    block: str
    repeats: int
    kernel: int
    stride: int
    expansion: float
    out_chs: int
    se_ratio: float
    blocks: tuple[BlockSpec, ...]


@dataclass(frozen=True)
class Architecture:
    stem_chs: int
    stages: tuple[StageArch, ...]
    head_chs: int
    num_classes: int
    activation: str
    bn_eps: float
    padding: str
    dropout: float
    resolution: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(recipe: Recipe) -> Architecture:
    """Apply width/depth multipliers and rounding rules: the concrete network."""
    w, div = recipe.width, recipe.channel_divisor

    def rc(c: int) -> int:
        return round_channels(c, w, div)

    stem = rc(recipe.stem_channels) if recipe.stem_scaled else recipe.stem_channels
    if recipe.head_rule == "fixed":
        head = recipe.head_channels
    elif recipe.head_rule == "scaled":
        head = rc(recipe.head_channels)
    else:
        head = max(recipe.head_channels, rc(recipe.head_channels))

    stages = []
    in_chs = stem
    n = len(recipe.stages)
    for i, st in enumerate(recipe.stages):
        fixed = recipe.fix_first_last and i in (0, n - 1)
        reps = st.repeats if fixed else scale_depth(st.repeats, recipe.depth, recipe.depth_rounding)
        out = rc(st.channels)
        blocks = []
        for b in range(reps):
            stride = st.stride if b == 0 else 1
            if st.block == "ds":
                mid = in_chs
                se = round(in_chs * st.se_ratio) if st.se_ratio else 0
            else:
                mid = make_divisible(in_chs * st.expansion, div)  # as timm's InvertedResidual
                # SE width is a fraction of the block *input* channels (timm: se_from_exp=False)
                se = round(mid * st.se_ratio / st.expansion) if st.se_ratio else 0
            skip = st.skip and stride == 1 and in_chs == out
            blocks.append(BlockSpec(st.block, in_chs, out, mid, st.kernel, stride, st.expansion, se, skip))
            in_chs = out
        stages.append(StageArch(st.block, reps, st.kernel, st.stride, st.expansion, out, st.se_ratio,
                                tuple(blocks)))
    return Architecture(stem, tuple(stages), head, recipe.num_classes, recipe.activation,
                        recipe.bn_eps, recipe.padding, recipe.dropout, recipe.resolution)
