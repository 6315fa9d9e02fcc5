"""`edgeconv bench --device host` on real artifacts and real runtimes (TFLite, OpenVINO, ONNX
Runtime): results, the store, per-artifact failures, one-line CLI errors, and a bench killed midway.

The artifacts are made here (a tiny Keras model -> TFLite fp32 + full int8; a tiny ONNX graph written
with onnx.helper -> OpenVINO IR) with a manifest.json in the build step's layout, so these tests do
not depend on `edgeconv build`. Each converter runs in its own subprocess, the two in parallel.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeconv.bench.host import BenchJob, run_job
from edgeconv.bench.run import ensure_artifacts
from edgeconv.cli.bench import bench
from edgeconv.errors import UserError
from edgeconv.store import Store

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["--runs", "20", "--warmup", "2"]

MAKE_TFLITE = """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    out = sys.argv[1]
    inp = tf.keras.Input((16, 16, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(10)(x))
    def rep():
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.standard_normal((1, 16, 16, 3)).astype(np.float32)]
    for name, int8 in (("fp32", False), ("int8", True)):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if int8:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = rep
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        with open(f"{out}/tflite/{name}.tflite", "wb") as f:
            f.write(conv.convert())
"""
MAKE_ONNX_OPENVINO = """
    import sys, numpy as np, onnx, openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    out, rng = sys.argv[1], np.random.default_rng(0)
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W", 0.2 * rng.standard_normal((8, 3, 3, 3))), ("B", np.zeros(8)),
        ("FW", 0.2 * rng.standard_normal((10, 8))), ("FB", np.zeros(10)))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], strides=[2, 2], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "FW", "FB"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              [1, 3, 16, 16])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                              [1, 10])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, f"{out}/toy.onnx")
    ov.save_model(ov.convert_model(f"{out}/toy.onnx"), f"{out}/openvino/fp32.xml", compress_to_fp16=False)
"""
ARTIFACTS = [("onnx", "fp32", "toy.onnx"), ("tflite", "fp32", "tflite/fp32.tflite"),
             ("tflite", "int8", "tflite/int8.tflite"), ("openvino", "fp32", "openvino/fp32.xml")]


def write_manifest(folder: Path, artifacts=ARTIFACTS) -> None:
    arts = []
    for fmt, prec, rel in artifacts:
        data = (folder / rel).read_bytes()
        arts.append({"format": fmt, "precision": prec, "path": rel, "size_bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "ops": {}, "parity": None})
    manifest = {"schema": 1, "model": "toy", "recipe": {}, "recipe_sha256": "0",
                "weights": {"spec": None, "layout": "random init"}, "params": 1098, "macs": 11_000,
                "resolution": 16, "num_classes": 10, "tools": {}, "artifacts": arts, "steps": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("build") / "toy"
    (folder / "tflite").mkdir(parents=True)
    (folder / "openvino").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for code in (MAKE_TFLITE, MAKE_ONNX_OPENVINO)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    write_manifest(folder)
    return folder


@pytest.fixture
def work(built: Path, tmp_path: Path) -> Path:
    """A private copy of the build folder, for tests that damage it."""
    return Path(shutil.copytree(built, tmp_path / "toy"))


def corrupt_build(folder: Path, relpath: str, data: bytes) -> None:
    """A build that wrote a broken file: the file and the manifest's sha256 agree, so bench measures
    it (a file changed after the build is refused instead: tests/test_hardening.py)."""
    (folder / relpath).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["path"] == relpath:
            a["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def invoke(*args: str):
    return CliRunner().invoke(bench, list(args), catch_exceptions=False)


def error_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_light_imports() -> None:
    """The worker must run where only a TFLite runtime exists; the CLI module must not slow down
    `edgeconv --help` (no numpy until a command runs)."""
    code = ("import sys, edgeconv.cli.bench; a = sorted({'numpy', 'sqlite3'} & set(sys.modules)); "
            "import edgeconv.bench.host; print(a, sorted({'torch', 'tensorflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
    from edgeconv.bench.host import HOST_RUNTIMES
    from edgeconv.bench.run import RUNTIMES

    assert RUNTIMES == HOST_RUNTIMES


def test_bench_every_runtime_and_store(built: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    r = invoke("--artifacts", str(built), *RUNS, "--db", str(db), "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    got = [(x["runtime"], x["precision"], x["status"], x["runs"]) for x in out["results"]]
    assert got == [("tflite", "fp32", "ok", 20), ("tflite", "int8", "ok", 20),
                   ("openvino", "fp32", "ok", 20), ("onnxruntime", "fp32", "ok", 20)]
    one_core = str(max(os.sched_getaffinity(0)))
    for x in out["results"]:
        assert x["cores"] == one_core  # pinned to one core with --threads 1
        assert 0 < x["min_ms"] <= x["median_ms"] <= x["p90_ms"] <= x["p99_ms"] <= x["max_ms"]
        assert x["init_ms"] > 0 and x["first_ms"] > 0 and x["harness_overhead_ns"] > 0
    assert out["device"]["kind"] == "host" and out["model"] == "toy"
    assert re.findall(r"\[(\d)/4\] .*\(saved\)", r.stderr) == ["1", "2", "3", "4"]
    with Store(db) as s:
        runs = s.runs()
        assert len(runs) == 4 and {r["status"] for r in runs} == {"ok"}
        assert {r["runs_actual"] for r in runs} == {20} and {r["warmup"] for r in runs} == {2}
        ov = next(r for r in runs if r["runtime"] == "openvino")
        assert ov["runtime_version"].startswith("openvino ")
        assert '"inference_precision": "f32"' in s.conn.execute(
            "SELECT extra FROM runs WHERE id = ?", (ov["run_id"],)).fetchone()[0]
        assert len(s.timings(ov["run_id"])) == 20


def test_runtime_and_precision_filters_and_table(built: Path, tmp_path: Path) -> None:
    r = invoke("--artifacts", str(built), "--runtime", "tflite", "--precisions", "int8,fp16", *RUNS,
               "--db", str(tmp_path / "r.db"))
    assert r.exit_code == 0, r.stderr
    assert re.search(r"│ tflite\s+│ int8\s+│", r.stdout)
    assert "fp32" not in r.stdout and "harness overhead" in r.stdout
    assert f"edgeconv: warning: {built} has no tflite/fp16 artifacts; benchmarking the others" in r.stderr


def test_two_threads_are_not_pinned(built: Path, tmp_path: Path) -> None:
    r = invoke("--artifacts", str(built), "--runtime", "onnxruntime", "--threads", "2", *RUNS,
               "--db", str(tmp_path / "r.db"), "--json")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    from edgeconv.bench.host import cpuset_str

    assert res["threads"] == 2 and res["cores"] == cpuset_str(os.sched_getaffinity(0))


@pytest.mark.parametrize("args, line", [
    (["--runtime", "tensorrt"],
     "edgeconv: error: --runtime tensorrt: choose from tflite,openvino,onnxruntime"),
    (["--precisions", "fp32,int4"],
     "edgeconv: error: --precisions int4: choose from fp32,fp16,dynamic,int8"),
    (["--device", "android", "--runtime", "onnxruntime"],
     "edgeconv: error: --device android runs tflite and openvino only, not onnxruntime"),
    (["--runtime", "onnxruntime", "--precisions", "int8"],
     "edgeconv: error: {dir}: no artifacts for --runtime onnxruntime --precisions int8"),
    (["--runs", "0"], "edgeconv: error: Invalid value for '--runs': 0 is not in the range 1<=x<=1000000. "
                      "(see 'bench --help')"),
])
def test_bad_options_are_one_line_errors(built: Path, tmp_path: Path, args: list[str], line: str) -> None:
    r = invoke("--artifacts", str(built), *args, "--db", str(tmp_path / "r.db"))
    assert r.exit_code == (2 if "Invalid value" in line else 1)  # 2: a usage error, as click's
    assert r.stderr == line.format(dir=built) + "\n"


def test_missing_folder_manifest_and_name(tmp_path: Path) -> None:
    db = ["--db", str(tmp_path / "r.db")]
    r = invoke("--artifacts", str(tmp_path / "nope"), *db)
    assert (r.exit_code, r.stderr) == (1, f"edgeconv: error: {tmp_path}/nope: no such artifacts folder\n")
    r = invoke("--artifacts", str(tmp_path), *db)
    assert (r.exit_code, r.stderr) == (
        1, f"edgeconv: error: {tmp_path}: no manifest.json (run 'edgeconv build' first)\n")
    r = invoke(*db)
    assert (r.exit_code, r.stderr) == (1, "edgeconv: error: give a model NAME or --artifacts DIR\n")


def test_name_reuses_a_complete_build_and_builds_what_is_missing(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    shutil.copytree(built, out / "toy")
    manifest, folder, _sha = ensure_artifacts("toy", out, None, ["tflite"], ["fp32", "int8"])
    assert (manifest["model"], folder) == ("toy", out / "toy")  # complete: build() not called
    (out / "toy" / "tflite" / "int8.tflite").unlink()
    warnings: list[str] = []
    with pytest.raises(UserError) as e:  # a build is needed, and no recipe "toy" exists
        ensure_artifacts("toy", out, None, ["tflite"], ["fp32", "int8"], warnings.append)
    assert str(e.value).startswith("unknown model 'toy'")
    assert warnings == []  # the unknown name is the error, before any "building toy first"


def test_unwritable_db_fails_before_benchmarking(built: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    r = invoke("--artifacts", str(built), "--db", str(tmp_path / "f" / "r.db"))
    assert r.exit_code == 1
    assert r.stderr == f"edgeconv: error: results database {tmp_path}/f/r.db: {tmp_path}/f is not a folder\n"


def test_missing_artifact_file_is_a_stored_failure(work: Path, tmp_path: Path) -> None:
    (work / "tflite" / "fp32.tflite").unlink()
    db = tmp_path / "r.db"
    r = invoke("--artifacts", str(work), "--runtime", "tflite", "--precisions", "fp32", *RUNS,
               "--db", str(db))
    assert r.exit_code == 1
    assert error_line(r) == (f"edgeconv: error: tflite fp32: {work.resolve()}/tflite/fp32.tflite: "
                             "artifact not found")
    with Store(db) as s:
        (row,) = s.runs()
        assert row["status"] == "failed" and row["error"].endswith("fp32.tflite: artifact not found")


def test_corrupt_artifacts_fail_alone(work: Path, tmp_path: Path) -> None:
    corrupt_build(work, "tflite/int8.tflite", b"garbage, not a flatbuffer" * 10)
    corrupt_build(work, "openvino/fp32.xml", b"<net><layers>")
    db = tmp_path / "r.db"
    r = invoke("--artifacts", str(work), "--runtime", "tflite,openvino", *RUNS, "--db", str(db), "--json")
    assert r.exit_code == 1
    assert error_line(r) == (f"edgeconv: error: 2 of 3 benchmarks failed; tflite int8: "
                             f"{work.resolve()}/tflite/int8.tflite: not a loadable .tflite model "
                             "(The model is not a valid Flatbuffer buffer)")
    res = {(x["runtime"], x["precision"]): x for x in json.loads(r.stdout)["results"]}
    assert res["tflite", "fp32"]["status"] == "ok"
    assert set(res["tflite", "int8"]) == set(res["tflite", "fp32"])  # same JSON shape when failed
    assert res["tflite", "int8"]["median_ms"] is None and res["tflite", "int8"]["runs"] is None
    assert re.fullmatch(rf"{re.escape(str(work.resolve()))}/openvino/fp32.xml: not a loadable "
                        r"OpenVINO IR \(.+\)", res["openvino", "fp32"]["error"])
    with Store(db) as s:
        assert sorted(r["status"] for r in s.runs()) == ["failed", "failed", "ok"]


def test_single_corrupt_openvino_line(work: Path, tmp_path: Path) -> None:
    corrupt_build(work, "openvino/fp32.xml", b"<net><layers>")
    r = invoke("--artifacts", str(work), "--runtime", "openvino", *RUNS, "--db", str(tmp_path / "r.db"))
    assert r.exit_code == 1
    assert re.fullmatch(rf"edgeconv: error: openvino fp32: {re.escape(str(work.resolve()))}/openvino/"
                        r"fp32.xml: not a loadable OpenVINO IR \([^\n]+\)", error_line(r))


def test_hung_or_crashed_worker_is_a_failed_result(built: Path) -> None:
    job = BenchJob(str(built / "toy.onnx"), "onnxruntime", "fp32", runs=10**8, warmup=0)
    rec = run_job(job, timeout=3)
    assert rec.status == "failed" and rec.error == "worker killed by SIGKILL"
    assert rec.timings_ns is None


BENCH_PROCESS = "import sys; from edgeconv.cli.bench import bench; bench(sys.argv[1:], prog_name='edgeconv')"


def test_killed_bench_keeps_earlier_results(built: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    p = subprocess.Popen([sys.executable, "-c", BENCH_PROCESS, "--artifacts", str(built), *RUNS,
                          "--db", str(db)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    lines = []
    try:
        assert p.stderr is not None
        for line in p.stderr:  # the first result is committed before its line is printed
            lines.append(line)
            if "(saved)" in line:
                os.killpg(p.pid, signal.SIGKILL)  # the bench and its worker, mid-run
                break
    finally:
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(lines)
    with Store(db) as s:
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (row,) = s.runs()
        assert (row["runtime"], row["precision"], row["status"], row["runs_actual"]) == \
            ("tflite", "fp32", "ok", 20)


def test_stability_script_on_own_artifact(built: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_stability.py"),
                          "--artifact", str(built / "tflite" / "int8.tflite"), "--repeats", "2",
                          "--runs", "20", "--warmup", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"repeat \d: median", out.stdout)) == 2
    assert re.search(r"coefficient of variation: [\d.]+ %", out.stdout)
    assert re.search(r"harness overhead: [\d.]+ ns per invocation", out.stdout)
