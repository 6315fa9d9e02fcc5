"""Recipe grammar, validation errors (one line naming file and field), scaling rules, tiny formula."""
from __future__ import annotations

import pytest
import yaml

from edgeconv.recipe import (
    RecipeError,
    StageSpec,
    load_recipe,
    load_recipe_file,
    make_divisible,
    parse_stage,
    recipe_to_yaml,
    scale_depth,
)
from edgeconv.tiny import parse_flops, tiny_recipe
from edgeconv.zoo import measure


def test_stage_string_roundtrip():
    s = parse_stage("ir_r2_k3_s2_e6_c24_se0.25")
    assert s == StageSpec("ir", 2, 3, 2, 6.0, 24, 0.25, True)
    assert s.to_string() == "ir_r2_k3_s2_e6_c24_se0.25"
    assert parse_stage("ds_r1_k3_s1_e1_c16").se_ratio == 0
    assert not parse_stage("ir_r1_k3_s1_e6_c16_noskip").skip


@pytest.mark.parametrize("bad,why", [
    ("xx_r1_k3_s1_e1_c16", "unknown block type"), ("ir_r2_k3_s2_e6", "missing 'c'"),
    ("ir_r2_k4_s2_e6_c24", "kernel must be odd"), ("ir_r2_k3_s2_e6_c24_zz9", "bad token"),
    ("ds_r1_k3_s1_e6_c16", "no expansion"), ("ir_r0_k3_s2_e6_c24", "positive integer"),
])
def test_bad_stage_strings(bad, why):
    with pytest.raises(ValueError, match=why):
        parse_stage(bad)


def test_rounding_rules():
    assert make_divisible(32 * 0.51) == 16
    assert make_divisible(24 * 0.51) == 16  # 12.24 -> 16 (8 would be >10 % below)
    assert make_divisible(112 * 0.54) == 64
    assert scale_depth(3, 0.6, "round") == 2 and scale_depth(2, 0.6, "round") == 1
    assert scale_depth(2, 0.6, "ceil") == 2 and scale_depth(4, 1.1, "ceil") == 5


def _write(tmp_path, mutate):
    data = yaml.safe_load(recipe_to_yaml(load_recipe("tinynet-e")))
    mutate(data)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["arch"].update(colour="red"), "arch.colour: unknown key"),
    (lambda d: d["arch"].update(width="wide"), "arch.width: expected int/float"),
    (lambda d: d["arch"].update(resolution=True), "arch.resolution: expected int"),
    (lambda d: d["arch"]["stages"].__setitem__(2, "ir_r2_k5_s2_e6"), "arch.stages[2]: missing 'c'"),
    (lambda d: d["arch"].update(activation="gelu"), "arch.activation: 'gelu' is not one of"),
    (lambda d: d["preprocess"].pop("mean"), "preprocess.mean: missing"),
    (lambda d: d["preprocess"].update(std=[1, 2]), "preprocess.std: expected 3 numbers"),
    (lambda d: d.update(extra=1), "extra: unknown key"),
])
def test_validation_errors_name_file_and_field(tmp_path, mutate, field):
    p = _write(tmp_path, mutate)
    with pytest.raises(RecipeError) as e:
        load_recipe_file(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and field in msg and "\n" not in msg


def test_invalid_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"not valid YAML \(line"):
        load_recipe_file(p)


def test_recipe_yaml_roundtrip_keeps_digest(tmp_path):
    r = load_recipe("efficientnet-lite0")
    p = tmp_path / "lite0.yaml"
    p.write_text(recipe_to_yaml(r))
    assert load_recipe(str(p)).digest() == r.digest()


def test_parse_flops():
    assert parse_flops("50M") == 50_000_000 and parse_flops("0.1G") == 100_000_000
    with pytest.raises(Exception, match="expected a number"):
        parse_flops("fifty")


def test_tiny_recipe_follows_the_formula_and_reports_measured_macs():
    res = tiny_recipe(50_000_000)
    # r and d come from between TinyNet-D (52M) and TinyNet-E (24M), w from the fit, never above budget
    assert 0.475 < res.r < 0.68 and 0.6 < res.d < 0.695
    assert res.w_formula == pytest.approx((res.c / (res.r ** 2 * res.d)) ** 0.5)
    assert res.macs <= 50_000_000 and res.macs > 0.9 * 50_000_000
    assert measure(res.recipe)[1] == res.macs
    # importance r > d > w: relative to B0, resolution shrinks least, width most
    assert res.r > res.w


def test_tiny_recipe_without_fit_overshoots_small_budgets():
    res = tiny_recipe(24_000_000, fit=False)
    assert res.w == pytest.approx(res.w_formula, abs=1e-4)
    assert res.macs > 24_000_000  # the formula ignores the fixed stem and head
