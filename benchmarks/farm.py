"""What a farm costs: wall time per artifact of `bench --farm` against a local `bench --device
android` on the same emulated device, and 2 devices on 2 nodes against 2 devices on 1 node.

Runs itself inside a loopback-only network namespace (re-executes under `unshare -n`; needs root),
with the project's ADB device emulator (tests/adb_emulator.py) behind real adb servers and real
`ray start` nodes. The emulated devices run the host's x86 LiteRT: these are harness overheads and
wall times, never device latency.

    python benchmarks/farm.py [--artifacts build/tinynet-e] [--runs 200] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-m", "edgeconv.cli"]


def run(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:3])}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


def timed(env: dict, *args: str) -> float:
    t0 = time.monotonic()
    run(env, *args)
    return time.monotonic() - t0


def inside(args: argparse.Namespace) -> None:
    from tests.adb_emulator import AdbDeviceEmulator, IsolatedAdbServer, free_tcp_port

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="edgeconv-farm-bench-"))
    base = {**os.environ, "PYTHONPATH": str(REPO), "EDGECONV_DB": str(work / "r.db")}
    emus = [AdbDeviceEmulator(pythonpath=REPO).start() for _ in range(2)]
    servers = [IsolatedAdbServer(work / f"adb{i}").start() for i in range(3)]
    servers[0].connect(emus[0])
    servers[1].connect(emus[1])
    servers[2].connect(emus[0])
    servers[2].connect(emus[1])  # the "one host with both devices" adb server
    common = ["--artifacts", args.artifacts, "--runner", "python", "--cooldown", "0", "--precisions",
              "fp32,int8", "--runs", str(args.runs), "--warmup", "5", "--json"]
    envs = []
    try:
        local = [timed({**base, **servers[0].env}, "bench", "--device", "android", "--serial", emus[0].serial,
                       *common) for _ in range(args.repeat)]
        results = {}
        for layout, hosts in (("2 devices on 2 nodes", [(servers[0], None), (servers[1], None)]),
                              ("2 devices on 1 node", [(servers[2], None)])):
            port = free_tcp_port()
            head = {**base, "EDGECONV_FARM_DIR": str(work / f"head-{port}")}
            run(head, "farm", "head", "--port", str(port))
            envs.append(head)
            for i, (server, _) in enumerate(hosts):
                env = {**base, **server.env, "EDGECONV_FARM_DIR": str(work / f"node-{port}-{i}")}
                envs.append(env)
                run(env, "farm", "join", f"127.0.0.1:{port}", "--token-file", str(work / f"head-{port}" / "token"))
            farm = ["--farm", f"127.0.0.1:{port}"]
            if layout.endswith("2 nodes"):
                results["one device via the farm"] = [timed(head, "bench", *farm, "--serial", emus[0].serial,
                                                            *common) for _ in range(args.repeat)]
            results[layout] = [timed(head, "bench", *farm, *common) for _ in range(args.repeat)]
            for env in reversed(envs):
                run(env, "farm", "stop")
            envs.clear()
        n = 2  # artifacts per device
        med = {k: statistics.median(v) for k, v in {"local, one device": local, **results}.items()}
        out = {"runs": args.runs, "repeat": args.repeat, "wall_s": {k: [round(x, 2) for x in v] for k, v in
                                                                   {"local, one device": local, **results}.items()},
               "median_s": {k: round(v, 2) for k, v in med.items()},
               "farm_overhead_per_artifact_s":
                   round((med["one device via the farm"] - med["local, one device"]) / n, 2),
               "two_nodes_vs_one_node": round(med["2 devices on 2 nodes"] / med["2 devices on 1 node"], 3)}
        print(json.dumps(out))
    finally:
        for env in reversed(envs):
            subprocess.run([*CLI, "farm", "stop"], env=env, capture_output=True, timeout=120)
        for s in servers:
            s.kill()
        for e in emus:
            e.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default=str(REPO / "build" / "tinynet-e"))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (Path(args.artifacts) / "manifest.json").is_file():
        raise SystemExit(f"{args.artifacts}: no build (edgeconv build tinynet-e --formats tflite "
                         "--precisions fp32,int8 first)")
    if args.inside:
        return inside(args)
    r = subprocess.run(["unshare", "-n", sys.executable, __file__, "--inside", "--artifacts", args.artifacts,
                        "--runs", str(args.runs), "--repeat", str(args.repeat)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr.strip()[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"emulated devices (host x86 LiteRT): wall times, not latency; tinynet-e fp32+int8, "
          f"--runs {out['runs']}, median of {out['repeat']}")
    for k, v in out["median_s"].items():
        print(f"  {k:28s} {v:7.2f} s   (all: {out['wall_s'][k]})")
    print(f"  farm overhead per artifact: {out['farm_overhead_per_artifact_s']:+.2f} s")
    print(f"  2 devices on 2 nodes / on 1 node: {out['two_nodes_vs_one_node']:.3f}")


if __name__ == "__main__":
    main()
