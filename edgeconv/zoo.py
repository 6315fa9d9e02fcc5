"""The model zoo as the CLI shows it: one row per recipe, counts measured from the built module."""
from __future__ import annotations

from typing import Any

from .recipe import Recipe, load_recipe, recipe_names, resolve, sorted_names


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
    for name in sorted_names(recipe_names()):
        r = load_recipe(name)
        if family and r.family != family:
            continue
        params, macs = measure(r)
        rows.append({
            "name": r.name, "family": r.family, "resolution": r.resolution, "params": params,
            "macs": macs, "paper_top1": r.published.get("top1"), "paper_flops": r.published.get("flops"),
            "source": r.published.get("source"),
        })
    return rows


def describe(name: str) -> dict[str, Any]:
    r = load_recipe(name)
    arch = resolve(r)
    params, macs = measure(r)
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
