"""Recipes: YAML data files that describe one model variant, and the scaling rules that turn them
into a concrete architecture.

Nothing here imports torch: the resolved architecture is plain data (typed dataclasses), consumed
by the PyTorch builder, the NHWC Keras twin and the CLI alike.

Stage strings follow timm's grammar: ``ir_r2_k3_s2_e6_c24_se0.25`` is an inverted-residual block
type, repeated 2 times, kernel 3, stride 2 on the first repeat, expansion 6, 24 output channels,
squeeze-excite with 0.25 of the block's input channels.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import types
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

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
    if exp <= 0:
        raise ValueError(f"expansion must be > 0 in {text!r}")
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
    """``channels * multiplier`` made divisible by ``divisor`` (at width 1.0 too, as timm's
    ``round_channels``: 20 channels become 24)."""
    if not multiplier:
        return channels
    return make_divisible(channels * multiplier, divisor)


def scale_depth(repeats: int, multiplier: float, rounding: str) -> int:
    if rounding == "round":
        return max(1, round(repeats * multiplier))
    return int(math.ceil(repeats * multiplier))


# ----------------------------------------------------------------------------------------------
# Recipe data. The dataclasses are the schema: each field's type and default, and in its metadata
# where it sits in the YAML file (``yaml``, a dotted path) and what it must satisfy (``choices``,
# ``check``), drive loading, validation and writing alike. A field without a default is required.
# ----------------------------------------------------------------------------------------------
def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _within(lo: float, hi: float, hi_open: bool = False, lo_open: bool = False):
    def check(v: float) -> str | None:
        ok = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be within {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return check


def _at_least(lo: int):
    return lambda v: None if v >= lo else f"must be at least {lo}"


SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")


def check_slug(name: Any) -> str | None:
    """Why ``name`` cannot name a model (it becomes a folder and file names), or None."""
    if not isinstance(name, str) or not SLUG.fullmatch(name) or ".." in name:
        return (f"{name!r} is not a model name: lowercase letters, digits and . _ - "
                "(starting with a letter or digit, no '..')")
    return None


def _three_numbers(v: list[float]) -> str | None:
    return None if len(v) == 3 else "expected 3 numbers (pixel units, 0..255)"


def _spec(yaml_path: str | None = "", *, default: Any = MISSING, choices: tuple[str, ...] | None = None,
          check: Any = None, omit_none: bool = False) -> Any:
    """A recipe field: ``yaml_path`` (dotted; "" = the field's name; None = not in the file),
    ``choices`` or ``check`` (value -> reason or None), ``omit_none`` (not written when None)."""
    meta = {"yaml": yaml_path, "choices": choices, "check": check, "omit_none": omit_none}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class Preprocess:
    mean: list[float] = _spec(check=_three_numbers)  # pixel units (0..255)
    std: list[float] = _spec(check=lambda v: _three_numbers(v) or (None if min(v) > 0 else "must be > 0"))
    crop_fraction: float = _spec(check=_within(0, 1, lo_open=True))
    interpolation: str = _spec(choices=INTERPOLATIONS)


@dataclass(kw_only=True)
class Recipe:
    name: str = _spec(check=check_slug)
    family: str = _spec()
    description: str = _spec(default="")
    stages: list[StageSpec] = _spec("arch.stages")
    width: float = _spec("arch.width", check=_positive)
    depth: float = _spec("arch.depth", check=_positive)
    resolution: int = _spec("arch.resolution", check=_within(32, 1024))
    resolution_multiplier: float | None = _spec("arch.resolution_multiplier", default=None, omit_none=True)
    depth_rounding: str = _spec("arch.depth_rounding", choices=DEPTH_ROUNDING)
    fix_first_last: bool = _spec("arch.fix_first_last", default=False)
    channel_divisor: int = _spec("arch.channel_divisor", default=8, check=_positive)
    stem_channels: int = _spec("arch.stem.channels", check=_positive)
    stem_scaled: bool = _spec("arch.stem.scaled")
    head_channels: int = _spec("arch.head.channels", check=_positive)
    head_rule: str = _spec("arch.head.rule", choices=HEAD_RULES)
    activation: str = _spec("arch.activation", choices=ACTIVATIONS)
    bn_eps: float = _spec("arch.bn_eps", check=_positive)
    padding: str = _spec("arch.padding", choices=PADDINGS)
    dropout: float = _spec("arch.dropout", check=_within(0, 1, hi_open=True))
    num_classes: int = _spec("arch.num_classes", default=1000, check=_positive)
    preprocess: Preprocess = _spec()
    max_drop: float = _spec("quantization.max_drop", default=1.0, check=_within(0, 100))
    published: dict[str, Any] = _spec(default={})
    provenance: dict[str, Any] = _spec(default={})
    path: str | None = _spec(None, default=None)  # where it was loaded from; not part of the recipe

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
        return replace(self, num_classes=num_classes)


class RecipeError(UserError):
    pass


@functools.cache
def _yaml_fields(cls: type) -> list[tuple[Field, str, Any]]:
    """(field, dotted YAML path, type) of every field of ``cls`` stored in the file."""
    hints = get_type_hints(cls, globals())
    return [(f, f.metadata["yaml"] or f.name, hints[f.name]) for f in fields(cls) if f.metadata["yaml"] is not None]


def _key_tree(cls: type) -> dict[str, Any]:
    """The nested mapping of YAML keys ``cls`` knows, in file order (leaves: None)."""
    tree: dict[str, Any] = {}
    for _, path, _ in _yaml_fields(cls):
        node = tree
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = None
    return tree


def _check_keys(data: Any, tree: dict[str, Any], where: str, prefix: str) -> None:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: {prefix.rstrip('.') or 'top level'}: expected a mapping")
    for key, val in data.items():
        if key not in tree:
            raise RecipeError(f"{where}: {prefix}{key}: unknown key (known: {', '.join(tree)})")
        if tree[key] is not None:
            _check_keys(val, tree[key], where, f"{prefix}{key}.")


_TYPE_NAMES = {str: "str", int: "int", float: "int/float", bool: "bool", list: "list", dict: "dict"}


def _convert(value: Any, typ: Any, where: str, path: str) -> Any:
    """``value`` as ``typ`` (a field's annotation), or a RecipeError naming the field."""
    if is_dataclass(typ):
        return _load(typ, value, where, f"{path}.")
    origin, args = get_origin(typ), get_args(typ)
    if origin is types.UnionType:  # X | None
        return None if value is None else _convert(value, next(a for a in args if a is not type(None)), where, path)
    base = origin or typ
    if base in (int, float):  # a bool is an int to Python, not to a recipe
        ok = isinstance(value, int if base is int else (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base)
    if not ok:
        raise RecipeError(f"{where}: {path}: expected {_TYPE_NAMES[base]}, got {type(value).__name__} {value!r}")
    if base is float:
        if not math.isfinite(value):
            raise RecipeError(f"{where}: {path}: must be a finite number, not {value!r}")
        return float(value)
    if base is list:
        item = args[0]
        out = []
        for i, v in enumerate(value):
            if item is StageSpec:
                try:
                    out.append(parse_stage(v))
                except ValueError as e:
                    raise RecipeError(f"{where}: {path}[{i}]: {e}") from None
            elif item is float and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
            else:
                raise RecipeError(f"{where}: {path}[{i}]: expected {_TYPE_NAMES[item]}, got {v!r}")
        if not out:
            raise RecipeError(f"{where}: {path}: empty")
        return out
    return value


def _load(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from its YAML mapping, every field validated."""
    _check_keys(data, _key_tree(cls), where, prefix)
    kwargs: dict[str, Any] = {}
    for f, path, typ in _yaml_fields(cls):
        node: Any = data
        for key in path.split("."):
            node = node.get(key, MISSING) if isinstance(node, dict) else MISSING
        full = prefix + path
        if node is MISSING:
            if f.default is MISSING and f.default_factory is MISSING:
                raise RecipeError(f"{where}: {full}: missing")
            continue
        value = _convert(node, typ, where, full)
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise RecipeError(f"{where}: {full}: {value!r} is not one of {', '.join(meta['choices'])}")
        if meta.get("check") and value is not None and (why := meta["check"](value)):
            raise RecipeError(f"{where}: {full}: {why}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _dump(obj: Any) -> dict[str, Any]:
    """The YAML mapping of a recipe dataclass (the inverse of :func:`_load`)."""
    out: dict[str, Any] = {}
    for f, path, _ in _yaml_fields(type(obj)):
        value = getattr(obj, f.name)
        if value is None and f.metadata.get("omit_none"):
            continue
        if is_dataclass(value):
            value = _dump(value)
        elif isinstance(value, list):
            value = [v.to_string() if isinstance(v, StageSpec) else v for v in value]
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def recipe_from_dict(data: Any, where: str = "<recipe>") -> Recipe:
    return _load(Recipe, data, where)


def load_recipe_file(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not a UTF-8 text file (byte {e.start}): is it a recipe?") from None
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

    return yaml.safe_dump(_dump(recipe), sort_keys=False, width=100)


# ----------------------------------------------------------------------------------------------
# Finding recipes
# ----------------------------------------------------------------------------------------------
def recipes_dir() -> Path:
    """$EDGECONV_RECIPES, or the recipes shipped with edgeconv (see :mod:`edgeconv.resources`)."""
    env = os.environ.get("EDGECONV_RECIPES")
    if env:
        return Path(env)
    from .resources import bundled_dir

    return bundled_dir("recipes")


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
