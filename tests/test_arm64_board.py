"""`edgeconv bench --device board` on a real arm64 userland: the ADB emulator's arm64 mode runs every
device command inside a Debian arm64 root (tools/arm64_board.py) under proot + qemu-aarch64-static,
so the pushed runner, Python, numpy and the TFLite runtime's NEON kernels are aarch64 code executed
by QEMU. The real adb client talks to it over loopback.

The userland is built once per cache key (a few hundred MB in build/arm64-board, reused across
sessions); tests skip with the reason when proot or qemu-aarch64-static are missing (.ci/run
installs both).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from edgeconv.cli.bench import bench
from edgeconv.cli.results import report, results
from edgeconv.store import Store
from tests.test_android_bench import adb_env, tinynet  # noqa: F401 - session build, adb environment

if TYPE_CHECKING:
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]

RUNS = 30
BOARD_ARGS = ["--device", "board", "--runner", "python", "--runs", str(RUNS), "--warmup", "2",
              "--cooldown", "0"]


@pytest.fixture(scope="session")
def arm64_board() -> Path:
    """The arm64 board folder (root + runtime sites), built or reused once per session."""
    from tools import arm64_board as builder

    missing = builder.tools_missing(for_build=True)
    if missing:
        pytest.skip(f"the arm64 board stand-in needs {', '.join(missing)} "
                    "(apt-get install proot qemu-user-static; .ci/run does)")
    try:
        return builder.build(("litert", "tflite-runtime", "openvino"), log=lambda m: None)
    except builder.BoardError as e:
        pytest.fail(f"building the arm64 userland failed: {e}")


@pytest.fixture
def board(arm64_board: Path, make_adb_device: Callable[..., EmulatedDevice]) -> EmulatedDevice:
    return make_adb_device(arm64=arm64_board)


def cli(db: Path, command, *args: str):
    return CliRunner().invoke(command, [*args, "--db", str(db)], catch_exceptions=False)


def test_the_userland_is_aarch64_code_run_by_qemu(board: EmulatedDevice) -> None:
    """Not a relabelled x86 shell: the device's own binaries are aarch64 ELF files, Python says
    aarch64, and /proc/cpuinfo still describes the x86 host (user-mode emulation)."""
    from edgeconv.bench.adb import Adb

    adb = Adb(env=board.env)
    sh = board.device_path("/bin/dash").read_bytes()[:20]
    assert sh[:4] == b"\x7fELF" and int.from_bytes(sh[18:20], "little") == 183  # EM_AARCH64
    out = adb.shell(board.serial, ["python3", "-c", "import platform, struct; "
                                   "print(platform.machine(), struct.calcsize('P') * 8)"], check=True)
    assert out.stdout.split() == ["aarch64", "64"]
    assert adb.shell(board.serial, ["uname", "-m"], check=True).stdout.strip() == "aarch64"
    assert adb.shell(board.serial, ["getprop"]).exit_code == 127  # a board, not a phone


def test_bench_on_the_arm64_board_stores_aarch64_emulated_runs(tinynet: Path, board: EmulatedDevice,  # noqa: F811
                                                               adb_env: Path) -> None:  # noqa: F811
    """The acceptance run: tinynet-e fp32 and int8 built on the host, `--runs 30` on the stand-in,
    stored with arch aarch64 and `emulated: true`, marked as emulated by results and report."""
    r = cli(adb_env, bench, "tinynet-e", *BOARD_ARGS, "--serial", board.serial, "--out", str(tinynet.parent),
            "--precisions", "fp32,int8", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    device = out["device"]
    assert (device["kind"], device["machine"], device["abi"], device["emulated"]) == \
        ("board", "aarch64", "arm64-v8a", True)
    assert "instruction-set emulation" in device["emulation"] and device["profile"] == "generic-arm64-linux"
    assert device["os_version"] == "Debian GNU/Linux 12 (bookworm)"
    assert [(x["precision"], x["status"], x["runs"], x["cores"]) for x in out["results"]] == [
        ("fp32", "ok", RUNS, "7"), ("int8", "ok", RUNS, "7")]
    for x in out["results"]:
        assert x["runtime_version"].startswith("ai-edge-litert ")
        assert 0 < x["min_ms"] <= x["median_ms"] <= x["max_ms"]
        assert x["emulated"] is True
    # output parity: the 8 fixed inputs computed by the aarch64 kernels vs this host's x86 ones
    fp32, int8 = (x["parity"] for x in out["results"])
    assert (fp32["status"], fp32["inputs"], fp32["top1_agreement"], fp32["quant_step"]) == ("ok", 8, 1.0, None)
    assert fp32["max_abs_diff"] <= 1e-3 * fp32["logit_range"] and fp32["cosine"] > 0.99999
    assert (int8["status"], int8["inputs"], int8["top1_agreement"]) == ("ok", 8, 1.0)
    assert 0 < int8["quant_step"] and int8["max_abs_diff"] <= int8["quant_step"] * (1 + 1e-6)
    with Store(adb_env) as s:
        runs = s.runs()
        (dev,) = s.devices()
    assert {(x["device_kind"], x["device_emulated"], x["runs_actual"], x["parity"], x["parity_top1"])
            for x in runs} == {("board", 1, RUNS, "ok", 1.0)}
    assert json.loads(dev["extra"])["machine"] == "aarch64" and dev["emulated"] == 1
    assert board.device_path("/var/tmp/edgeconv/models/tinynet-e-int8.tflite").read_bytes() == \
        (tinynet / "tflite" / "int8.tflite").read_bytes()
    rep = cli(adb_env, report, "--json")
    assert {row["device"] for row in json.loads(rep.stdout)} == {"edgeconv arm64 stand-in (QEMU) (emulated)"}
    assert all(row["emulated"] for row in json.loads(rep.stdout))
    md = cli(adb_env, report, "--markdown").stdout
    assert md.count("(emulated)") == 2  # one device, shown even though it is the only one
    assert "output vs host" in md.splitlines()[0] and md.count("| ok: top-1 100%, max diff ") == 2
    listed = cli(adb_env, results, "--json")
    assert all(row["device"].endswith("(emulated)") for row in json.loads(listed.stdout))


def test_the_tflite_runtime_module_name(tinynet: Path, arm64_board: Path,  # noqa: F811
                                        make_adb_device: Callable[..., EmulatedDevice],
                                        adb_env: Path) -> None:  # noqa: F811
    """Most boards have `tflite_runtime` (tflite-runtime 2.14, numpy 1.x), not ai-edge-litert. Its
    int8 kernels are not the host's LiteRT's: measured here, its logits are 26 quantization steps
    off (top-1 agreement 5 of 8) on every emulated CPU tried, so the check has to say which runtime
    each side ran."""
    dev = make_adb_device(arm64=arm64_board, arm64_site="tflite-runtime")
    r = cli(adb_env, bench, "tinynet-e", *BOARD_ARGS, "--serial", dev.serial, "--out", str(tinynet.parent),
            "--precisions", "int8", "--runs", "10", "--allow-mismatch", "--json")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"], res["runtime_version"]) == ("ok", 10, "tflite-runtime 2.14.0")
    check = res["parity"]
    assert check["inputs"] == 8 and 0 <= check["top1_agreement"] <= 1 and check["quant_step"] > 0
    if check["status"] == "differs":
        assert check["reason"].endswith("(device runs tflite-runtime 2.14.0, the host ai-edge-litert "
                                        f"{check['reason'].rsplit('ai-edge-litert ', 1)[1]}")
    else:
        assert check["max_abs_diff"] <= check["quant_step"] * (1 + 1e-6)


def test_an_x86_64_runner_is_refused_before_any_push(tinynet: Path, board: EmulatedDevice,  # noqa: F811
                                                     adb_env: Path, tmp_path: Path) -> None:  # noqa: F811
    """The ELF check: a host (x86-64) binary as the board's runner fails with one line, and nothing
    reaches the board."""
    host_binary = tmp_path / "linux_x86_64_benchmark_model"
    shutil.copy(os.path.realpath("/bin/true"), host_binary)
    r = cli(adb_env, bench, "tinynet-e", "--device", "board", "--serial", board.serial, "--runner",
            str(host_binary), "--runs", "5", "--cooldown", "0", "--out", str(tinynet.parent), "--precisions", "int8")
    assert r.exit_code != 0
    assert "runner linux_x86_64_benchmark_model is built for x86-64 (x86_64), but" in r.stderr
    assert "runs arm64-v8a" in r.stderr and "Traceback" not in r.stderr
    assert not [s for s in board.emulator.sync_requests if s.startswith(("SEND", "SND2"))]
    assert not board.device_path("/var/tmp/edgeconv/models").exists()


def test_a_broken_device_runtime_is_caught_by_the_parity_check(tinynet: Path, arm64_board: Path,  # noqa: F811
                                                               make_adb_device: Callable[..., EmulatedDevice],
                                                               adb_env: Path) -> None:  # noqa: F811
    """The board's TFLite runtime returns one wrong logit: the run is stored (its timings are
    real) but marked "output differs from host", and bench exits 1 unless --allow-mismatch."""
    dev = make_adb_device(arm64=arm64_board, corrupt_output=True)
    args = ["tinynet-e", *BOARD_ARGS, "--serial", dev.serial, "--out", str(tinynet.parent), "--precisions", "int8",
            "--runs", "5"]
    r = cli(adb_env, bench, *args)
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgeconv: error: output differs from host ({dev.serial} tflite int8): max |diff| ")
    assert re.search(r"\(1 output quantization step\) at input \d, output 3; top-1 agreement 0%", last)
    assert "--allow-mismatch" in last
    assert "Traceback" not in r.stderr
    (run,) = Store(adb_env).runs()
    assert (run["status"], run["parity"], run["parity_inputs"]) == ("ok", "differs", 8)
    assert run["parity_max_diff"] > 10 * run["parity_step"]
    assert "| output differs from host: top-1 0%, max diff " in cli(adb_env, report, "--markdown").stdout
    accepted = cli(adb_env, bench, *args, "--allow-mismatch", "--json")
    assert accepted.exit_code == 0, accepted.stderr
    assert json.loads(accepted.stdout)["results"][0]["parity"]["status"] == "differs"


def test_openvino_ir_on_the_arm64_board(arm64_board: Path, make_adb_device: Callable[..., EmulatedDevice],
                                       adb_env: Path, tmp_path: Path) -> None:  # noqa: F811
    """The aarch64 openvino wheel runs an IR in the stand-in (ARM CPU plugin, f32), when the board
    shows its real /sys (see adb_emulator: the plugin aborts on the fake 8-core tree), and its
    outputs match this host's."""
    import subprocess
    import sys

    from tests.test_android_bench import MAKE_OV

    folder = tmp_path / "toy"
    (folder / "openvino").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", MAKE_OV, str(folder / "openvino" / "fp32.xml")], check=True, timeout=120)
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "model": "toy", "resolution": 16, "input": {
        "shape": [1, 3, 16, 16], "preprocess": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                                                "crop_fraction": 0.875, "interpolation": "bicubic"}},
        "artifacts": [{"format": "openvino", "precision": "fp32", "path": "openvino/fp32.xml"}]}))
    dev = make_adb_device(arm64=arm64_board, arm64_site="openvino", arm64_sysfs="host")
    r = cli(adb_env, bench, "--device", "board", "--serial", dev.serial, "--artifacts", str(folder), "--runtime",
            "openvino", "--runner", "python", "--runs", "10", "--warmup", "1", "--cooldown", "0", "--json")
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["runs"]) == ("ok", 10) and res["runtime_version"].startswith("openvino 2026.")
    check = res["parity"]
    assert (check["status"], check["inputs"], check["top1_agreement"]) == ("ok", 8, 1.0)
    assert check["max_abs_diff"] <= 1e-3 * check["logit_range"]
