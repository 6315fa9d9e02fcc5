"""The model zoo as the CLI shows it: one row per recipe, counts measured from the built module.

Measuring means building the PyTorch module (on the meta device), which needs torch; the counts are
therefore kept in a small cache (``$EDGECONV_CACHE`` or the user cache folder, ``counts.json``)
keyed by the recipe's content hash and the builder's source, so a warm ``edgeconv models`` imports
no torch at all.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError
from .recipe import Recipe, load_recipe, recipe_names, resolve, sorted_names

ENV_CACHE = "EDGECONV_CACHE"
_COUNTED_BY = ("models/torch_model.py", "models/counting.py", "recipe.py")  # their code shapes the counts


def cache_dir() -> Path:
    """``$EDGECONV_CACHE``, else ``$XDG_CACHE_HOME/edgeconv`` (``~/.cache/edgeconv``)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeconv"


def _builder_digest() -> str:
    h = hashlib.sha256(__version__.encode())
    here = Path(__file__).resolve().parent
    for rel in _COUNTED_BY:
        h.update((here / rel).read_bytes())
    return h.hexdigest()[:16]


class CountsCache:
    """(params, MACs) per recipe digest, for one version of the builder's code. A cache that cannot
    be read or written is only slower, never an error."""

    def __init__(self, folder: Path | None = None) -> None:
        self.path = (folder or cache_dir()) / "counts.json"
        self.builder = _builder_digest()
        self.entries: dict[str, list[int]] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if data.get("builder") == self.builder and isinstance(data.get("counts"), dict):
                self.entries = data["counts"]
        except (OSError, ValueError, AttributeError):
            pass

    def measure(self, recipe: Recipe) -> tuple[int, int]:
        key = recipe.digest()
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 2:
            return hit[0], hit[1]
        params, macs = measure(recipe)
        self.entries[key] = [params, macs]
        self.dirty = True
        return params, macs

    def save(self) -> None:
        if not self.dirty:
            return
        from .util import atomic_write_text

        try:
            atomic_write_text(self.path, json.dumps({"builder": self.builder, "counts": self.entries}))
        except OSError:
            pass


def measure(recipe: Recipe) -> tuple[int, int]:
    """(params, MACs) of the built PyTorch module at the recipe's resolution."""
    import torch

    from .models.counting import count_macs, count_params
    from .models.torch_model import EfficientNet

    # Shapes only: a module on the meta device runs the real forward without allocating or
    # computing, so even EfficientNet-B7 at 600 px counts in milliseconds.
    with torch.device("meta"):
        model = EfficientNet(resolve(recipe)).eval()
    return count_params(model), count_macs(model, recipe.resolution)


def zoo_table(family: str | None = None) -> list[dict[str, Any]]:
    rows = []
    counts = CountsCache()
    recipes = [load_recipe(name) for name in sorted_names(recipe_names())]
    families = sorted({r.family for r in recipes})
    if family is not None and family not in families:
        raise UserError(f"--family {family!r}: no such family; the families are {', '.join(families)}")
    for r in recipes:
        if family and r.family != family:
            continue
        params, macs = counts.measure(r)
        rows.append({
            "name": r.name, "family": r.family, "resolution": r.resolution, "params": params,
            "macs": macs, "paper_top1": r.published.get("top1"), "paper_flops": r.published.get("flops"),
            "source": r.published.get("source"),
        })
    counts.save()
    return rows


def describe(name: str) -> dict[str, Any]:
    r = load_recipe(name)
    arch = resolve(r)
    counts = CountsCache()
    params, macs = counts.measure(r)
    counts.save()
    size = (r.resolution + 1) // 2  # after the stride-2 stem
    stem_out = f"{arch.stem_chs}x{size}x{size}"
    stages = []
    for st in arch.stages:
        size = -(-size // st.stride)
        stages.append({
            "block": st.block, "repeats": st.repeats, "kernel": st.kernel, "stride": st.stride,
            "expansion": st.expansion, "channels": st.out_chs, "se_ratio": st.se_ratio,
            "se_channels": [b.se_chs for b in st.blocks], "output": f"{st.out_chs}x{size}x{size}",
        })
    return {
        "name": r.name, "family": r.family, "description": r.description, "path": r.path,
        "resolution": r.resolution, "width": r.width, "depth": r.depth,
        "depth_rounding": r.depth_rounding, "activation": r.activation, "padding": r.padding,
        "bn_eps": r.bn_eps, "stem_channels": arch.stem_chs, "stem_output": stem_out, "stages": stages,
        "head_channels": arch.head_chs, "num_classes": arch.num_classes, "dropout": r.dropout,
        "params": params, "macs": macs, "published": r.published, "provenance": r.provenance,
    }
