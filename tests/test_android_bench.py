"""`edgeconv bench --device android|board|PROFILE` end to end, without a phone: emulated ADB devices
(tests/adb_emulator.py) reached by the real adb client on loopback, the device-side runner being
`python -m edgeconv.runner` pushed as a zip, real TFLite inference of tinynet-e, results in SQLite.

Every failure the flow promises to name is provoked for real: no device, unauthorized, offline,
unreachable, runner missing, wrong ABI, profile ABI mismatch, no space, full disk, a device lost
mid-run (back, and gone for good), a disconnect during a push, a killed runner (truncated output)
and benchmark_model's --max_secs cutting a run short.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from click.testing import CliRunner

from edgeconv.bench.adb import Adb
from edgeconv.bench.android import DeviceSession, RemoteOptions, parse_temperature
from edgeconv.bench.run import run_bench
from edgeconv.cli.bench import bench
from edgeconv.cli.results import report
from edgeconv.devices import load_profile
from edgeconv.store import Store
from tests.adb_emulator import LEGACY_FEATURES, free_tcp_port

if TYPE_CHECKING:
    from tests.adb_emulator import IsolatedAdbServer
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]

REPO = Path(__file__).resolve().parents[1]
FAST = ["--runs", "20", "--warmup", "2", "--precisions", "int8"]
MAKE_OV = """
import sys, numpy as np, openvino as ov, openvino.opset13 as ops
rng = np.random.default_rng(0)
x = ops.parameter([1, 3, 16, 16], np.float32, name="x")
c = ops.relu(ops.convolution(x, ops.constant((0.2 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32)),
                             [2, 2], [0, 0], [0, 0], [1, 1]))
g = ops.reduce_mean(c, ops.constant(np.array([2, 3], dtype=np.int64)), keep_dims=False)
y = ops.matmul(g, ops.constant((0.2 * rng.standard_normal((8, 10))).astype(np.float32)), False, False)
ov.save_model(ov.Model([y], [x], "toy"), sys.argv[1], compress_to_fp16=False)
"""


@pytest.fixture(scope="session")
def tinynet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tinynet-e's TFLite fp32 + int8 build, made once per session (also used by test_runner.py)."""
    out = tmp_path_factory.getbasetemp() / "tinynet-build"
    if not (out / "tinynet-e" / "manifest.json").is_file():
        from edgeconv.build import build

        build("tinynet-e", formats="tflite", precisions="fp32,int8", out=out, calib_size=16)
    return out / "tinynet-e"


@pytest.fixture
def adb_env(adb_server: IsolatedAdbServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This process talks to the test adb server (never the user's), from an empty folder (no
    ./devices, no ./runners); returns the results database path."""
    for key in ("ANDROID_ADB_SERVER_PORT", "HOME", "ANDROID_USER_HOME", "ADB_MDNS", "ADB_MDNS_AUTO_CONNECT",
                "ADB_LOCAL_TRANSPORT_MAX_PORT", "ADB"):
        monkeypatch.setenv(key, adb_server.env[key])
    monkeypatch.delenv("EDGECONV_DEVICES", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results.db"


def cli(db: Path, *args: str):
    return CliRunner().invoke(bench, [*args, "--db", str(db)], catch_exceptions=False)


def base(tinynet: Path, *serials: str) -> list[str]:
    return ["tinynet-e", "--device", "android", *(a for s in serials for a in ("--serial", s)),
            "--out", str(tinynet.parent), "--runner", "python", "--cooldown", "0"]


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def runs_in(db: Path) -> list[dict]:
    with Store(db) as s:
        return s.runs()


def extra_of(db: Path, run_id: int) -> dict:
    with Store(db) as s:
        return json.loads(s.conn.execute("SELECT extra FROM runs WHERE id = ?", (run_id,)).fetchone()[0])


def write_profile(folder: Path, name: str = "test-phone", **fields) -> Path:
    data = {"name": name, "kind": "android", "runners": {"tflite": {"arm64-v8a": "python"}}, "cooldown": 0,
            **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def when_running(dev: EmulatedDevice, action: Callable[[], None], after_s: float, needle: str = "--graph=",
                 timeout: float = 60) -> threading.Thread:
    """Run ``action`` ``after_s`` seconds after the device starts the runner (a shell with ``needle``)."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in s for s in list(dev.emulator.opened_services)):
                time.sleep(after_s)
                action()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def script_runner(folder: Path, body: str) -> Path:
    """A runner *script* (no ELF header, so no ABI check), as a user's wrapper around a runner."""
    path = folder / "runner.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


# ------------------------------------------------------------------------------------------------
# it works
# ------------------------------------------------------------------------------------------------
def test_acceptance_1000_runs_on_an_emulated_phone(tinynet: Path, adb_device: EmulatedDevice,
                                                   adb_env: Path) -> None:
    """`edgeconv bench tinynet-e --device android --serial 127.0.0.1:PORT`: 1000 timed runs per
    artifact, pinned to the big core, stored with device info, shown by `edgeconv report`."""
    serial = adb_device.serial
    args = ["tinynet-e", "--device", "android", "--serial", serial, "--out", str(tinynet.parent),
            "--precisions", "fp32,int8", "--runner", "python", "--json"]  # profile cooldown: 30 s max
    started = time.monotonic()
    r = cli(adb_env, *args)
    wall = time.monotonic() - started
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    device = out["device"]
    assert (device["kind"], device["name"], device["serial"]) == ("android", "Emulated Phone", serial)
    assert (device["soc"], device["abi"], device["os_version"]) == ("SM8550", "arm64-v8a", "Android 14 (API 34)")
    assert device["clusters_text"] == "4x1.80 + 3x2.40 + 1x3.00 GHz" and device["profile"] == "generic-android"
    assert [(x["precision"], x["status"], x["runs"], x["cores"]) for x in out["results"]] == [
        ("fp32", "ok", 1000, "7"), ("int8", "ok", 1000, "7")]
    for x in out["results"]:
        assert 0 < x["min_ms"] <= x["median_ms"] <= x["p99_ms"] <= x["max_ms"] < 1000
        assert x["temp_before_c"] == x["temp_after_c"] == 35.0
        assert x["runtime_version"].startswith("ai-edge-litert ")
        # the emulated phone runs the host's own LiteRT: its outputs are the host's, bit for bit
        assert (x["parity"]["status"], x["parity"]["max_abs_diff"], x["parity"]["top1_agreement"]) == ("ok", 0.0, 1.0)
    assert wall < 60
    with Store(adb_env) as s:
        runs = s.runs()
        assert {(r["runs_actual"], r["device_kind"], r["device_serial"]) for r in runs} == {(1000, "android", serial)}
        assert all(len(s.timings(r["run_id"])) == 1000 for r in runs)
        log = s.conn.execute("SELECT raw_log FROM runs WHERE id = ?", (runs[0]["run_id"],)).fetchone()[0]
    assert "Inference timings in us: Init: " in log and "count=1000 " in log
    assert "Per-run timings in ns: (stored as timings)" in log and len(log) < 20_000
    extra = extra_of(adb_env, runs[-1]["run_id"])  # fp32, the first run
    # the parity inputs (8 preprocessed calibration photos) go once per model, like the runner
    assert extra["mask"] == "80" and extra["pushed"] == ["edgeconv-runner.zip", "fp32.tflite",
                                                         "parity-tinynet-e-106.npy"]
    assert extra["command"].startswith("taskset 80 env PYTHONPATH=/data/local/tmp/edgeconv/edgeconv-runner.zip ")
    for flag in ("--graph=/data/local/tmp/edgeconv/models/tinynet-e-fp32.tflite", "--num_threads=1",
                 "--num_runs=1000", "--warmup_runs=50", "--min_secs=0", "--max_secs=3600", "--use_xnnpack=true"):
        assert f" {flag} " in f" {extra['command']} "
    assert extra_of(adb_env, runs[0]["run_id"])["pushed"] == ["int8.tflite"]  # the zip was already there
    assert adb_device.device_path("/data/local/tmp/edgeconv/models/tinynet-e-int8.tflite").read_bytes() == \
        (tinynet / "tflite" / "int8.tflite").read_bytes()

    again = cli(adb_env, *args[:-1], "--precisions", "int8", "--runs", "50")  # unchanged files: no push
    assert again.exit_code == 0, again.stderr
    assert extra_of(adb_env, runs_in(adb_env)[0]["run_id"])["pushed"] == []
    rep = CliRunner().invoke(report, ["--device", serial, "--db", str(adb_env), "--json"], catch_exceptions=False)
    rows = json.loads(rep.stdout)
    # the emulator's uname says aarch64 but its shell is x86-64 code: never shown as a real phone
    assert [(x["precision"], x["device"], x["runs"]) for x in rows] == [
        ("fp32", "Emulated Phone (emulated)", 1000), ("int8", "Emulated Phone (emulated)", 50)]
    assert device["emulated"] is True and device["emulation"].startswith("uname -m says aarch64 but its shell")


def test_two_devices_run_in_parallel(tinynet: Path, make_adb_device: Callable[..., EmulatedDevice],
                                     adb_env: Path) -> None:
    """`--device android` with two devices attached: one worker each, at the same time."""
    phones = [make_adb_device(props={"ro.product.model": f"Phone {i}", "ro.serialno": f"EMU{i}"}) for i in (1, 2)]
    r = cli(adb_env, *base(tinynet), "--precisions", "fp32,int8", "--runs", "300", "--warmup", "5", "--json")
    assert r.exit_code == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert sorted((x["device"], x["precision"], x["status"], x["runs"]) for x in results) == [
        ("Phone 1", "fp32", "ok", 300), ("Phone 1", "int8", "ok", 300),
        ("Phone 2", "fp32", "ok", 300), ("Phone 2", "int8", "ok", 300)]
    spans = {}
    for run in runs_in(adb_env):
        first, last = spans.get(run["device_serial"], (run["started_at"], run["finished_at"]))
        spans[run["device_serial"]] = (min(first, run["started_at"]), max(last, run["finished_at"]))
    (a_start, a_end), (b_start, b_end) = (spans[p.serial] for p in phones)
    assert a_start < b_end and b_start < a_end  # the two devices' benchmarks overlapped in time
    assert "[4/4]" in r.stderr


def test_legacy_device_without_shell_v2(tinynet: Path, make_adb_device: Callable[..., EmulatedDevice],
                                        adb_env: Path) -> None:
    """A pre-Android-7 device: shell v1 (exit codes from a marker), push without sendrecv_v2."""
    old = make_adb_device(features=LEGACY_FEATURES, props={"ro.build.version.release": "6.0",
                                                           "ro.build.version.sdk": "23"})
    r = cli(adb_env, *base(tinynet, old.serial), *FAST, "--json")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"]) == ("ok", 20)
    assert json.loads(r.stdout)["device"]["os_version"] == "Android 6.0 (API 23)"


def test_linux_board_with_a_profile_and_hostile_paths(tinynet: Path, make_adb_device: Callable[..., EmulatedDevice],
                                                      adb_env: Path, tmp_path: Path) -> None:
    """A board (no getprop) reached through a profile's `transport.connect`, with a work dir full
    of shell metacharacters: every argument reaches the device literally."""
    board = make_adb_device(connect=False)
    board.device_path("/system/bin/getprop").unlink()
    workdir = "/data/local/tmp/edge conv's $(touch pwned) `touch pwned2`; ls >pwned3 & \"x\""
    profile = write_profile(tmp_path, "my-board", kind="board", abi="arm64-v8a", workdir=workdir, cores="all",
                            transport={"connect": board.serial})
    r = cli(adb_env, "tinynet-e", "--device", str(profile), "--out", str(tinynet.parent), *FAST, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["device"]["kind"] == "board" and out["device"]["profile"] == "my-board"
    assert out["device"]["abi"] == "arm64-v8a" and out["device"]["os_version"]  # from /etc/os-release
    assert out["results"][0]["cores"] == "0-7" and out["results"][0]["status"] == "ok"
    assert board.device_path(workdir + "/models/tinynet-e-int8.tflite").is_file()
    assert not [p for p in board.root.rglob("pwned*")]  # the shell's working folder is the device root
    assert runs_in(adb_env)[0]["device_kind"] == "board"


def test_benchmark_model_style_runner_stores_its_aggregates(tinynet: Path, adb_device: EmulatedDevice,
                                                             adb_env: Path, tmp_path: Path) -> None:
    """A runner binary reports aggregates only (like benchmark_model): stored as printed, with the
    verified run count, no invented per-run timings."""
    runner = script_runner(tmp_path, 'exec python3 -m edgeconv.runner "$@"')
    args = base(tinynet, adb_device.serial)
    args[args.index("python")] = str(runner)
    r = cli(adb_env, *args, *FAST, "--json")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"], res["p90_ms"], res["p99_ms"]) == ("ok", 20, None, None)
    assert 0 < res["min_ms"] <= res["median_ms"] <= res["max_ms"] and res["mean_ms"] > 0
    pushed = adb_device.device_path("/data/local/tmp/edgeconv/bin/runner.sh")
    assert pushed.read_bytes() == runner.read_bytes() and pushed.stat().st_mode & 0o777 == 0o755
    (run,) = runs_in(adb_env)
    assert (run["runs_actual"], run["mean_ms"], run["p90_ms"]) == (20, res["mean_ms"], None)
    with Store(adb_env) as s:
        assert len(s.timings(run["run_id"])) == 0
    assert run["runtime_version"].startswith("ai-edge-litert ")  # our runner names its runtime
    assert "--report_run_timings" not in extra_of(adb_env, run["run_id"])["command"]  # not benchmark_model's
    # benchmark_model cannot write its outputs: no parity inputs pushed, the check is "not checked"
    assert (run["parity"], res["parity"]["status"]) == ("not checked", "not checked")
    assert res["parity"]["reason"].startswith("benchmark_model has no flag that writes its outputs")
    assert "--parity_inputs" not in extra_of(adb_env, run["run_id"])["command"]


def test_openvino_with_benchmark_app_and_with_the_python_runner(adb_device: EmulatedDevice, adb_env: Path,
                                                                 tmp_path: Path) -> None:
    """OpenVINO IR: the real benchmark_app (here the pip package's, "already on the board") and the
    edgeconv runner, which runs .xml through edgeconv.runtimes."""
    import sys

    folder = tmp_path / "toy"
    (folder / "openvino").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", MAKE_OV, str(folder / "openvino" / "fp32.xml")], check=True, timeout=120)
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "model": "toy", "artifacts": [
        {"format": "openvino", "precision": "fp32", "path": "openvino/fp32.xml"}]}))
    app = Path(sys.executable).parent / "benchmark_app"
    common = ["--device", "android", "--serial", adb_device.serial, "--artifacts", str(folder), "--runtime",
              "openvino", "--runs", "30", "--warmup", "2", "--cooldown", "0", "--json"]
    r = cli(adb_env, *common, "--runner", f"device:{app}")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"], res["runtime_version"]) == ("ok", 30, str(app))
    assert 0 < res["min_ms"] <= res["median_ms"] <= res["max_ms"]
    assert adb_device.device_path("/data/local/tmp/edgeconv/models/toy-fp32.bin").is_file()
    r = cli(adb_env, *common, "--runner", "python")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"]) == ("ok", 30) and res["runtime_version"].startswith("openvino ")


def test_cooldown_waits_for_the_idle_temperature(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    """Between artifacts: back within cooldown_margin_c of the temperature before the first run, at
    most `cooldown` seconds; without a thermal zone a plain pause."""
    zone = adb_device.device_path("/sys/class/thermal/thermal_zone0/temp")
    slept: list[float] = []

    def cooling_sleep(seconds: float) -> None:  # time passes: the phone cools by 3 °C per call
        slept.append(seconds)
        if zone.exists():
            zone.write_text(str(int(zone.read_text()) - 3000))
        time.sleep(0.01)

    profile = load_profile(write_profile(tmp_path, cooldown=20, cooldown_margin_c=2))
    session = DeviceSession(Adb(env=adb_device.env), adb_device.serial, profile, RemoteOptions(), [], None,
                            lambda *a, **k: None, sleep=cooling_sleep)
    session.setup()
    assert session.idle_c == 35.0 and session.zones == ["/sys/class/thermal/thermal_zone0/temp"]
    assert session.cooldown() == {}  # nothing to wait for before the first run
    session.benchmarked = 1
    zone.write_text("47000")
    done = session.cooldown()
    assert done["cooldown"] == "back near idle" and len(slept) == 4 and int(zone.read_text()) == 35000
    zone.write_text("90000")
    session.opts.cooldown = 0.3
    assert session.cooldown()["cooldown"].startswith("still ")  # gave up after 0.3 s, still hot
    shutil.rmtree(adb_device.device_path("/sys/class/thermal"))
    session.setup()
    slept.clear()
    assert session.idle_c is None
    assert session.cooldown() == {"cooldown_s": 0.3, "cooldown": "fixed pause (no thermal zone)"}
    assert slept == [0.3]
    assert parse_temperature("41200\n-\n38\n") == 41.2


# ------------------------------------------------------------------------------------------------
# failures: one line each, stored as failed runs, never a number
# ------------------------------------------------------------------------------------------------
def assert_failed(db: Path, r, message: str | re.Pattern[str], count: int = 1) -> list[dict]:
    assert r.exit_code == 1
    line = error_line(r)
    runs = runs_in(db)
    assert len(runs) == count and {x["status"] for x in runs} == {"failed"}
    assert {x["median_ms"] for x in runs} == {None} and {x["runs_actual"] for x in runs} == {0}
    for run in runs:
        if isinstance(message, str):
            assert run["error"] == message, run["error"]
        else:
            assert message.fullmatch(run["error"]), run["error"]
        assert run["error"] in line and "\n" not in run["error"]
    return runs


def test_no_device_attached(tinynet: Path, adb_env: Path) -> None:
    r = cli(adb_env, *base(tinynet), *FAST)
    assert r.exit_code == 1
    assert r.stderr == ("edgeconv: error: no Android device is connected (`adb devices` lists none): plug one "
                        "in with USB debugging on, or `adb connect HOST:PORT`\n")


@pytest.mark.parametrize("state, message", [
    ("unauthorized", "device {s} is unauthorized: unlock it and accept 'Allow USB debugging'"),
    ("offline", "device {s} is offline: reconnect it, or run `adb reconnect`"),
])
def test_unauthorized_and_offline_devices(tinynet: Path, make_adb_device: Callable[..., EmulatedDevice],
                                          adb_env: Path, state: str, message: str) -> None:
    dev = make_adb_device(state=state, connect=False)
    # `adb connect` to a device that never finishes the handshake waits 10 s; adb lists it at once
    connecting = subprocess.Popen([dev.server.adb, "connect", dev.serial], env=dev.env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dev.server.wait_for_state(dev.serial, state, timeout=10)
        r = cli(adb_env, *base(tinynet), "--precisions", "fp32,int8")  # no --serial: what adb lists
    finally:
        connecting.kill()
        connecting.wait(timeout=10)
    runs = assert_failed(adb_env, r, message.format(s=dev.serial), count=2)
    assert {(x["device_kind"], x["device"], x["device_serial"]) for x in runs} == {("android", dev.serial, dev.serial)}
    assert error_line(r).startswith("edgeconv: error: 2 of 2 benchmarks failed; ")


def test_unreachable_address(tinynet: Path, adb_env: Path) -> None:
    address = f"127.0.0.1:{free_tcp_port()}"
    r = cli(adb_env, *base(tinynet, address), *FAST)
    assert_failed(adb_env, r, re.compile(rf"cannot connect to {re.escape(address)}: .*"))


def test_runner_missing_says_where_benchmark_model_comes_from(tinynet: Path, adb_device: EmulatedDevice,
                                                               adb_env: Path) -> None:
    args = base(tinynet, adb_device.serial)
    del args[args.index("--runner"):args.index("--runner") + 2]  # the generic profile's runners/... path
    r = cli(adb_env, *args, *FAST)
    (run,) = assert_failed(adb_env, r, re.compile(r"runner runners/android_aarch64_benchmark_model not found: .*"))
    for part in ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/"
                 "nightly/latest/android_aarch64_benchmark_model", "--runner PATH",
                 f"runners.tflite.arm64-v8a in {REPO / 'devices' / 'generic-android.yaml'}", "--runner python"):
        assert part in run["error"]


def test_wrong_abi_runner_and_profile(tinynet: Path, make_adb_device: Callable[..., EmulatedDevice],
                                      adb_env: Path, tmp_path: Path) -> None:
    phone = make_adb_device(props={"ro.product.cpu.abilist": "arm64-v8a"})  # no 32-bit support
    host_binary = os.path.realpath(shutil.which("true"))
    r = cli(adb_env, *base(tinynet, phone.serial)[:-4], "--cooldown", "0", "--runner", host_binary, *FAST)
    assert_failed(adb_env, r, f"runner {Path(host_binary).name} is built for x86-64 (x86_64), but {phone.serial} "
                  "runs arm64-v8a: use the android_aarch64_benchmark_model build")
    arm32 = tmp_path / "android_arm_benchmark_model"  # an ARM 32-bit ELF header, as the nightly's
    arm32.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + (40).to_bytes(2, "little")
                      + bytes(32))
    r = cli(adb_env, *base(tinynet, phone.serial)[:-4], "--cooldown", "0", "--runner", str(arm32), *FAST)
    assert r.exit_code == 1
    assert runs_in(adb_env)[0]["error"] == (f"runner android_arm_benchmark_model is built for arm 32-bit "
                                            f"(armeabi-v7a), but {phone.serial} runs arm64-v8a: use the "
                                            "android_aarch64_benchmark_model build")
    assert not phone.device_path("/data/local/tmp/edgeconv/bin").exists()  # nothing was pushed
    profile = write_profile(tmp_path, "x86-tablet", abi="x86_64")
    r = cli(adb_env, "tinynet-e", "--device", str(profile), "--serial", phone.serial, "--out",
            str(tinynet.parent), *FAST)
    assert r.exit_code == 1
    assert runs_in(adb_env)[0]["error"] == f"profile x86-tablet is for x86_64, but {phone.serial} runs arm64-v8a"


def test_no_space_left(tinynet: Path, adb_device: EmulatedDevice, adb_env: Path) -> None:
    adb_device.emulator.set_free_bytes(1_000_000)
    r = cli(adb_env, *base(tinynet, adb_device.serial), *FAST)
    assert_failed(adb_env, r, re.compile(rf"not enough space on {re.escape(adb_device.serial)}: 4\.\d MB needed "
                                         r"in /data/local/tmp/edgeconv, 1\.0 MB free"))
    adb_device.emulator.set_free_bytes(None)
    adb_device.emulator.disk_full = True  # df says there is room, the write fails anyway
    r = cli(adb_env, *base(tinynet, adb_device.serial), *FAST)
    assert r.exit_code == 1
    error = runs_in(adb_env)[0]["error"]
    assert re.fullmatch(rf"no space left on {re.escape(adb_device.serial)} during `push .*`", error)


def test_device_lost_mid_run_is_reconnected_and_retried_once(tinynet: Path, adb_device: EmulatedDevice,
                                                             adb_env: Path, tmp_path: Path) -> None:
    profile = write_profile(tmp_path, runner_args={"tflite": ["--run_delay=0.002"]})  # ~2.5 s of runs
    args = ["tinynet-e", "--device", str(profile), "--serial", adb_device.serial, "--out", str(tinynet.parent),
            "--precisions", "int8", "--runs", "1000", "--warmup", "2", "--json"]
    when_running(adb_device, adb_device.emulator.kill_connections, after_s=1.5)  # adb re-attaches it
    r = cli(adb_env, *args)
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"]) == ("ok", 1000)
    # adb either reports the lost transport (exit 255, device offline) or exits as if the command
    # ended; then only the missing final timings line tells
    why = extra_of(adb_env, res["run_id"])["retried_after"]
    assert why.startswith(f"lost the connection to {adb_device.serial} during `sh -c") or \
        why == "edgeconv.runner's output stops before its final timings line (exit code 255)"
    assert f"edgeconv: warning: {adb_device.serial}: {why}; reconnecting and retrying tflite int8 once" in r.stderr


def test_device_lost_for_good_mid_run(tinynet: Path, adb_device: EmulatedDevice, adb_env: Path) -> None:
    when_running(adb_device, lambda: adb_device.emulator.kill_connections(refuse_new=True), after_s=0.5)
    with Store(adb_env) as store:
        _, outcomes = run_bench("tinynet-e", "android", serials=[adb_device.serial], out=tinynet.parent,
                                precisions=["int8"], runs=100000, warmup=1, runner="python", cooldown=0,
                                store=store, reconnect_timeout=2)
    (o,) = outcomes
    assert o.run.status == "failed" and o.run.timings_ns is None
    assert re.fullmatch(rf"lost the connection to {re.escape(adb_device.serial)} during `sh -c .*`; "
                        rf"{re.escape(adb_device.serial)} did not come back within 2 s", o.run.error)
    assert runs_in(adb_env)[0]["status"] == "failed"


def test_disconnect_during_push(tinynet: Path, adb_device: EmulatedDevice, adb_env: Path) -> None:
    """The link drops 1 MB into the model push (the 2.3 MB int8 file) and comes back a second later:
    reconnected, pushed again and verified by sha256; when it does not come back, a failed run."""
    emu = adb_device.emulator

    def come_back() -> None:
        deadline = time.monotonic() + 30
        while not emu.refuse_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)
        emu.refuse_connections = False

    emu.reset_byte_count()
    emu.drop_after_bytes = 1_000_000
    threading.Thread(target=come_back, daemon=True).start()
    r = cli(adb_env, *base(tinynet, adb_device.serial), *FAST, "--json")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert res["status"] == "ok"
    assert "during `push int8.tflite to /data/local/tmp/edgeconv/models/tinynet-e-int8.tflite`" in r.stderr
    assert adb_device.device_path("/data/local/tmp/edgeconv/models/tinynet-e-int8.tflite").read_bytes() == \
        (tinynet / "tflite" / "int8.tflite").read_bytes()

    shutil.rmtree(adb_device.device_path("/data/local/tmp/edgeconv/models"))
    emu.reset_byte_count()
    emu.drop_after_bytes = 1_000_000  # and this time it stays away
    with Store(adb_env) as store:
        _, (o,) = run_bench("tinynet-e", "android", serials=[adb_device.serial], out=tinynet.parent,
                            precisions=["int8"], runs=20, warmup=1, runner="python", cooldown=0, store=store,
                            reconnect_timeout=2)
    assert o.run.status == "failed"
    assert o.run.error == (f"lost the connection to {adb_device.serial} during `push int8.tflite to "
                           f"/data/local/tmp/edgeconv/models/tinynet-e-int8.tflite`; {adb_device.serial} did not "
                           "come back within 2 s")


def test_killed_runner_is_truncated_output(tinynet: Path, adb_device: EmulatedDevice, adb_env: Path,
                                           tmp_path: Path) -> None:
    """The kernel kills the runner mid-run (here: its CPU-time limit; `ulimit -t` sets the hard limit
    too, so SIGKILL): partial output is never a result."""
    runner = script_runner(tmp_path, 'ulimit -t 3\nexec python3 -m edgeconv.runner "$@"')
    args = base(tinynet, adb_device.serial)
    args[args.index("python")] = str(runner)
    r = cli(adb_env, *args, "--precisions", "int8", "--runs", "1000000", "--warmup", "1")
    (run,) = assert_failed(adb_env, r, re.compile(r"runner\.sh output truncated: it exited with code 137 "
                                                  r"before its results \(last line: .+\)"))
    with Store(adb_env) as s:  # what the runner printed before it died is kept with the failure
        log, before = s.conn.execute("SELECT raw_log, temp_before_c FROM runs WHERE id = ?",
                                     (run["run_id"],)).fetchone()
    assert "Running benchmark for at least 1000000 iterations" in log and before == 35.0


def test_max_secs_cutting_runs_short_is_a_failure(tinynet: Path, adb_device: EmulatedDevice,
                                                   adb_env: Path) -> None:
    """benchmark_model's --num_runs is a minimum but --max_secs wins: fewer runs than asked fail."""
    r = cli(adb_env, *base(tinynet, adb_device.serial), "--precisions", "int8", "--runs", "100000",
            "--warmup", "1", "--timeout", "0.5")
    (run,) = assert_failed(adb_env, r, re.compile(r"edgeconv\.runner ran \d+ of the 100000 requested runs "
                                                  r"\(stopped by its --max_secs limit\?\)"))
    assert 0 < int(run["error"].split()[2]) < 100000


def test_option_errors_are_one_line_before_touching_adb(tinynet: Path, adb_env: Path) -> None:
    for args, line in [
        (["--runtime", "onnxruntime"], "--device android runs tflite and openvino only, not onnxruntime"),
        (["--core", "3"], "--core is for --device host; on ADB devices use --cores big|little|all|MASK"),
        (["--cores", "fast"], "--cores: must be big, little, all or a hex CPU mask like f0, not 'fast'"),
        (["--cooldown", "-1"], "Invalid value for '--cooldown': -1.0 is not in the range 0<=x<=3600. "
                               "(see 'bench --help')"),
    ]:
        r = cli(adb_env, *base(tinynet), *args)
        code = 2 if line.startswith("Invalid value") else 1  # bounds are usage errors (exit 2)
        assert (r.exit_code, r.stderr) == (code, f"edgeconv: error: {line}\n")
    r = cli(adb_env, "tinynet-e", "--device", "pixel-99", "--out", str(tinynet.parent))
    assert r.stderr.startswith("edgeconv: error: --device pixel-99: not host, android, board or a profile in "
                               "devices/ (profiles: generic-android, generic-arm64-linux, huawei-p40)")
    r = cli(adb_env, "tinynet-e", "--serial", "X", "--out", str(tinynet.parent))
    assert r.stderr == ("edgeconv: error: --serial, --cores, --cooldown and --runner are for ADB devices "
                        "(--device android, board or a profile)\n")
    assert runs_in(adb_env) == []
