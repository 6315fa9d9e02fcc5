"""`edgeconv check`: the gate's verdicts, exit codes and JUnit XML, and the float fallback that
rescues an int8 model with an outlier channel (TFLite: QuantizationDebugger ranking + denylisted
nodes; OpenVINO: NNCF accuracy control)."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgeconv.build import load_manifest
from edgeconv.cli.accuracy import check_cmd
from edgeconv.errors import UserError
from edgeconv.evaluate import CheckFailed, Evaluation, Result, gate, junit_xml
from edgeconv.export.tflite import float_islands
from edgeconv.store import Store
from edgeconv.util import sha256_file
from tests import evalkit
from tests.evalkit import INT8_ONLY, invoke, stdout_json


@pytest.fixture(scope="session")
def digits():
    return evalkit.digits()


def check_args(d, weights, out, *extra) -> list:
    return ["tinynet-e", "--weights", weights, "--data", d.test, "--calib", d.calib, "--out", out, "-q", *extra]


def junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return suites[0]


# ----------------------------------------------------------------------------------------------
# The gate on its own
# ----------------------------------------------------------------------------------------------
def fake_evaluation(top1: dict[str, float]) -> Evaluation:
    results = [Result(*label.split("/"), "rt", None, None, 1000, t, None, 1.0, 0.5) for label, t in top1.items()]
    return Evaluation("m", "data", "data", "imagefolder", 1000, [], None, {"spec": "w.pth"}, results, "build/m")


def test_gate_verdicts_and_message():
    ev = fake_evaluation({"pytorch/fp32": 0.874, "onnx/fp32": 0.874, "tflite/int8": 0.851,
                          "openvino/int8": 0.869, "tflite/fp16": 0.876})
    g = gate(ev, 1.0)
    drops = {r.label: round(r.drop_pt, 6) for r in g.rows}
    assert drops == {"onnx/fp32": 0.0, "tflite/int8": 2.3, "openvino/int8": 0.5, "tflite/fp16": -0.2}
    assert [r.label for r in g.failures] == ["tflite/int8"] and not g.passed
    assert g.summary() == "check failed: tflite/int8 top-1 dropped 2.3 pt > 1"
    with pytest.raises(CheckFailed) as e:
        g.raise_for_failures()
    assert isinstance(e.value, UserError) and e.value.exit_code == 1
    assert gate(ev, 2.3).passed  # the limit is inclusive
    assert gate(ev, 0.4).summary() == ("check failed: tflite/int8 top-1 dropped 2.3 pt > 0.4; "
                                       "openvino/int8 top-1 dropped 0.5 pt > 0.4")
    with pytest.raises(UserError, match="--max-drop -1: must be >= 0"):
        gate(ev, -1)


def test_junit_xml_structure(tmp_path):
    ev = fake_evaluation({"pytorch/fp32": 0.874, "tflite/int8": 0.851, "openvino/int8": 0.869})
    (tmp_path / "r.xml").write_text(junit_xml(ev, gate(ev, 1.0)))
    suite = junit(tmp_path / "r.xml")
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("errors") == "0"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["max_drop_pt"] == "1" and props["pytorch_fp32_top1"] == "87.40" and props["images"] == "1000"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"tflite/int8", "openvino/int8"}
    failure = cases["tflite/int8"].find("failure")
    assert failure.get("message") == "tflite/int8 top-1 dropped 2.3 pt > 1" and "85.10 %" in failure.text
    assert cases["openvino/int8"].find("failure") is None
    assert all(c.get("classname") == "edgeconv.check.m" for c in cases.values())


# ----------------------------------------------------------------------------------------------
# The command on the trained digits model
# ----------------------------------------------------------------------------------------------
def test_check_passes_on_digits(digits, tmp_path_factory, tmp_path):
    out = evalkit.digits_build(tmp_path_factory.getbasetemp())
    r = invoke(check_cmd, check_args(digits, digits.weights, out, "--junit", tmp_path / "ci.xml", "--json"))
    assert r.exit_code == 0, r.stderr
    m = stdout_json(r)
    assert m["passed"] and m["max_drop"] == 1.0  # the recipe's quantization.max_drop
    assert m["fallbacks"] == [] and len(m["gate"]) == 8 and all(x["ok"] for x in m["gate"])
    suite = junit(tmp_path / "ci.xml")
    assert suite.get("tests") == "8" and suite.get("failures") == "0"
    assert not any(c.find("failure") is not None for c in suite.findall("testcase"))
    assert r.stderr.strip() == ""  # -q, everything cached: nothing but results


def test_check_fails_on_an_outlier_channel(digits, tmp_path_factory, tmp_path):
    base = tmp_path_factory.getbasetemp()
    out = evalkit.outlier_build(base)
    r = invoke(check_cmd, check_args(digits, evalkit.outlier_weights(base), out, *INT8_ONLY, "--no-fallback",
                                     "--junit", tmp_path / "ci.xml", "--max-drop", "0.5"))
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("edgeconv: error: check failed: tflite/int8 top-1 dropped ")
    assert "; openvino/int8 top-1 dropped " in lines[0] and lines[0].endswith(" pt > 0.5")
    assert "FAIL (> 0.5)" in r.stdout  # the table is printed before the verdict
    suite = junit(tmp_path / "ci.xml")
    assert suite.get("tests") == "2" and suite.get("failures") == "2"
    for case in suite.findall("testcase"):
        failure = case.find("failure")
        assert failure is not None and failure.get("type") == "AccuracyDrop"
        assert float(failure.get("message").split("dropped ")[1].split(" pt")[0]) > 2  # far over
    # the fp32 model is the same function: only int8 suffers
    m = load_manifest(out / "tinynet-e")
    assert all(not a.get("float_fallback") for a in m["artifacts"])


def test_exit_code_of_the_installed_command(digits, tmp_path_factory, tmp_path):
    """What CI sees: the `edgeconv` executable, exit status 1 and one line on stderr."""
    base = tmp_path_factory.getbasetemp()
    out = evalkit.outlier_build(base)
    args = check_args(digits, evalkit.outlier_weights(base), out, *INT8_ONLY, "--no-fallback", "--db",
                      tmp_path / "r.db")
    proc = subprocess.run([str(Path(sys.executable).with_name("edgeconv")), "check", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [next(ln for ln in proc.stderr.splitlines() if ln.startswith("edgeconv: "))]
    assert proc.stderr.startswith("edgeconv: error: check failed: tflite/int8 top-1 dropped ")
    assert "openvino/int8" in proc.stdout and "FAIL" in proc.stdout


def test_float_fallback_rescues_the_outlier(digits, tmp_path_factory, tmp_path):
    base = tmp_path_factory.getbasetemp()
    out = evalkit.copy_build(evalkit.outlier_build(base), tmp_path / "out")
    weights = evalkit.outlier_weights(base)
    before = {a["precision"] + a["format"]: a["sha256"] for a in load_manifest(out / "tinynet-e")["artifacts"]}
    r = invoke(check_cmd, check_args(digits, weights, out, *INT8_ONLY, "--max-drop", "0.5", "--json",
                                     "--latency-runs", "100"))
    assert r.exit_code == 0, r.stderr
    res = stdout_json(r)
    assert res["passed"]
    fbs = {fb["format"]: fb for fb in res["fallbacks"]}
    assert set(fbs) == {"tflite", "openvino"}
    for fb in fbs.values():
        assert fb["reached"] and fb["drop_before"] > 2 and fb["drop_after"] <= 0.5
        assert 0 < len(fb["float_ops"]) <= 8, fb["float_ops"]  # a few ops, not the whole network
        assert fb["latency_ms"]["int8"] > 0 and fb["latency_ms"]["mixed"] > 0
    # TFLite: the outlier tensor is blocks.0.0's output, written by its 1x1 projection and read by
    # blocks.1.0's expansion; the debugger's ranking puts it first
    assert {"blocks.0.0.conv_pw", "blocks.1.0.conv_pw"} <= set(fbs["tflite"]["float_ops"])
    assert fbs["tflite"]["steps"][1]["float"] == "blocks.0.0.conv_pw" and fbs["tflite"]["steps"][1]["kept"]
    assert fbs["tflite"]["calibration"]["held_aside"] == 50  # 25 % of the 200 calibration images
    assert "blocks.1.0.conv_pw" in fbs["openvino"]["float_ops"]  # NNCF reverts the quantized reader

    # the build now holds the mixed artifacts, recorded as int8 with their float ops
    m = load_manifest(out / "tinynet-e")
    entries = {a["format"]: a for a in m["artifacts"] if a["precision"] == "int8"}
    for fmt, a in entries.items():
        path = out / "tinynet-e" / a["path"]
        assert a["float_fallback"] == fbs[fmt]["float_ops"] and a["sha256"] == sha256_file(path)
        assert a["sha256"] != before["int8" + fmt] and a["fallback"]["drop_after"] <= 0.5
    assert entries["tflite"]["float_islands"] == float_islands(out / "tinynet-e" / "tflite" / "int8.tflite")
    assert any("CONV_2D computes in float32" in s for s in entries["tflite"]["float_islands"])
    assert not list((out / "tinynet-e").rglob(".int8-fallback*"))  # no work files left behind
    with Store() as store:  # the results of the artifacts that ship
        acc = store.latest_accuracy(["tinynet-e"])
    assert json.loads(acc["tinynet-e", "tflite", "int8"]["extra"])["float_fallback"] == fbs["tflite"]["float_ops"]

    # caching stays sane: the next check reuses the mixed artifacts and needs no second pass
    r = invoke(check_cmd, check_args(digits, weights, out, *INT8_ONLY, "--max-drop", "0.5", "--json"))
    again = stdout_json(r)
    assert r.exit_code == 0 and again["fallbacks"] == []
    assert {x["label"]: x["float_fallback"] for x in again["results"] if x["precision"] == "int8"} == \
        {f"{fmt}/int8": fbs[fmt]["float_ops"] for fmt in fbs}
    assert {a["format"]: a["sha256"] for a in load_manifest(out / "tinynet-e")["artifacts"]
            if a["precision"] == "int8"} == {f: a["sha256"] for f, a in entries.items()}


def test_tflite_fallback_bookkeeping_when_the_limit_is_not_reached(digits, tmp_path_factory, tmp_path):
    """No trials allowed: the pass reports the all-int8 start, keeps nothing in float and says so."""
    from edgeconv.data import calibration_set
    from edgeconv.evaluate import artifact_logits, load_eval_data, score, torch_logits
    from edgeconv.models.weights import load_model
    from edgeconv.quant import tflite_fallback
    from edgeconv.recipe import load_recipe

    recipe = load_recipe("tinynet-e")
    model, _ = load_model(recipe, str(evalkit.outlier_weights(tmp_path_factory.getbasetemp())))
    recipe = recipe.with_classes(10)
    data = load_eval_data(digits.test, recipe.resolution, recipe.preprocess, limit=120)
    ref, _ = torch_logits(model, data)
    calib = calibration_set(str(digits.calib), recipe.resolution, recipe.preprocess, size=40).inputs

    def judge(path):
        r = score("tflite", "int8", "tflite", artifact_logits(path, "tflite", data)[0], data.labels, ref, 0)
        return 100 * (float((ref.argmax(1) == data.labels).mean()) - r.top1), r.agreement

    fb = tflite_fallback(model, calib, judge, 0.5, 9.9, tmp_path / "w.tflite", max_trials=0)
    assert not fb.reached and fb.float_ops == [] and fb.nodes == []
    assert fb.drop_before == 9.9 and fb.drop_after == pytest.approx(fb.steps[0]["drop_pt"], abs=1e-3)
    assert fb.drop_after > 0.5
    assert fb.calibration == {"images": 30, "held_aside": 10, "ranking": []}
    assert float_islands(tmp_path / "w.tflite") == []  # the work file holds the all-int8 model


# ----------------------------------------------------------------------------------------------
# Pieces of edgeconv.quant
# ----------------------------------------------------------------------------------------------
def fake_quant_mse(v: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of 8-bit asymmetric quantization of ``v`` to [lo, hi], simulated."""
    step = (hi - lo) / 255
    return float(np.mean((np.clip(np.round((v - lo) / step), 0, 255) * step + lo - v) ** 2))


def test_mse_range_beats_min_max():
    from edgeconv.export.tflite_int8 import mse_range

    rng = np.random.default_rng(0)
    uniform = rng.uniform(-1, 1, 200_000)
    lo, hi = mse_range(np.histogram(uniform, 2048, (-1, 1))[0], -1, 1)
    assert lo < -0.97 and hi > 0.97  # nothing to gain from clipping a uniform distribution
    # heavy tails (a conv output): clipping the rare extremes buys resolution for everything else
    laplace = rng.laplace(0, 1, 200_000)
    mn, mx = float(laplace.min()), float(laplace.max())
    lo, hi = mse_range(np.histogram(laplace, 2048, (mn, mx))[0], mn, mx)
    assert mn < lo < -4 and 4 < hi < mx
    assert fake_quant_mse(laplace, lo, hi) < 0.9 * fake_quant_mse(laplace, mn, mx)
    # a ReLU output: the zero lower bound stays where it is
    relu = np.abs(rng.standard_normal(100_000))
    lo, hi = mse_range(np.histogram(relu, 2048, (0, relu.max()))[0], 0.0, float(relu.max()))
    assert lo == 0.0 and fake_quant_mse(relu, lo, hi) <= fake_quant_mse(relu, 0.0, float(relu.max()))


def test_layer_names_follow_the_pytorch_modules(tmp_path_factory):
    from edgeconv.quant import onnx_layers, tflite_layer
    from edgeconv.recipe import load_recipe, resolve

    assert tflite_layer("edgeconv_1/blocks_0_0_act1_1/Relu6;edgeconv_1/blocks_0_0_conv_dw_1/BiasAdd;"
                        "edgeconv_1/blocks_0_0_conv_dw_1/depthwise") == "blocks.0.0.conv_dw"
    assert tflite_layer("edgeconv_1/act1_1/Relu6;edgeconv_1/conv_stem_1/BiasAdd") == "conv_stem"
    assert tflite_layer("edgeconv_1/blocks_1_0_se_conv_reduce_1/BiasAdd") == "blocks.1.0.se.conv_reduce"
    assert tflite_layer("edgeconv_1/classifier_1/MatMul;edgeconv_1/classifier_1/BiasAdd") == "classifier"
    out = evalkit.digits_build(tmp_path_factory.getbasetemp())
    names = onnx_layers(out / "tinynet-e" / "tinynet-e.onnx", resolve(load_recipe("tinynet-e").with_classes(10)))
    import onnx

    convs = [n.name for n in onnx.load(str(out / "tinynet-e" / "tinynet-e.onnx"), load_external_data=False).graph.node
             if n.op_type in ("Conv", "Gemm")]
    mapped = [names[c] for c in convs]
    assert mapped[0] == "conv_stem" and mapped[-2:] == ["conv_head", "classifier"]
    # the batch norms folded into the convs become the convs' own names, in the blocks' order
    assert mapped[1:10] == ["blocks.0.0.conv_dw", "blocks.0.0.se.conv_reduce", "blocks.0.0.se.conv_expand",
                            "blocks.0.0.conv_pw", "blocks.1.0.conv_pw", "blocks.1.0.conv_dw",
                            "blocks.1.0.se.conv_reduce", "blocks.1.0.se.conv_expand", "blocks.1.0.conv_pwl"]
    assert len(set(mapped)) == len(mapped)  # one module per conv
