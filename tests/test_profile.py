"""`edgeconv profile`: the recipe's blocks, cut out of the built .tflite, timed and judged.

Facts asserted: tinynet-e has a stem, 10 blocks and a head (its recipe); the rows' params and MACs
add up exactly to the model's totals (2.04 M params and 24 M MACs, the TinyNet paper's figures);
each slice, fed the whole model's tensor at its input boundary, reproduces the whole model's
tensor at its output boundary bit for bit (int8 included: the same scales and zero points); the
int8 error of the last block equals the error of the int8 logits computed the ordinary way. End to
end on the host and on the arm64 board stand-in (QEMU, labelled emulated), stored and shown again
by `report --profile`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from click.testing import CliRunner

from edgeconv.cli import cli as edgeconv_cli
from edgeconv.store import Store
from tests.test_android_bench import adb_env, tinynet  # noqa: F401 - session build, adb environment
from tests.test_arm64_board import arm64_board, board  # noqa: F401 - the arm64 stand-in

if TYPE_CHECKING:
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]

TINYNET_E_ROWS = ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "blocks.3.0", "blocks.3.1", "blocks.4.0",
                  "blocks.4.1", "blocks.5.0", "blocks.5.1", "blocks.6.0", "head"]


def run(db: Path, *args: str):
    return CliRunner().invoke(edgeconv_cli, [*args, "--db", str(db)], catch_exceptions=False)


def _sample_image(manifest: dict) -> np.ndarray:
    from edgeconv.profile import error_images

    return error_images(manifest, 1)[0]


def test_tinynet_e_rows_add_up_to_the_model(tinynet: Path) -> None:  # noqa: F811
    from edgeconv.profile import count_rows, row_names
    from edgeconv.recipe import load_recipe, resolve

    recipe = load_recipe("tinynet-e")
    names = row_names(resolve(recipe))
    assert [n for n, _, _ in names] == TINYNET_E_ROWS  # stem + 10 blocks + head
    assert names[5][2] == "ir_k3_s1_e6_c40_se0.25" and names[0][2] == "conv_k3_s2_c32"
    assert [s for _, s, _ in names] == [None, 0, 1, 2, 3, 3, 4, 4, 5, 5, 6, None]
    counts = count_rows(recipe)
    manifest = json.loads((tinynet / "manifest.json").read_text())
    assert sum(c["params"] for c in counts.values()) == manifest["params"]
    assert sum(c["macs"] for c in counts.values()) == manifest["macs"]
    assert round(manifest["params"] / 1e6, 2) == 2.04 and round(manifest["macs"] / 1e6) == 24  # the paper's


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_slices_reproduce_the_whole_model_bit_exactly(tinynet: Path, tmp_path: Path, precision: str) -> None:  # noqa: F811
    from edgeconv.export import tflite_slice as ts
    from edgeconv.profile import _interpreter, slice_artifact

    manifest = json.loads((tinynet / "manifest.json").read_text())
    sliced = slice_artifact(tinynet / "tflite" / f"{precision}.tflite", tmp_path, TINYNET_E_ROWS)
    whole = _interpreter(ts.with_outputs(sliced.model, sliced.boundaries()))
    x = _sample_image(manifest)
    whole.set_tensor(whole.get_input_details()[0]["index"], x)
    whole.invoke()
    at = [whole.get_tensor(d["index"]) for d in whole.get_output_details()]
    if precision == "int8":
        assert all(a.dtype == np.int8 for a in at[1:-1])  # the boundaries are int8 tensors
    for k, file in enumerate(sliced.files):
        one = _interpreter(file.read_bytes())
        inp, out = one.get_input_details()[0], one.get_output_details()[0]
        assert list(inp["shape"]) == list(at[k].shape) and list(out["shape"]) == list(at[k + 1].shape)
        # int8: the slice's input and output are quantized exactly as the whole model's tensors
        assert inp["quantization"] == whole.get_output_details()[k]["quantization"]
        assert out["quantization"] == whole.get_output_details()[k + 1]["quantization"]
        one.set_tensor(inp["index"], at[k])
        one.invoke()
        np.testing.assert_array_equal(one.get_tensor(out["index"]), at[k + 1], err_msg=TINYNET_E_ROWS[k])


def test_the_int8_error_of_the_head_is_that_of_the_logits(tinynet: Path, tmp_path: Path) -> None:  # noqa: F811
    """Boundary read-outs are the models' own tensors: the last block's SQNR equals the SQNR of the
    int8 artifact's logits against the fp32 artifact's, run the ordinary way (a TFLiteRunner each);
    the stem's accumulated and local errors are the same number (it reads the float image)."""
    from edgeconv.profile import block_errors, error_images, slice_artifact, sqnr_db
    from edgeconv.runtimes.tflite import TFLiteRunner

    manifest = json.loads((tinynet / "manifest.json").read_text())
    imgs, _ = error_images(manifest, 8)
    q = slice_artifact(tinynet / "tflite" / "int8.tflite", tmp_path / "q", TINYNET_E_ROWS)
    f = slice_artifact(tinynet / "tflite" / "fp32.tflite", tmp_path / "f", TINYNET_E_ROWS)
    errors = block_errors(q, f, imgs)
    assert len(errors) == 12
    nchw = imgs.transpose(0, 3, 1, 2)
    logits_q = TFLiteRunner(tinynet / "tflite" / "int8.tflite").run(nchw)
    logits_f = TFLiteRunner(tinynet / "tflite" / "fp32.tflite").run(nchw)
    assert errors[-1]["sqnr_db"] == pytest.approx(sqnr_db(logits_f, logits_q), abs=0.01)
    assert errors[0]["sqnr_db"] == errors[0]["local_sqnr_db"]
    for e in errors:
        assert 0 < e["sqnr_db"] < 60 and 0 < e["local_sqnr_db"] < 60 and 0.5 < e["cosine"] <= 1
    # error accumulates: the last block is further from fp32 than the first
    assert errors[-2]["sqnr_db"] < errors[1]["sqnr_db"]


def test_a_model_not_from_the_keras_twin_is_refused_in_one_line(tmp_path: Path) -> None:
    from edgeconv.errors import UserError
    from edgeconv.profile import slice_artifact

    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"TFL3 not a flatbuffer at all" * 10)
    with pytest.raises(UserError, match="not a readable .tflite model"):
        slice_artifact(bad, tmp_path / "s", TINYNET_E_ROWS)


def test_profile_on_the_host_is_stored_and_shown_again(tinynet: Path, tmp_path: Path) -> None:  # noqa: F811
    db = tmp_path / "r.db"
    r = run(db, "profile", "tinynet-e", "--out", str(tinynet.parent), "--runs", "30", "--warmup", "3",
            "--images", "8", "--json", "--plot", str(tmp_path / "p.png"))
    assert r.exit_code == 0, r.stderr
    (p,) = json.loads(r.stdout)["profiles"]
    assert [row["name"] for row in p["rows"]] == TINYNET_E_ROWS
    assert all(row["status"] == "ok" and row["median_ms"] > 0 for row in p["rows"])
    assert sum(row["params"] for row in p["rows"]) == p["params"]
    assert sum(row["macs"] for row in p["rows"]) == p["macs"]
    assert p["whole"]["status"] == "ok" and p["whole"]["median_ms"] > 0
    # the ratio is reported (per-invoke overhead makes it > 1 in general; not asserted tightly)
    assert p["ratio"] == pytest.approx(p["sum_median_ms"] / p["whole"]["median_ms"], rel=1e-3)
    assert sum(row["share"] for row in p["rows"]) == pytest.approx(1.0, abs=1e-3)
    assert all(row["sqnr_db"] is not None for row in p["rows"]) and p["error_images"] == 8
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[13/13] whole:" in r.stderr
    with Store(db) as s:
        (stored,) = s.profiles(models=["tinynet-e"])
    assert [row["median_ms"] for row in stored["rows"]] == [row["median_ms"] for row in p["rows"]]
    shown = run(db, "report", "--profile", "tinynet-e", "--json")
    assert shown.exit_code == 0, shown.stderr
    again = json.loads(shown.stdout)
    again = again[0] if isinstance(again, list) else again
    assert [row["name"] for row in again["rows"]] == TINYNET_E_ROWS
    md = run(db, "report", "--profile", "tinynet-e", "--markdown")
    assert md.exit_code == 0 and "ir_k3_s1_e6_c40_se0.25" in md.stdout


def test_the_float_fallback_blocks_are_marked(tinynet: Path, tmp_path: Path) -> None:  # noqa: F811
    """An int8 artifact that `check` replaced names the modules it keeps in float in the manifest:
    their blocks carry them (here the manifest entry is edited; the slices are the same)."""
    build = tmp_path / "b" / "tinynet-e"
    shutil.copytree(tinynet, build)
    manifest = json.loads((build / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["precision"] == "int8":
            a["float_fallback"] = ["blocks.3.1.conv_dw", "blocks.3.1.se.conv_reduce", "conv_head"]
    (build / "manifest.json").write_text(json.dumps(manifest))
    from edgeconv.profile import ProfileRequest, run_profile

    (p,) = run_profile(ProfileRequest("tinynet-e", out=build.parent, runs=3, warmup=0, error_images=0))
    marked = {r["name"]: r["float_fallback"] for r in p["rows"] if r["float_fallback"]}
    assert marked == {"blocks.3.1": ["blocks.3.1.conv_dw", "blocks.3.1.se.conv_reduce"], "head": ["conv_head"]}
    assert all(r["sqnr_db"] is None for r in p["rows"])  # --images 0: no error columns


def test_profile_on_the_arm64_board_is_marked_emulated(tinynet: Path, board: EmulatedDevice,  # noqa: F811
                                                       adb_env: Path) -> None:  # noqa: F811
    r = run(adb_env, "profile", "tinynet-e", "--device", "board", "--serial", board.serial, "--runner", "python",
            "--runs", "5", "--warmup", "1", "--images", "4", "--out", str(tinynet.parent), "--json")
    assert r.exit_code == 0, r.stderr
    (p,) = json.loads(r.stdout)["profiles"]
    assert p["device_kind"] == "board" and p["device_emulated"] is True
    assert [row["name"] for row in p["rows"]] == TINYNET_E_ROWS
    assert all(row["status"] == "ok" and row["median_ms"] > 0 for row in p["rows"])
    assert p["whole"]["status"] == "ok" and p["ratio"] is not None
    assert "is emulated: its timings are not latency" in r.stderr
    # the slices went to the device as models of their own
    assert board.device_path("/var/tmp/edgeconv/models/tinynet-e.blocks.3.1-int8.tflite").read_bytes() == \
        (tinynet / "profile" / "int8" / "05-blocks.3.1.tflite").read_bytes()
    shown = run(adb_env, "report", "--profile", "tinynet-e", "--markdown")
    assert shown.exit_code == 0, shown.stderr
    assert "emulated" in shown.stdout


def test_compare_shows_two_models_per_stage(tinynet: Path, tmp_path: Path) -> None:  # noqa: F811
    """tinynet-e against efficientnet-bm4 (the paper's B-4, 24 M MACs too): the same stages, side by
    side; each model's stage sums are its own rows' sums."""
    out = tmp_path / "b"
    shutil.copytree(tinynet, out / "tinynet-e")
    db = tmp_path / "r.db"
    r = run(db, "profile", "tinynet-e", "--compare", "efficientnet-bm4", "--precision", "fp32", "--runs", "5",
            "--warmup", "1", "--out", str(out), "--markdown", "--plot", str(tmp_path / "c.svg"))
    assert r.exit_code == 0, r.stderr
    assert "tinynet-e vs efficientnet-bm4" in r.stdout or "efficientnet-bm4" in r.stdout.split("###")[-1]
    with Store(db) as s:
        a, = s.profiles(models=["tinynet-e"])
        b, = s.profiles(models=["efficientnet-bm4"])
    from edgeconv.report import compare_stage_rows

    rows = {x["stage"]: x for x in compare_stage_rows(a, b)}
    assert rows["stem"]["a_macs"] == next(x["macs"] for x in a["rows"] if x["name"] == "stem")
    stage1 = [x for x in b["rows"] if x["stage"] == 1]
    assert rows["stage 1"]["b_ms"] == pytest.approx(sum(x["median_ms"] for x in stage1), rel=1e-6)
    assert sum(x["a_macs"] for k, x in rows.items() if k.startswith(("stem", "stage", "head"))) == a["macs"]
    assert (tmp_path / "c.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
