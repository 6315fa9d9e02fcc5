"""Figures of the arm64 board stand-in: userland build time (cold, into a fresh cache folder, and
warm, reused), per-artifact time under QEMU (tinynet-e TFLite fp32 and int8, `--runs 30`, edgeconv's
runner over the real adb client), and the output parity figures of those runs.

    python benchmarks/arm64_board.py [--out build] [--runs 30] [--skip-cold]

Needs proot and qemu-user-static (Debian packages), the adb client of the adbutils wheel, and
builds tinynet-e's TFLite fp32 + int8 artifacts into --out when missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "build"), help="build folder of tinynet-e")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-cold", action="store_true", help="do not time a build from scratch")
    args = parser.parse_args()

    from tools import arm64_board

    if not args.skip_cold:
        with tempfile.TemporaryDirectory(prefix="arm64-board-cold-") as cold:
            t0 = time.monotonic()
            arm64_board.build(("litert",), Path(cold), log=lambda m: None)
            print(f"userland build, cold (fresh cache, litert site): {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    folder = arm64_board.build(("litert",), log=lambda m: None)
    print(f"userland build, warm (reused {folder.name}): {time.monotonic() - t0:.2f} s")

    from click.testing import CliRunner

    from edgeconv.build import build
    from edgeconv.cli.bench import bench
    from tests.adb_emulator import AdbDeviceEmulator, IsolatedAdbServer

    if not (Path(args.out) / "tinynet-e" / "manifest.json").is_file():
        build("tinynet-e", formats="tflite", precisions="fp32,int8", out=args.out, calib_size=16)
    with tempfile.TemporaryDirectory(prefix="arm64-bench-") as tmp, \
            IsolatedAdbServer(Path(tmp) / "adb") as server, AdbDeviceEmulator(arm64=folder) as board:
        server.connect(board)
        for key in ("ANDROID_ADB_SERVER_PORT", "HOME", "ANDROID_USER_HOME", "ADB_MDNS", "ADB"):
            os.environ[key] = server.env[key]
        db = Path(tmp) / "results.db"
        r = CliRunner().invoke(bench, ["tinynet-e", "--device", "board", "--serial", board.serial, "--runner",
                                       "python", "--runs", str(args.runs), "--warmup", "2", "--cooldown", "0",
                                       "--precisions", "fp32,int8", "--out", args.out, "--db", str(db),
                                       "--allow-mismatch", "--json"], catch_exceptions=False)
        if r.exit_code != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        from edgeconv.store import Store

        with Store(db) as s:
            walls = {row["precision"]: json.loads(s.conn.execute("SELECT extra FROM runs WHERE id = ?",
                                                                 (row["run_id"],)).fetchone()[0])["wall_s"]
                     for row in s.runs()}
        for res in json.loads(r.stdout)["results"]:
            p = res["parity"]
            steps = f", {p['max_abs_diff'] / p['quant_step']:.2f} steps" if p.get("quant_step") else ""
            print(f"tinynet-e {res['precision']} ({res['runtime_version']}, QEMU cortex-a76): median "
                  f"{res['median_ms']:.1f} ms per run, {walls[res['precision']]:.1f} s for the artifact "
                  f"({args.runs} runs + warm-up + {p.get('inputs')} parity inputs)")
            print(f"  parity: {p['status']}, max |diff| {p['max_abs_diff']:.3g}{steps} "
                  f"(tolerance {p['tolerance']:.3g}, logit range {p['logit_range']:.3g}), cosine "
                  f"{p['cosine']:.7f}, top-1 agreement {100 * p['top1_agreement']:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
