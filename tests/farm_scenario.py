"""A device farm on one machine, for tests/test_farm.py: run inside a network namespace of its own
(``unshare -n``), where only loopback exists. Two "hosts" each have an adb server on their own
port with their own emulated device (tests/adb_emulator.py) and join a farm head with
``edgeconv farm join``; then ``edgeconv bench --farm`` is run against them. Prints one JSON object
(what happened) as its last line. Every process it starts is stopped by its pid at the end
(``edgeconv farm stop`` per host: the recorded process groups only).

    unshare -n python tests/farm_scenario.py SCENARIO --artifacts DIR --work DIR
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.adb_emulator import AdbDeviceEmulator, IsolatedAdbServer, free_tcp_port  # noqa: E402

CLI = [sys.executable, "-m", "edgeconv.cli"]


def edgeconv(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["e2e", "lost-node"])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(args.work)
    base = {**os.environ, "PYTHONPATH": str(REPO), "EDGECONV_DB": str(work / "results.db")}
    base.pop("ANDROID_ADB_SERVER_PORT", None)
    head_env = {**base, "EDGECONV_FARM_DIR": str(work / "head")}
    out: dict = {"scenario": args.scenario}
    servers, emulators, hosts = [], [], []
    try:
        port = free_tcp_port()
        t0 = time.monotonic()
        r = edgeconv(head_env, "farm", "head", "--port", str(port), "--json")
        out["head"] = {"code": r.returncode, "stderr": r.stderr[-2000:], "s": round(time.monotonic() - t0, 1)}
        if r.returncode:
            return
        address = f"127.0.0.1:{port}"
        token = work / "head" / "token"
        for name in ("host-a", "host-b"):
            emulator = AdbDeviceEmulator(props={"ro.product.model": f"Farm {name}"}, pythonpath=REPO).start()
            server = IsolatedAdbServer(work / f"adb-{name}").start()
            server.connect(emulator)
            emulators.append(emulator)
            servers.append(server)
            env = {**base, **server.env, "EDGECONV_FARM_DIR": str(work / name)}
            (work / name).mkdir(parents=True, exist_ok=True)
            copy = work / name / "token"
            copy.write_text(token.read_text())
            copy.chmod(0o600)
            t0 = time.monotonic()
            r = edgeconv(env, "farm", "join", address, "--token-file", str(copy), "--json")
            hosts.append((name, env))
            out[name] = {"code": r.returncode, "stderr": r.stderr[-2000:], "serial": emulator.serial,
                         "s": round(time.monotonic() - t0, 1),
                         "joined": json.loads(r.stdout)["devices"] if r.returncode == 0 else None}
            if r.returncode:
                return
        r = edgeconv(head_env, "farm", "devices", "--farm", address, "--json")
        out["devices"] = json.loads(r.stdout)["devices"] if r.returncode == 0 else r.stderr[-2000:]
        wrong = work / "wrong-token"
        wrong.write_text("0" * 64 + "\n")
        wrong.chmod(0o600)
        t0 = time.monotonic()
        r = edgeconv(head_env, "farm", "devices", "--farm", address, "--token-file", str(wrong), timeout=300)
        out["wrong_token"] = {"code": r.returncode, "stderr": r.stderr, "s": round(time.monotonic() - t0, 1)}
        r = edgeconv(head_env, "farm", "devices", "--farm", f"127.0.0.1:{free_tcp_port()}")
        out["no_answer"] = {"code": r.returncode, "stderr": r.stderr}
        bench = [*CLI, "bench", "--artifacts", args.artifacts, "--farm", address, "--runner", "python",
                 "--cooldown", "0", "--precisions", "fp32,int8", "--json"]
        if args.scenario == "e2e":
            t0 = time.monotonic()
            r = subprocess.run([*bench, "--runs", "20", "--warmup", "2"], env=head_env, capture_output=True,
                               text=True, timeout=900)
            out["bench"] = {"code": r.returncode, "stderr": r.stderr[-3000:], "s": round(time.monotonic() - t0, 1),
                            "json": json.loads(r.stdout) if r.stdout.strip() else None}
            # Ctrl-C during a farm bench: what was stored stays, the farm's tasks are cancelled
            db2 = work / "interrupted.db"
            p = subprocess.Popen([*bench, "--runs", "5000", "--warmup", "2", "--db", str(db2)], env=head_env,
                                 text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 300
            while p.poll() is None and time.monotonic() < deadline and _stored(db2, None) < 1:
                time.sleep(0.3)
            p.send_signal(signal.SIGINT)
            _stdout, stderr = p.communicate(timeout=120)
            free = None
            for _ in range(5):  # the cancelled tasks give their devices back (a run takes 5000 invokes)
                r = edgeconv(head_env, "farm", "devices", "--farm", address, "--json")
                free = [d["busy"] for d in json.loads(r.stdout)["devices"]] if r.returncode == 0 else r.stderr
                if free == [False, False]:
                    break
                time.sleep(1)
            out["interrupt"] = {"code": p.returncode, "stderr": stderr[-2000:], "stored": _stored(db2, None),
                                "busy_after": free}
        else:
            victim = emulators[1].serial
            results = work / "results.db"
            # No timing involved, whatever the machine's load: the victim's node is killed while its
            # device holds the runner of its second artifact (its first result stored by then); the
            # other device's second artifact starts only once the victim's loss is stored
            hold, other = HoldSecondArtifact(emulators[1]), HoldSecondArtifact(emulators[0])
            p = subprocess.Popen([*bench, "--runs", "1000", "--warmup", "2"], env=head_env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            killed = stored_at_kill = None
            deadline = time.monotonic() + 600
            try:
                while p.poll() is None and time.monotonic() < deadline and killed is None:
                    if hold.held.wait(0.2) and (stored_at_kill := _stored(results, victim)) >= 1:
                        records = json.loads((work / "host-b" / "processes.json").read_text())
                        killed = records[0]["pid"]
                        os.killpg(killed, signal.SIGKILL)
                while p.poll() is None and time.monotonic() < deadline and not _stored(results, victim, "failed"):
                    time.sleep(0.2)
            finally:
                hold.release.set()
                other.release.set()
            stdout, stderr = p.communicate(timeout=900)
            out["bench"] = {"code": p.returncode, "stderr": stderr[-3000:], "killed_pid": killed,
                            "stored_at_kill": stored_at_kill, "held": hold.held.is_set(), "victim": victim,
                            "other_held": other.held.is_set()}
            try:
                out["bench"]["json"] = json.loads(stdout)
            except ValueError:  # the report is the whole of stdout, or it is broken
                out["bench"]["json"], out["bench"]["stdout_head"] = None, stdout[:500]
        with sqlite3.connect(work / "results.db") as db:
            out["rows"] = [dict(zip(("serial", "status", "error", "extra"), row, strict=True)) for row in db.execute(
                "SELECT d.serial, r.status, r.error, r.extra FROM runs r JOIN devices d ON d.id = r.device_id "
                "ORDER BY r.id")]
    except Exception:  # noqa: BLE001 - what went wrong goes into the JSON, for the test to show
        import traceback

        out["scenario_error"] = traceback.format_exc()[-3000:]
    finally:
        for name, env in [*hosts, ("head", head_env)]:
            r = edgeconv(env, "farm", "stop", "--json", timeout=120)
            out.setdefault("stopped", {})[name] = json.loads(r.stdout)["stopped"] if r.returncode == 0 else r.stderr
        for server in servers:
            server.kill()
        for emulator in emulators:
            emulator.close()
        print(json.dumps(out))


class HoldSecondArtifact:
    """Installed on an emulated device: the device's runner command for a second artifact (its
    ``--graph`` differs from the first runner's) does not start until ``release`` is set (at most
    600 s); ``held`` is set once it waits. So a node can be killed while its device measures."""

    def __init__(self, device: AdbDeviceEmulator) -> None:
        self.first: str | None = None
        self.held, self.release = threading.Event(), threading.Event()
        self._map_command = device.map_command
        device.map_command = self  # type: ignore[method-assign]  # every shell command passes here

    def __call__(self, command: str) -> str:
        graph = re.search(r"--graph=(\S+)", command)
        if graph and "edgeconv.runner" in command:
            stem = Path(graph[1].strip("'\"")).stem
            self.first = self.first or stem
            if stem != self.first:
                self.held.set()
                self.release.wait(600)
        return self._map_command(command)


def _stored(db: Path, serial: str | None, status: str | None = None) -> int:
    """Runs stored for ``serial`` (any device: None) so far, with ``status`` (any: None)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs r JOIN devices d ON d.id = r.device_id "
                                "WHERE (? IS NULL OR d.serial = ?) AND (? IS NULL OR r.status = ?)",
                                (serial, serial, status, status)).fetchone()[0]
    except sqlite3.Error:
        return 0


if __name__ == "__main__":
    main()
