"""The inverse giant formula: EfficientNet-B0 shrunk by compound scaling to a FLOPs budget.

The TinyNet paper (Han et al., NeurIPS 2020) compares TinyNet-B..E with EfficientNet B^-1..B^-4:
B0 scaled *down* by EfficientNet's compound coefficients, depth d = 1.2^phi, width w = 1.1^phi,
resolution r = 1.15^phi with phi < 0, chosen so the model costs C0 / 2^k (C0 = B0's FLOPs). The
paper gives B^-1's multipliers (r 0.86, d 0.8, w 0.89) and B^-4's FLOPs (24M), not the procedure.

This is a reconstruction that reproduces B^-1's published triple: one continuous phi is solved so
that the MACs *measured on the built model* come closest to the budget, with the input rounded to
a multiple of 8 pixels and the TinyNet building rules (depth rounded, not ceiled; a fixed 32-channel
stem; head max(1280, scaled)). Rounding makes MACs a step function of phi, so after a bisection
finds where the budget is crossed, phi is scanned densely (steps of 0.001) around it and every
distinct architecture is measured; the one closest to the budget wins, and phi is reported as the
middle of the phi interval that builds it. When even that one is more than 6 % off (a step of the
resolution straddles the budget), width alone is fitted by bisection at that architecture's r and
d, and the result says so (``corrected``); nothing is adjusted silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .errors import UserError
from .recipe import Architecture, Recipe, check_slug, load_recipe, resolve
from .tiny import fit_width

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # EfficientNet's depth, width and resolution coefficients
BASE_RESOLUTION = 224
RESOLUTION_STEP = 8
PHI_MIN = math.log(32 / BASE_RESOLUTION) / math.log(GAMMA)  # below this the input would be < 32 px
SCAN_STEP = 0.001
SCAN_WINDOW = 0.75  # phi either side of the crossing scanned densely (a factor ~1.7 in MACs)
TOLERANCE = 0.06  # how far from the budget the compound solution may land before width is fitted


def compound(phi: float) -> tuple[float, float, float]:
    """(d, w, r) of the giant formula at ``phi``."""
    return ALPHA ** phi, BETA ** phi, GAMMA ** phi


def input_size(r: float) -> int:
    """224 * r rounded to the nearest multiple of 8 pixels (32 at the least)."""
    return max(32, RESOLUTION_STEP * round(BASE_RESOLUTION * r / RESOLUTION_STEP))


def _interval_text(lo: float, hi: float) -> str:
    if lo == hi:
        return "the only phi of the scan"
    return f"the middle of [{lo:.3f}, {hi:.3f}], the phi interval"


@dataclass
class InverseResult:
    recipe: Recipe
    budget: int
    b0_macs: int
    phi: float
    phi_interval: tuple[float, float]  # every phi in it builds the same model
    d: float
    w_compound: float  # 1.1^phi
    w: float  # the width built: w_compound, or the fitted one when corrected
    r_compound: float  # 1.15^phi, before rounding the input to a multiple of 8
    macs: int
    params: int
    compound_macs: int  # MACs of the pure compound solution (equal to macs unless corrected)
    corrected: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def resolution(self) -> int:
        return self.recipe.resolution

    @property
    def r(self) -> float:
        """The resolution multiplier actually built: input / 224."""
        return self.resolution / BASE_RESOLUTION

    @property
    def off(self) -> float:
        return self.macs / self.budget - 1

    @property
    def compound_off(self) -> float:
        return self.compound_macs / self.budget - 1

    def to_dict(self) -> dict:
        return {"name": self.recipe.name, "budget_macs": self.budget, "b0_macs": self.b0_macs,
                "c": self.budget / self.b0_macs, "phi": self.phi, "phi_interval": list(self.phi_interval),
                "d": round(self.d, 4), "w_compound": round(self.w_compound, 4), "w": round(self.w, 4),
                "r_compound": round(self.r_compound, 4), "r": round(self.r, 4), "resolution": self.resolution,
                "macs": self.macs, "params": self.params, "off": round(self.off, 5),
                "compound_macs": self.compound_macs, "corrected": self.corrected, "warnings": self.warnings}

    def lines(self) -> list[str]:
        out = [f"budget {self.budget / 1e6:.1f}M MACs (c = {self.budget / self.b0_macs:.4f} of "
               f"EfficientNet-B0's {self.b0_macs / 1e6:.1f}M)",
               f"phi = {self.phi:.3f}: {_interval_text(*self.phi_interval)} building the model closest to the budget",
               f"d = 1.2^phi = {self.d:.4f}  w = 1.1^phi = {self.w_compound:.4f}  r = 1.15^phi = "
               f"{self.r_compound:.4f} -> input {self.resolution} (r = {self.r:.4f})"]
        if self.corrected:
            out.append(f"compound solution: {self.compound_macs / 1e6:.2f}M MACs ({100 * self.compound_off:+.1f} %, "
                       f"outside ±{100 * TOLERANCE:g} %); correction: width alone fitted to w = {self.w:.4f} at "
                       "the same r and d")
        out.append(f"reached {self.macs / 1e6:.2f}M MACs ({100 * self.off:+.1f} % vs budget), "
                   f"{self.params / 1e6:.2f}M params (measured from the built model)")
        return out


def base_recipe() -> Recipe:
    """EfficientNet-B0 with the TinyNet building rules (identical to B0 at phi = 0)."""
    return replace(load_recipe("efficientnet-b0"), depth_rounding="round", stem_scaled=False,
                   head_rule="max_scaled", published={}, provenance={})


class _Solver:
    def __init__(self, base: Recipe) -> None:
        self.base = base
        self.counts: dict[Architecture, tuple[int, int]] = {}

    def make(self, phi: float, w: float | None = None) -> Recipe:
        d, wc, r = compound(phi)
        res = input_size(r)
        return replace(self.base, width=round(wc if w is None else w, 4), depth=round(d, 4), resolution=res,
                       resolution_multiplier=round(res / BASE_RESOLUTION, 4))

    def measure(self, recipe: Recipe) -> tuple[int, int]:
        from .zoo import measure

        key = resolve(recipe)  # the architecture (resolution included) decides the counts
        if key not in self.counts:
            self.counts[key] = measure(recipe)
        return self.counts[key]

    def macs(self, phi: float) -> int:
        return self.measure(self.make(phi))[1]

    def crossing(self, budget: int) -> float:
        """A phi where MACs cross the budget (bisection; MACs grow with phi)."""
        lo, hi = PHI_MIN, 0.0
        for _ in range(24):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.macs(mid) <= budget else (lo, mid)
        return (lo + hi) / 2

    def plateaus(self, centre: float) -> list[tuple[float, float, Recipe]]:
        """(phi_low, phi_high, recipe) of each run of scan points building the same model."""
        first = max(PHI_MIN, centre - SCAN_WINDOW)
        n = int(round((min(0.0, centre + SCAN_WINDOW) - first) / SCAN_STEP))
        runs: list[tuple[float, float, Recipe]] = []
        last = None
        for i in range(n + 1):
            phi = round(first + i * SCAN_STEP, 3)
            rec = self.make(phi)
            key = resolve(rec)
            if key == last:
                runs[-1] = (runs[-1][0], phi, runs[-1][2])
            else:
                runs.append((phi, phi, rec))
                last = key
        return runs


def inverse_recipe(budget: int, name: str | None = None) -> InverseResult:
    """EfficientNet-B0 shrunk by the inverse giant formula to ``budget`` MACs (see the module doc)."""
    if name is not None and (why := check_slug(name)):
        raise UserError(f"--name: {why}")
    solver = _Solver(base_recipe())
    b0_macs = solver.macs(0.0)
    flops = f"--flops {budget / 1e6:g}M"
    if budget > b0_macs:
        raise UserError(f"{flops}: above EfficientNet-B0's {b0_macs / 1e6:.1f}M MACs (phi > 0) is "
                        "the giant formula (EfficientNet-B1..B7), not its inverse")
    smallest = solver.macs(PHI_MIN)
    if budget < smallest:
        raise UserError(f"{flops}: below {smallest / 1e6:.2f}M MACs, the smallest model the inverse formula "
                        f"builds (phi = {PHI_MIN:.2f}, 32 px input)")
    centre = solver.crossing(budget)
    runs = solver.plateaus(centre)

    def error(run: tuple[float, float, Recipe]) -> float:
        return abs(solver.measure(run[2])[1] / budget - 1)

    # closest to the budget; on a tie the larger phi (the model nearer B0)
    best = min(reversed(runs), key=error)
    lo_phi, hi_phi, _ = best
    phi = round((lo_phi + hi_phi) / 2, 3)
    recipe = solver.make(phi)
    params, macs = solver.measure(recipe)
    compound_macs = macs
    d, w_compound, r_compound = compound(phi)
    w, corrected = w_compound, False
    if abs(macs / budget - 1) > TOLERANCE:
        def at_width(width: float) -> Recipe:
            return solver.make(phi, width)

        if macs > budget:
            lo_w, hi_w = fit_width(at_width, budget, 0.05, w_compound)
        else:
            hi_w = w_compound
            while solver.measure(at_width(hi_w))[1] <= budget and hi_w < 4:
                hi_w *= 1.25
            lo_w, hi_w = fit_width(at_width, budget, w_compound, hi_w)
        fitted = min((lo_w, hi_w), key=lambda x: abs(solver.measure(at_width(x))[1] / budget - 1))
        if abs(solver.measure(at_width(fitted))[1] / budget - 1) < abs(macs / budget - 1):
            w, corrected = round(fitted, 4), True
            recipe = at_width(w)
            params, macs = solver.measure(recipe)
    warnings = []
    if abs(macs / budget - 1) > TOLERANCE:
        warnings.append(f"{flops}: the closest model reaches {macs / 1e6:.2f}M MACs "
                        f"({100 * (macs / budget - 1):+.1f} %), more than {100 * TOLERANCE:g} % off")
    name = name or f"efficientnet-inv-{budget / 1e6:g}m".replace(".", "p")
    provenance = {
        "generator": "edgeconv recipe inverse (inverse giant formula; a reconstruction of the TinyNet "
                     "paper's EfficientNet B^-n)",
        "budget_macs": budget,
        "phi": f"{phi:.3f}: {_interval_text(lo_phi, hi_phi)} (phi scanned in steps of {SCAN_STEP}) that builds "
               "the model whose measured MACs are closest to the budget",
        "multipliers": f"d = 1.2^phi = {d:.4f}, w = 1.1^phi = {w_compound:.4f}, r = 1.15^phi = {r_compound:.4f}",
        "resolution": f"224 * r = {BASE_RESOLUTION * r_compound:.1f} rounded to a multiple of 8: {recipe.resolution}",
        "rules": "TinyNet building rules: depth rounded, fixed 32-channel stem, head max(1280, scaled)",
        "measured": f"{macs / 1e6:.2f}M MACs ({100 * (macs / budget - 1):+.2f} % vs the budget), measured from "
                    "the built module",
    }
    if corrected:
        provenance["correction"] = (
            f"the compound solution reaches {compound_macs / 1e6:.2f}M MACs "
            f"({100 * (compound_macs / budget - 1):+.2f} %, outside ±{100 * TOLERANCE:g} %); width alone was "
            f"fitted by bisection to w = {w:.4f} (compound {w_compound:.4f}) at the same r and d")
    recipe = replace(recipe, name=name, family="efficientnet-inverse",
                     description=f"EfficientNet-B0 downsized by the inverse giant formula to {budget / 1e6:g}M MACs "
                                 f"(phi = {phi:.3f})", provenance=provenance)
    return InverseResult(recipe, budget, b0_macs, phi, (lo_phi, hi_phi), d, w_compound, w, r_compound, macs,
                         params, compound_macs, corrected, warnings)
