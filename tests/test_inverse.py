"""The inverse giant formula (edgeconv.inverse, `edgeconv recipe inverse`) and the EfficientNet
B^-1..B^-4 recipes it regenerated, against the TinyNet paper's figures: MACs measured on the built
modules within 6 % of C0 / 2^k, B^-1's multipliers r 0.86 / d 0.80 / w 0.89, and the refusals."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from edgeconv.cli import cli
from edgeconv.errors import UserError
from edgeconv.inverse import PHI_MIN, TOLERANCE, _Solver, base_recipe, compound, input_size, inverse_recipe
from edgeconv.recipe import load_recipe, load_recipe_file, resolve
from edgeconv.zoo import measure

C0 = 385.8e6  # EfficientNet-B0's MACs, measured (tests/test_zoo.py)


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_bm_recipes_within_6_percent_of_c0_over_2k(k):
    r = load_recipe(f"efficientnet-bm{k}")
    macs = measure(r)[1]
    assert abs(macs / (C0 / 2 ** k) - 1) < 0.06, f"B^-{k}: {macs / 1e6:.2f}M vs {C0 / 2 ** k / 1e6:.2f}M"
    # the TinyNet building rules, and the input a multiple of 8
    assert (r.depth_rounding, r.stem_scaled, r.head_rule, r.resolution % 8) == ("round", False, "max_scaled", 0)
    arch = resolve(r)
    assert arch.stem_chs == 32 and arch.head_chs == 1280
    assert "reconstruction" in r.provenance["reconstruction"]


def test_bm_recipes_shrink_monotonically():
    macs = [measure(load_recipe(f"efficientnet-bm{k}"))[1] for k in (1, 2, 3, 4)]
    assert macs == sorted(macs, reverse=True)


def test_bm1_reproduces_the_paper_multipliers():
    r = load_recipe("efficientnet-bm1")
    assert round(r.resolution / 224, 2) == 0.86 and r.resolution == 192
    assert round(r.depth, 2) == 0.80
    assert round(r.width, 2) == 0.89
    phi = float(r.provenance["phi"].split(":")[0])
    d, w, _ = compound(phi)  # one phi gives both multipliers
    assert (round(d, 4), round(w, 4)) == (r.depth, r.width)


def test_bm4_keeps_the_paper_figures_as_published():
    r = load_recipe("efficientnet-bm4")
    assert r.published["top1"] == 56.7 and r.published["flops"] == "24M"
    assert "top1" not in load_recipe("efficientnet-bm1").published  # only B^-4's accuracy is published


def test_tinynet_a_published_top1_is_the_papers():
    r = load_recipe("tinynet-a")
    assert r.published["top1"] == 76.8
    assert "77.7" in r.provenance["top1_timm"]


def test_input_size_rounds_to_multiples_of_8():
    assert [input_size(x) for x in (1.0, 0.8394, 0.5, 0.01)] == [224, 192, 112, 32]


@pytest.mark.parametrize("flops,budget", [("24M", 24e6), ("50M", 50e6), ("0.1G", 100e6)])
def test_recipe_inverse_lands_within_6_percent(tmp_path, flops, budget):
    out = tmp_path / "inv.yaml"
    r = run("recipe", "inverse", "--flops", flops, "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["budget_macs"] == budget
    assert abs(info["macs"] / budget - 1) < TOLERANCE
    written = load_recipe_file(out)  # the file builds the model the command measured
    assert measure(written)[1] == info["macs"]
    assert written.resolution == info["resolution"] and written.resolution % 8 == 0
    assert info["phi_interval"][0] <= info["phi"] <= info["phi_interval"][1] < 0
    if info["corrected"]:  # a correction is said, and recorded in the provenance
        assert abs(info["compound_macs"] / budget - 1) > TOLERANCE
        assert info["w"] != info["w_compound"]
        assert "width alone was fitted" in written.provenance["correction"]
    else:
        assert info["w"] == info["w_compound"] and "correction" not in written.provenance


def test_24m_needs_the_stated_width_correction():
    """The compound solution for 24M is 6.1 % over (the next input down, 96 px, is 20 % under):
    width alone is fitted at the same r and d, and the text output says so."""
    res = inverse_recipe(24_000_000)
    assert res.corrected and res.compound_macs > 24e6 * 1.06
    assert res.resolution == input_size(res.r_compound) and round(res.recipe.depth, 4) == round(res.d, 4)
    assert res.w < res.w_compound
    assert any("correction: width alone fitted" in line for line in res.lines())
    r = run("recipe", "inverse", "--flops", "24M")
    assert r.exit_code == 0
    text = r.output.split("name:")[0]
    assert "compound solution: 25.46M MACs (+6.1 %, outside ±6 %)" in text
    assert f"reached {res.macs / 1e6:.2f}M MACs" in text
    recipe = yaml.safe_load(r.output[r.output.index("name:"):])
    assert recipe["arch"]["width"] == res.w


def test_refuses_budgets_above_b0():
    r = run("recipe", "inverse", "--flops", "0.5G")
    assert r.exit_code == 1
    assert r.output == ("edgeconv: error: --flops 500M: above EfficientNet-B0's 385.8M MACs (phi > 0) is the "
                        "giant formula (EfficientNet-B1..B7), not its inverse\n")


def test_refuses_budgets_below_the_smallest_model():
    smallest = measure(_Solver(base_recipe()).make(PHI_MIN))[1]
    with pytest.raises(UserError, match=r"below 2\.\d\dM MACs, the smallest model"):
        inverse_recipe(smallest - 1)
    r = run("recipe", "inverse", "--flops", "1M")
    assert r.exit_code == 1 and len(r.output.splitlines()) == 1
    assert r.output.startswith("edgeconv: error: --flops 1M: below 2.") and "32 px input" in r.output
    assert run("recipe", "inverse", "--flops", "lots").exit_code == 1
    assert run("recipe", "inverse").exit_code == 2


def test_b0_budget_gives_b0():
    res = inverse_recipe(int(measure(load_recipe("efficientnet-b0"))[1]))
    assert res.phi_interval[1] == 0 and res.macs == res.b0_macs and res.resolution == 224
    assert resolve(res.recipe) == resolve(load_recipe("efficientnet-b0"))
