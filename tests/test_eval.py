"""`edgeconv eval`: accuracy of every artifact of the trained digits model through the normal image
path, what reaches the results store, and bad labelled data (one line on stderr, exit 1)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeconv.cli.accuracy import eval_cmd
from edgeconv.data import labelled_set
from edgeconv.evaluate import load_eval_data, topk_accuracy
from edgeconv.recipe import load_recipe
from edgeconv.store import Store
from tests import evalkit
from tests.evalkit import invoke, stdout_json

ALL = {"pytorch/fp32", "onnx/fp32", "tflite/fp32", "tflite/fp16", "tflite/dynamic", "tflite/int8",
       "openvino/fp32", "openvino/fp16", "openvino/int8"}


@pytest.fixture(scope="session")
def digits():
    return evalkit.digits()


@pytest.fixture(scope="session")
def digits_out(tmp_path_factory) -> Path:
    return evalkit.digits_build(tmp_path_factory.getbasetemp())


def eval_args(d, out, data=None, *extra) -> list:
    return ["tinynet-e", "--weights", d.weights, "--data", data or d.test, "--calib", d.calib, "--out", out,
            "-q", *extra]


def one_error_line(r, *fragments: str) -> str:
    """The command failed the way a user error should: exit 1, a single line on stderr."""
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeconv: error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------
# A real evaluation
# ----------------------------------------------------------------------------------------------
def test_eval_every_artifact_on_digits(digits, digits_out, tmp_path):
    db = tmp_path / "results.db"
    r = invoke(eval_cmd, eval_args(digits, digits_out, None, "--json", "--db", db))
    assert r.exit_code == 0, r.stderr
    m = stdout_json(r)
    rows = {x["label"]: x for x in m["results"]}
    assert set(rows) == ALL
    assert m["n"] == digits.info["n_test"] == 539 and m["skipped"] == [] and m["layout"] == "imagefolder"
    ref = rows["pytorch/fp32"]
    # the PyTorch model through edgeconv.data reproduces what training measured on the same images
    # (to one image: batching and memory layout may move a logit in the last bit)
    assert abs(ref["top1"] - digits.info["test_top1"]) <= 1 / 539 + 1e-9
    assert ref["top1"] > 0.96 and ref["agreement"] == 1.0 and ref["drop_pt"] is None
    for label, x in rows.items():
        assert x["n"] == 539 and x["top5"] is not None and x["top5"] >= x["top1"]
        # --json rounds drop_pt to 3 decimals (one image of 539 is 0.1855 pt)
        assert x["drop_pt"] is None or x["drop_pt"] == pytest.approx(100 * (ref["top1"] - x["top1"]), abs=5e-4)
        if label.endswith("/fp32"):  # parity: the same predictions as PyTorch, image by image
            assert x["agreement"] == 1.0 and x["top1"] == ref["top1"], label
        else:
            assert x["agreement"] > 0.98 and x["top1"] > ref["top1"] - 0.01, label
    # stored for `edgeconv report`, one row per artifact, fractions not percentages
    with Store(db) as store:
        acc = store.latest_accuracy(["tinynet-e"])
    assert {f"{f}/{p}" for _, f, p in acc} == ALL
    row = acc["tinynet-e", "tflite", "int8"]
    assert row["n"] == 539 and row["top1"] == rows["tflite/int8"]["top1"]
    assert row["dataset"].endswith("digits/test") and row["artifact_sha256"] == rows["tflite/int8"]["sha256"]


def test_eval_table_and_limit(digits, digits_out):
    r = invoke(eval_cmd, eval_args(digits, digits_out, None, "--limit", "50"))
    assert r.exit_code == 0, r.stderr
    assert "tinynet-e on" in r.stdout and ": 50 images" in r.stdout
    for label in ALL:
        assert label in r.stdout


def test_undecodable_image_is_skipped_with_a_warning(digits, digits_out, tmp_path):
    out = evalkit.copy_build(digits_out, tmp_path / "out")  # leave the shared build as it was
    data = tmp_path / "data"
    for c in ("0", "1", "2"):
        (data / c).mkdir(parents=True)
        for f in sorted((digits.test / c).glob("*.png"))[:4]:
            shutil.copy(f, data / c / f.name)
    (data / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = invoke(eval_cmd, eval_args(digits, out, data, "--json", "--formats", "onnx", "--precisions", "fp32"))
    assert r.exit_code == 0, r.stderr
    m = stdout_json(r)
    assert m["n"] == 12 and m["skipped"] == [str(data / "1" / "broken.png")]
    assert f"skipped 1 image(s) that cannot be used: {data / '1' / 'broken.png'} (" in r.stderr
    assert {x["label"] for x in m["results"]} == {"pytorch/fp32", "onnx/fp32"}
    assert all(x["n"] == 12 for x in m["results"])


# ----------------------------------------------------------------------------------------------
# Bad data: one line, exit 1, before any build starts
# ----------------------------------------------------------------------------------------------
def flat_sample(tmp_path: Path, wnids: list[str], tsv: str | None) -> Path:
    """A flat `<wnid>_*.JPEG` folder made of real digits images (PNG bytes, JPEG name)."""
    src = sorted((evalkit.digits().test / "0").glob("*.png"))
    data = tmp_path / "flat"
    data.mkdir()
    for i, w in enumerate(wnids):
        shutil.copy(src[i], data / f"{w}_{i}.JPEG")
    if tsv is not None:
        (data / "labels.tsv").write_text(tsv)
    return data


def test_empty_folder(digits, tmp_path):
    (tmp_path / "empty").mkdir()
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", tmp_path / "empty")), "no images found")
    assert not (tmp_path / "out").exists()  # failed before building anything


def test_missing_folder(digits, tmp_path):
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", tmp_path / "nope")), "no such folder")


def test_unknown_wnid(digits, tmp_path):
    data = flat_sample(tmp_path, ["n01", "n02", "n99"], "index\twnid\tname\n0\tn01\tzero\n1\tn02\tone\n")
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", data)), "n99_2.JPEG",
                   "wnid 'n99' is not in labels.tsv")


def test_labels_tsv_missing(digits, tmp_path):
    data = flat_sample(tmp_path, ["n01", "n02"], None)
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", data)), "need a labels.tsv")


def test_labels_tsv_without_header(digits, tmp_path):
    data = flat_sample(tmp_path, ["n01"], "0\tn01\tzero\n")
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", data)), "expected a header")


def test_class_folder_not_in_labels_tsv(digits, tmp_path):
    data = tmp_path / "folders"
    for w in ("n01", "n07"):
        (data / w).mkdir(parents=True)
        shutil.copy(next((digits.test / "0").glob("*.png")), data / w / "a.png")
    (data / "labels.tsv").write_text("index\twnid\tname\n0\tn01\tzero\n")
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", data)), "class folder 'n07'")


def test_more_classes_than_the_model(digits, tmp_path):
    data = tmp_path / "eleven"
    for c in range(11):
        (data / f"c{c:02d}").mkdir(parents=True)
        shutil.copy(next((digits.test / "0").glob("*.png")), data / f"c{c:02d}" / "a.png")
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", data)),
                   "class index 10 (c10) does not exist in a model with 10 classes")


def test_no_image_decodes(digits, tmp_path):
    data = tmp_path / "junk"
    (data / "0").mkdir(parents=True)
    for i in range(3):
        (data / "0" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", data)),
                   "none of the 3 images can be used; skipped 3 image(s)")
    assert not (tmp_path / "out").exists()


def test_bad_options(digits, tmp_path):
    r = invoke(eval_cmd, eval_args(digits, tmp_path / "out", None, "--limit", "0"))
    assert r.exit_code == 2 and "--limit" in r.stderr
    one_error_line(invoke(eval_cmd, eval_args(digits, tmp_path / "out", None, "--formats", "coreml")),
                   "--formats coreml")
    one_error_line(invoke(eval_cmd, ["tinynet-x", "--data", digits.test]), "unknown model 'tinynet-x'")


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------
def test_topk_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]], np.float32)
    labels = np.array([1, 1, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 5) == 1.0  # k beyond the classes: everything is in the top k
    # int8 logits tie: the lower class wins, as with argmax (which agreement and deployments use)
    tied = np.array([[0.5, 0.5, 0.1]] * 2, np.float32)
    assert topk_accuracy(tied, np.array([0, 1]), 1) == 0.5 == float((tied.argmax(1) == [0, 1]).mean())
    assert topk_accuracy(tied, np.array([0, 1]), 2) == 1.0


def test_wnid_layout_labels_follow_labels_tsv(imagenet_sample):
    r = load_recipe("efficientnet-lite0")
    ev = load_eval_data(imagenet_sample, r.resolution, r.preprocess, limit=20, num_classes=1000)
    ds = labelled_set(imagenet_sample, 20)
    assert ev.ds.layout == "wnid-files" and ev.n == 20
    tsv = {w: int(i) for i, w, *_ in (ln.split("\t") for ln in
                                      (imagenet_sample / "labels.tsv").read_text().splitlines()[1:])}
    assert list(ev.labels) == [tsv[f.name.split("_")[0]] for f in ds.files]
    # the same pixels as the calibration path: edgeconv.data.load_image
    from edgeconv.data import load_image

    first = next(ev.inputs())[0]
    np.testing.assert_array_equal(first, load_image(ds.files[0], r.resolution, r.preprocess))
