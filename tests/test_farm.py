"""The device farm on real Ray, real adb and the project's emulated devices, on this one machine:
a head and two worker nodes (separate `ray start` processes), each node with its own adb server
and its own emulated device, all inside a network namespace of their own where only 127.0.0.1
exists (tests/farm_scenario.py runs under `unshare -n`). Every Ray process is stopped by the
process id that `farm head`/`farm join` recorded (`farm stop`), never `ray stop`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _netns_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _netns_ok(), reason="the kernel refuses `unshare -n` (needs root) "
                                "or iproute2 is missing: farm tests need a loopback-only network namespace")


@pytest.fixture(scope="module")
def tinynet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.getbasetemp() / "tinynet-build"  # shared with test_android_bench.py
    if not (out / "tinynet-e" / "manifest.json").is_file():
        from edgeconv.build import build

        build("tinynet-e", formats="tflite", precisions="fp32,int8", out=out, calib_size=16)
    return out / "tinynet-e"


def scenario(name: str, tinynet: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ANDROID_ADB"))}
    r = subprocess.run(["unshare", "-n", sys.executable, str(REPO / "tests" / "farm_scenario.py"), name,
                        "--artifacts", str(tinynet), "--work", str(work)], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.stdout.strip(), r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for role in ("head", "host-a", "host-b"):
        assert out.get(role, {}).get("code") == 0, (role, out.get(role), r.stderr[-3000:])
    return out


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "ray" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")


@pytest.fixture(scope="module")
def e2e(tinynet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return scenario("e2e", tinynet, tmp_path_factory.mktemp("farm-e2e"))


def test_one_bench_call_benchmarks_both_devices_each_on_its_own_node(e2e: dict) -> None:
    serials = {e2e["host-a"]["serial"], e2e["host-b"]["serial"]}
    listed = {d["serial"]: d for d in e2e["devices"]}
    assert set(listed) == serials
    assert len({d["node_id"] for d in listed.values()}) == 2  # two nodes, one device each
    assert {d["model"] for d in listed.values()} == {"Farm host-a", "Farm host-b"}
    assert not any(d["busy"] for d in listed.values())
    bench = e2e["bench"]
    assert bench["code"] == 0, bench["stderr"]
    results = bench["json"]["results"]
    assert sorted((r["serial"], r["precision"], r["status"]) for r in results) == sorted(
        (s, p, "ok") for s in serials for p in ("fp32", "int8"))
    assert all(r["runs"] == 20 for r in results)
    rows = e2e["rows"]  # the caller's own database, written as results arrived
    assert sorted((r["serial"], r["status"]) for r in rows) == sorted((s, "ok") for s in serials for _ in "ab")
    for row in rows:  # each device's runner ran on the node that owns the device
        extra = json.loads(row["extra"])
        assert extra["farm_node"] == listed[row["serial"]]["node_id"]
        assert extra["serial"] == row["serial"]


def test_bad_token_and_silent_address_are_one_line(e2e: dict) -> None:
    wrong = e2e["wrong_token"]
    assert wrong["code"] == 1
    assert wrong["stderr"].count("\n") == 1 and "refused this connection" in wrong["stderr"]
    assert "wrong-token the head's token?" in wrong["stderr"]
    silent = e2e["no_answer"]
    assert silent["code"] == 1 and silent["stderr"].count("\n") == 1
    assert "does not answer (Connection refused)" in silent["stderr"]


def test_farm_stop_ends_exactly_what_each_host_started(e2e: dict) -> None:
    stopped = e2e["stopped"]
    assert [r["role"] for r in stopped["head"]] == ["head"]
    assert [r["role"] for r in stopped["host-a"]] == ["node"] == [r["role"] for r in stopped["host-b"]]
    pids = [r["pid"] for rs in stopped.values() for r in rs]
    assert len(set(pids)) == 3
    assert not [p for p in pids if _alive(p)]


def test_a_node_killed_mid_run_fails_its_device_and_the_rest_completes(tinynet: Path, tmp_path: Path) -> None:
    out = scenario("lost-node", tinynet, tmp_path)
    assert "scenario_error" not in out, out["scenario_error"]
    bench, victim = out["bench"], out["bench"]["victim"]
    assert bench["held"], "the victim's device never started its second artifact"
    assert bench["killed_pid"], "the victim node never stored a first result"
    assert bench["stored_at_kill"] == 1, bench  # killed while its device held the second artifact
    assert bench["code"] == 1, bench["stderr"]
    assert bench["json"], bench["stdout_head"]  # stdout is the report only (no Ray message about the node)
    assert sorted((r["serial"] == victim, r["precision"], r["status"]) for r in bench["json"]["results"]) == [
        (False, "fp32", "ok"), (False, "int8", "ok"), (True, "fp32", "ok"), (True, "int8", "failed")]
    other = out["host-a"]["serial"]
    rows = out["rows"]
    assert sorted(r["status"] for r in rows if r["serial"] == other) == ["ok", "ok"]
    lost = [r for r in rows if r["serial"] == victim]
    assert len(lost) == 2 and lost[0]["status"] == "ok"  # measured before the kill: kept
    # the other device's second artifact started after the loss was stored, and completed
    assert rows.index(lost[1]) < max(i for i, r in enumerate(rows) if r["serial"] == other), rows
    # what Ray notices first: the node's death, its worker's, or the node missing from the live nodes
    reason = r"(its farm node died|the farm worker process died|its farm node is gone)"
    assert lost[1]["status"] == "failed", lost
    assert re.match(rf"device lost: {reason}", lost[1]["error"]), lost[1]["error"]
    assert re.search(rf"{re.escape(victim)}: device lost \({reason}", bench["stderr"]), bench["stderr"]
    assert bench["stderr"].strip().splitlines()[-1].startswith("edgeconv: error: 1 of 4 benchmarks failed")


def test_ray_messages_to_the_driver_go_to_its_log_not_stdout(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's driver prints the cluster's messages (a node marked dead) to sys.stdout from a thread of
    its own: during a farm bench that broke `bench --json` (its stdout no longer parsed)."""
    from ray._private import worker

    from edgeconv.bench.farm import _ray_messages_to

    message = {"lines": ["The node with node id: abc has been marked dead"], "pid": "raylet", "is_err": False}
    with _ray_messages_to(tmp_path / "driver.log"):
        worker.print_to_stdstream(message, ignore_prefix=False)  # what Ray's error listener calls
    assert capsys.readouterr().out == ""
    assert "has been marked dead" in (tmp_path / "driver.log").read_text()
    worker.print_to_stdstream(message, ignore_prefix=False)  # restored afterwards
    assert "has been marked dead" in capsys.readouterr().out


def test_ctrl_c_keeps_stored_results_and_frees_the_devices(e2e: dict) -> None:
    stopped = e2e["interrupt"]
    assert stopped["code"] == 130, stopped["stderr"]
    assert 1 <= stopped["stored"] < 4  # what was measured before Ctrl-C stays; nothing after it
    assert "interrupted" in stopped["stderr"].strip().splitlines()[-1]
    assert stopped["busy_after"] == [False, False]  # the outstanding farm tasks were cancelled
