"""The TinyNet paper's tiny formula: a recipe for a FLOPs budget.

Han et al. (NeurIPS 2020) find that for tiny networks resolution r and depth d matter more than
width w. Given a budget c (as a fraction of EfficientNet-B0's FLOPs) the paper picks r and d from
curves fitted on good small models, then sets w = sqrt(c / (r^2 d)). We use TinyNet-A..E themselves
as the fitted points: r and d are interpolated linearly in log(c) between them (and extrapolated
beyond). Because the stem and head do not shrink with w, the formula overshoots small budgets; by
default w is then fitted by bisection so the measured MACs land on the budget (``fit=False`` keeps the
formula's w). Either way the MACs reported are measured from the built model.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .errors import UserError
from .recipe import Recipe, check_slug, load_recipe

ANCHORS = ("tinynet-a", "tinynet-b", "tinynet-c", "tinynet-d", "tinynet-e")


def parse_flops(text: str, floor: int = 5_000_000) -> int:
    """``50M``, ``0.1G``, ``24000000`` -> MACs; below ``floor`` is refused (the tiny formula's stem and
    head alone cost about 5M; callers with their own lower bound pass 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGbB]?)\s*", str(text))
    if not m:
        raise UserError(f"--flops {text!r}: expected a number with an optional K/M/G suffix, e.g. 50M")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value < floor:
        raise UserError(f"--flops {text}: below {floor / 1e6:g}M MACs the stem and head alone exceed the budget")
    return value


@dataclass
class TinyResult:
    recipe: Recipe
    budget: int
    c: float
    r: float
    d: float
    w_formula: float
    w: float
    macs: int
    params: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.recipe.name, "budget_macs": self.budget, "c": self.c, "r": self.r,
                "d": self.d, "w_formula": self.w_formula, "w": self.w, "resolution": self.recipe.resolution,
                "macs": self.macs, "params": self.params, "warnings": self.warnings}


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation over increasing xs, linear extrapolation past the ends."""
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        i = max(j for j in range(len(xs) - 1) if xs[j] <= x)
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])


def fit_width(make: Callable[[float], Recipe], budget: int, lo: float, hi: float,
              steps: int = 30) -> tuple[float, float]:
    """Bisect the width of ``make(w)`` on ``budget``: (lo, hi) with MACs(lo) <= budget < MACs(hi)
    (assuming MACs(lo) <= budget on entry). Shared with the inverse giant formula."""
    from .zoo import measure

    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if measure(make(mid))[1] <= budget else (lo, mid)
    return lo, hi


def tiny_recipe(budget: int, name: str | None = None, fit: bool = True) -> TinyResult:
    from .zoo import measure

    if name is not None and (why := check_slug(name)):
        raise UserError(f"--name: {why}")
    b0_macs = measure(load_recipe("efficientnet-b0"))[1]
    if budget > b0_macs:
        raise UserError(f"--flops {budget / 1e6:g}M: above EfficientNet-B0's {b0_macs / 1e6:.1f}M MACs the tiny "
                        "formula does not apply (it shrinks B0); use EfficientNet-B1..B7 (the giant formula)")
    anchors = []
    for n in ANCHORS:
        rec = load_recipe(n)
        anchors.append((math.log(measure(rec)[1] / b0_macs), rec.resolution_multiplier, rec.depth))
    anchors.sort()
    c = budget / b0_macs
    xs = [a[0] for a in anchors]
    r = _interp(math.log(c), xs, [a[1] for a in anchors])
    d = _interp(math.log(c), xs, [a[2] for a in anchors])
    r, d = min(max(r, 0.2), 1.0), min(max(d, 0.2), 1.5)
    w_formula = math.sqrt(c / (r * r * d))
    base = load_recipe("tinynet-e")
    name = name or f"tinynet-{budget / 1e6:g}m".replace(".", "p")

    def make(w: float) -> Recipe:
        return replace(base, name=name, width=round(w, 4), depth=round(d, 4), resolution=int(224 * r),
                       resolution_multiplier=round(r, 4),
                       description=f"TinyNet-style model for a {budget / 1e6:g}M MACs budget",
                       published={}, provenance={
                           "generator": "edgeconv recipe tiny (TinyNet paper tiny formula)",
                           "budget_macs": budget,
                           "r_d": "interpolated in log(FLOPs) between TinyNet-A..E",
                           "w_formula": f"sqrt(c / (r^2 d)) = {w_formula:.4f} with c = {c:.4f}",
                           "w": "fitted by bisection to the budget" if fit else "formula"})

    w = w_formula
    if fit:
        lo, hi = 0.05, max(2.0, w_formula)
        if measure(make(lo))[1] > budget:
            raise UserError(f"--flops {budget / 1e6:g}M: even the narrowest model at r={r:.3f}, "
                            f"d={d:.3f} exceeds the budget")
        w, _ = fit_width(make, budget, lo, hi)
    recipe = make(w)
    params, macs = measure(recipe)
    warnings = []
    if c < math.exp(xs[0]):
        warnings.append(f"--flops {budget / 1e6:g}M is below TinyNet-E's {math.exp(xs[0]) * b0_macs / 1e6:.1f}M, the "
                        "smallest model the formula was fitted on: r and d are extrapolated")
    return TinyResult(recipe, budget, c, r, d, w_formula, round(w, 4), macs, params, warnings)
