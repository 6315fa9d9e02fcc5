"""The stability verdict and peak memory, provoked for real: a busy process pinned to the bench's
core makes the run noisy (and names the process), --until-stable keeps every repeat, old databases
are upgraded with verdicts judged from their timings, and peak memory is measured on the host and
on an emulated ADB phone (the Python runner's VmHWM). The verdict's rules are checked on timings
with a known shape (pure functions: no mocks needed)."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from click.testing import CliRunner

from edgeconv.bench.stability import NOISY, STABLE, THROTTLED, assess, busy_tasks, window_medians
from edgeconv.cli.bench import bench
from edgeconv.cli.results import report
from edgeconv.store import MIGRATIONS, SCHEMA_VERSION, Store

if TYPE_CHECKING:
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]

MAKE_ONNX = """
    import sys, numpy as np, onnx
    from onnx import TensorProto, helper, numpy_helper
    out, rng = sys.argv[1], np.random.default_rng(0)
    w = lambda *s: 0.2 * rng.standard_normal(s)
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W1", w(16, 3, 3, 3)), ("B1", np.zeros(16)), ("W2", w(16, 16, 3, 3)), ("B2", np.zeros(16)),
        ("FW", w(10, 16)), ("FB", np.zeros(10)))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "FW", "FB"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "busy", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              [1, 3, 64, 64])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                              [1, 10])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, out)
"""
MAKE_OV = """
    import sys, numpy as np, openvino as ov, openvino.opset13 as ops
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 32, 32], np.float32, name="x")
    c = ops.relu(ops.convolution(x, ops.constant((0.2 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32)),
                                 [1, 1], [1, 1], [1, 1], [1, 1]))
    g = ops.reduce_mean(c, ops.constant(np.array([2, 3], dtype=np.int64)), keep_dims=False)
    y = ops.matmul(g, ops.constant((0.2 * rng.standard_normal((8, 10))).astype(np.float32)), False, False)
    ov.save_model(ov.Model([y], [x], "toy"), sys.argv[1], compress_to_fp16=False)
"""
BUSY_LOOP = ("import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
             "end = time.monotonic() + float(sys.argv[2])\nwhile time.monotonic() < end:\n    pass\n")


def _manifest(folder: Path, fmt: str, rel: str) -> None:
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "model": folder.name, "artifacts": [
        {"format": fmt, "precision": "fp32", "path": rel}]}))


@pytest.fixture(scope="module")
def onnx_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("toys") / "busytoy"
    folder.mkdir()
    subprocess.run([sys.executable, "-c", textwrap.dedent(MAKE_ONNX), str(folder / "m.onnx")], check=True,
                   timeout=120)
    _manifest(folder, "onnx", "m.onnx")
    return folder


def busy_on(core: int, seconds: float = 120.0) -> subprocess.Popen:
    """A Python busy loop pinned to ``core``, ending by itself after ``seconds`` (bounded)."""
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(core), str(seconds)])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()  # by its pid: only the process this test started
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------
# the rules, on timings of a known shape
# ------------------------------------------------------------------------------------------------
def quiet_timings(n: int = 1000, seed: int = 0) -> np.ndarray:
    return (1_000_000 + np.random.default_rng(seed).normal(0, 10_000, n)).astype(np.int64)


def test_quiet_timings_are_stable() -> None:
    v = assess(quiet_timings(), context={"wall_ns": 10**9, "run_delay_ns": 10**6, "busy": []})
    assert (v.status, v.reasons) == (STABLE, ())
    assert v.metrics["windows"] == 10 and v.metrics["window_spread_pct"] < 5
    assert window_medians(quiet_timings(40)).size == 8 and window_medians(quiet_timings(9)).size == 0


def test_each_check_says_why() -> None:
    t = quiet_timings()
    shifted = t.copy()
    shifted[300:400] *= 2  # one window twice as slow: another job took the core for a while
    v = assess(shifted)
    assert v.status == NOISY and re.match(r"window medians vary by (99|100|101) % \(10 windows", v.reasons[0])
    spiky = t.copy()
    spiky[::10] *= 3  # every tenth run preempted
    v = assess(spiky)
    assert v.status == NOISY and "10.0 % of the runs are outliers (over 1.5x the median)" in v.reasons
    v = assess(t, context={"wall_ns": 10**9, "run_delay_ns": 4 * 10**8})
    assert v.reasons == ("the worker waited for its core 40 % of the timed loop (another task was runnable there)",)
    v = assess(t, context={"cpus": 2, "loadavg_before": [3.5, 1, 1], "loadavg_after": [3.9, 2, 1]})
    assert v.reasons == ("load average 3.9 on 2 CPUs",)  # a device: the worker's own wait is unknown
    v = assess(t, context={"cpus": 2, "loadavg_after": [3.9, 2, 1], "wall_ns": 10**9, "run_delay_ns": 0})
    assert v.status == STABLE  # the host measured its wait: the machine-wide load does not decide
    v = assess(summary={"mean_ms": 1.0, "std_ms": 0.3})
    assert v.reasons == ("std is 30 % of the mean (the runner printed aggregates only)",)
    v = assess(t, context={"governor_before": {"1": "performance"}, "governor_after": {"1": "powersave"}})
    assert v.reasons == ("core 1 governor changed from performance to powersave",)


def test_throttling_needs_a_slower_clock() -> None:
    t = quiet_timings()
    slowing = (t * np.linspace(1.0, 1.5, t.size)).astype(np.int64)  # the device slows down as it heats
    v = assess(slowing, temp_before_c=40.0, temp_after_c=52.0)
    assert v.status == THROTTLED and "the temperature rose 12.0 °C while the runs slowed down" in v.reasons
    assert assess(slowing, temp_before_c=40.0, temp_after_c=40.5).status == NOISY  # drift alone: noise
    v = assess(t, context={"freq_khz_before": {"7": 3000000}, "freq_khz_after": {"7": 1800000}})
    assert (v.status, v.reasons) == (THROTTLED, ("core 7 clock fell from 3000 to 1800 MHz",))


def test_busy_tasks_from_two_snapshots() -> None:
    before = {10: (10, "python", 1, 100), 11: (10, "python", 1, 50), 12: (12, "sshd", 0, 7),
              13: (13, "bench", 1, 0), 15: (15, "python", 1, 0)}
    after = {10: (10, "python", 1, 140), 11: (10, "python", 1, 60), 12: (12, "sshd", 0, 90),
             13: (13, "bench", 1, 100), 14: (14, "new", 1, 90), 15: (15, "python", 1, 30)}
    got = busy_tasks(before, after, cores=[1], wall_ns=10**9, clk_tck=100, exclude=[13])
    assert got == [{"pid": 10, "comm": "python", "core": 1, "share_pct": 50.0},  # 40 + 10 ticks of 100
                   {"pid": 15, "comm": "python", "core": 1, "share_pct": 30.0}]  # same name, another process


# ------------------------------------------------------------------------------------------------
# provoked for real
# ------------------------------------------------------------------------------------------------
def test_busy_process_on_the_pinned_core_is_not_stable(onnx_toy: Path, tmp_path: Path) -> None:
    core = max(os.sched_getaffinity(0))
    db = tmp_path / "r.db"
    proc = busy_on(core)
    try:
        time.sleep(0.3)  # the loop is running
        r = CliRunner().invoke(bench, ["--artifacts", str(onnx_toy), "--runtime", "onnxruntime", "--runs", "800",
                                       "--warmup", "20", "--core", str(core), "--until-stable", "2", "--tag", "busy",
                                       "--db", str(db), "--json"], catch_exceptions=False)
        busy_pid = proc.pid
    finally:
        stop(proc)
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]  # the accepted repeat only
    assert res["verdict"] in (NOISY, THROTTLED) and res["cores"] == str(core)
    text = "; ".join(res["verdict_reasons"])
    assert f"pid {busy_pid} (python" in text and "waited for its core" in text, text
    assert "is noisy: " in r.stderr and "edgeconv: warning: onnxruntime fp32" in r.stderr
    assert ", noisy: repeating (repeat 1) (saved)" in r.stderr
    with Store(db) as s:
        runs = s.runs()
        assert [(x["tag"], x["verdict"]) for x in runs] == [("busy", res["verdict"]), ("busy", NOISY)]
        ctx = json.loads(s.conn.execute("SELECT context FROM runs WHERE id = ?", (runs[0]["run_id"],)).fetchone()[0])
        extra = [json.loads(s.conn.execute("SELECT extra FROM runs WHERE id = ?", (x["run_id"],)).fetchone()[0])
                 for x in runs]
    assert [e["repeat"] for e in extra] == [2, 1] and res["repeat"] == 2
    assert ctx["cores"] == [core] and ctx["run_delay_ns"] > 0.05 * ctx["wall_ns"]
    assert any(b["pid"] == busy_pid for b in ctx["busy"]) and ctx["loadavg_before"]
    # peak memory of the host worker: load + inference above what the runtime import holds
    assert res["import_rss_mb"] > 20 and res["mem_mb"] > 0
    assert res["peak_rss_mb"] == pytest.approx(res["import_rss_mb"] + res["mem_mb"], abs=0.02)
    rep = CliRunner().invoke(report, ["--db", str(db)], catch_exceptions=False)
    assert "NOISY (!)" in rep.stdout and "(!) busytoy onnx/fp32 on " in rep.stderr


def test_old_database_gets_verdicts_from_its_timings(tmp_path: Path) -> None:
    from edgeconv.bench.stats import compress_timings

    db = tmp_path / "v1.db"
    c = sqlite3.connect(db)
    for stmt in MIGRATIONS[0]:
        c.execute(stmt)
    c.execute("PRAGMA user_version = 1")
    c.execute("INSERT INTO devices (kind, name, first_seen, last_seen) VALUES ('host', 'h', 'x', 'x')")
    c.execute("INSERT INTO artifacts (model, format, precision, path, sha256, first_seen) "
              "VALUES ('m', 'onnx', 'fp32', 'p', 's', 'x')")
    for i, t in enumerate((quiet_timings(), quiet_timings() * np.r_[np.ones(500), 2 * np.ones(500)])):
        c.execute("INSERT INTO runs (device_id, artifact_id, runtime, threads, warmup, runs_requested, runs_actual,"
                  " finished_at, status) VALUES (1, 1, 'onnxruntime', 1, 5, 1000, 1000, ?, 'ok')", (f"t{i}",))
        c.execute("INSERT INTO run_stats (run_id, median_ms, timings) VALUES (?, 1, ?)",
                  (i + 1, compress_timings(t.astype(np.int64))))
    c.commit()
    c.close()
    with Store(db) as s:
        assert s.schema_version() == SCHEMA_VERSION
        runs = {r["run_id"]: r for r in s.runs()}
    assert runs[1]["verdict"] == STABLE and runs[2]["verdict"] == NOISY
    assert runs[2]["verdict_reasons"][0].startswith("window medians vary by")
    assert runs[1]["verdict_reasons"][-1].startswith("judged from the timings alone when the database was upgraded")
    assert runs[1]["tag"] is None and runs[1]["mem_mb"] is None


def test_peak_memory_on_an_emulated_phone(adb_device: EmulatedDevice, adb_server, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """The Python runner reports its VmHWM as benchmark_model's peak-memory line; stored and shown."""
    for key in ("ANDROID_ADB_SERVER_PORT", "HOME", "ANDROID_USER_HOME", "ADB_MDNS", "ADB_MDNS_AUTO_CONNECT",
                "ADB_LOCAL_TRANSPORT_MAX_PORT", "ADB"):
        monkeypatch.setenv(key, adb_server.env[key])
    monkeypatch.delenv("EDGECONV_DEVICES", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ovtoy"
    (folder / "openvino").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", textwrap.dedent(MAKE_OV), str(folder / "openvino" / "fp32.xml")],
                   check=True, timeout=120)
    _manifest(folder, "openvino", "openvino/fp32.xml")
    db = tmp_path / "r.db"
    r = CliRunner().invoke(bench, ["--device", "android", "--serial", adb_device.serial, "--artifacts", str(folder),
                                   "--runtime", "openvino", "--runner", "python", "--runs", "30", "--warmup", "2",
                                   "--cooldown", "0", "--db", str(db), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert res["peak_rss_mb"] > 20 and res["mem_mb"] > 0 and res["verdict"] in (STABLE, NOISY)
    assert res["import_rss_mb"] == pytest.approx(res["peak_rss_mb"] - res["mem_mb"], abs=0.02)
    with Store(db) as s:
        (run,) = s.runs()
        log = s.conn.execute("SELECT raw_log, context FROM runs WHERE id = ?", (run["run_id"],)).fetchone()
    assert (run["peak_rss_mb"], run["mem_mb"]) == (res["peak_rss_mb"], res["mem_mb"])
    assert f"Overall peak memory footprint (MB) via periodic monitoring: {res['peak_rss_mb']:g}" in log[0]
    ctx = json.loads(log[1])
    assert ctx["freq_khz_before"] == ctx["freq_khz_after"] == {"7": 3000000}  # the emulator's big core
    assert ctx["governor_after"] == {"7": "schedutil"} and len(ctx["loadavg_after"]) == 3
    table = CliRunner().invoke(bench, ["--device", "android", "--serial", adb_device.serial, "--artifacts",
                                       str(folder), "--runtime", "openvino", "--runner", "python", "--runs", "30",
                                       "--warmup", "2", "--cooldown", "0", "--until-stable", "2", "--db", str(db)],
                               catch_exceptions=False)
    assert table.exit_code == 0 and "mem MB" in table.stdout and "verdict" in table.stdout
    with Store(db) as s:  # --until-stable on a device: a second repeat only when the first was not stable
        runs = s.runs()[:-1][::-1]
        repeats = [json.loads(s.conn.execute("SELECT extra FROM runs WHERE id = ?", (x["run_id"],)).fetchone()[0])
                   ["repeat"] for x in runs]
    assert repeats == ([1] if runs[0]["verdict"] == STABLE else [1, 2])
