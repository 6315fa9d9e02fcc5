"""Per-block profiles (edgeconv profile) in the results store and in `edgeconv report --profile`:
round trips on a host and an emulated board, the newest per key, the upgrade of a schema-3
database, the table (sum of blocks vs whole model, the emulated mark), JSON/CSV/Markdown, a missing
profile as one line, per-stage sums and comparisons, and the PNG/SVG plots."""
from __future__ import annotations

import copy
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeconv.cli.results import report
from edgeconv.errors import UserError
from edgeconv.report import (
    EMULATED_TIMINGS_MARK,
    PROFILE_FIELDS,
    compare_stage_rows,
    plot_profile,
    plot_profile_compare,
    profile_columns,
    profile_table_rows,
    profile_title,
    stage_rows,
    to_markdown,
)
from edgeconv.store import (
    MIGRATIONS,
    PROFILE_STORED_KEYS,
    SCHEMA_VERSION,
    ArtifactRecord,
    Store,
)

HOST = {"kind": "host", "name": "box", "cpu_model": "Test CPU", "cores": 2}
BOARD = {"kind": "board", "name": "qemu-arm64", "serial": "b1", "emulated": True}

# tinynet-e-like blocks at 106 px: (name, stage, recipe words, out HWC, params, MACs, median ms)
BLOCKS = [
    ("stem", None, "conv3x3_s2_c8", (53, 53, 8), 224, 606_744, 0.052),
    ("blocks.0.0", 0, "ds_k3_s1_se0.25_c8", (53, 53, 8), 184, 224_720, 0.031),
    ("blocks.1.0", 1, "ir_k3_s2_e6_c16", (27, 27, 16), 1_448, 1_327_248, 0.108),
    ("blocks.1.1", 1, "ir_k3_s1_e6_c16", (27, 27, 16), 3_504, 2_468_736, 0.094),
    ("blocks.2.0", 2, "ir_k5_s2_e6_c24", (14, 14, 24), 6_004, 1_615_008, 0.087),
    ("blocks.2.1", 2, "ir_k5_s1_e6_c24", (14, 14, 24), 10_710, 1_950_816, 0.079),
    ("blocks.3.0", 3, "ir_k3_s2_e6_c40", (7, 7, 40), 15_350, 896_112, 0.061),
    ("blocks.3.1", 3, "ir_k3_s1_e6_c40", (7, 7, 40), 31_290, 1_387_680, 0.066),
    ("blocks.4.0", 4, "ir_k5_s1_e6_c56", (7, 7, 56), 57_902, 2_453_472, 0.098),
    ("blocks.5.0", 5, "ir_k5_s2_e6_c96", (4, 4, 96), 129_480, 1_437_456, 0.083),
    ("blocks.6.0", 6, "ir_k3_s1_e6_c160", (4, 4, 160), 355_232, 5_302_272, 0.172),
    ("head", None, "conv1x1_c1280+pool+fc1000", (1000,), 1_488_280, 3_277_280, 0.241),
]


def make_profile(model: str = "tinynet-e", scale: float = 1.0, precision: str = "int8",
                 blocks=BLOCKS) -> dict:
    rows, shape = [], [1, 106, 106, 3]
    total = sum(b[6] * scale for b in blocks)
    for i, (name, stage, words, out, params, macs, ms) in enumerate(blocks):
        ms *= scale
        out_shape = [1, *out]
        rows.append({
            "index": i, "name": name, "stage": stage, "block": words, "in_shape": shape,
            "out_shape": out_shape, "params": params, "macs": macs, "median_ms": ms, "p90_ms": ms * 1.08,
            "share": ms / total, "macs_per_us": macs / (ms * 1000),
            "sqnr_db": 38.0 - 1.1 * i if precision == "int8" else None,
            "cosine": 0.99995 - 0.0002 * i if precision == "int8" else None,
            "local_sqnr_db": 40.0 - 0.5 * i if precision == "int8" else None,
            "float_fallback": ["blocks.6.0.se.conv_reduce"] if name == "blocks.6.0" and precision == "int8" else [],
            "status": "ok", "error": None})
        shape = out_shape
    whole = total / 1.14
    return {"model": model, "format": "tflite", "precision": precision, "runtime": "tflite", "resolution": 106,
            "method": "slices", "runs": 200, "warmup": 20, "threads": 1,
            "whole": {"median_ms": whole, "p90_ms": whole * 1.05, "status": "ok", "error": None},
            "sum_median_ms": total, "ratio": total / whole, "error_images": 32 if precision == "int8" else 0,
            "rows": rows}


def artifact(model: str = "tinynet-e", precision: str = "int8") -> ArtifactRecord:
    return ArtifactRecord(model, "tflite", precision, f"/b/{model}/{precision}.tflite", f"sha-{model}-{precision}",
                          2_400_000, params=2_042_972, macs=24_356_848, resolution=106)


def as_recorded(stored: dict) -> dict:
    return {k: v for k, v in stored.items() if k not in PROFILE_STORED_KEYS or k in ("model", "format", "precision")}


def record(db: Path, device: dict, profile: dict, model: str | None = None) -> int:
    with Store(db) as s:
        dev = s.upsert_device(device)
        return s.record_profile(dev, artifact(model or profile["model"], profile["precision"]), profile)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "r.db"
    record(path, HOST, make_profile())
    record(path, BOARD, make_profile(scale=9.0))
    return path


# ------------------------------------------------------------------------------------------------
# store
# ------------------------------------------------------------------------------------------------
def test_round_trip_host_and_emulated_board(db: Path) -> None:
    with Store(db) as s:
        board, host = s.profiles()  # newest first
    assert as_recorded(host) == make_profile() and as_recorded(board) == make_profile(scale=9.0)
    assert len(host["rows"]) == 12 and host["rows"][-1]["out_shape"] == [1, 1000]
    assert (host["device"], host["device_kind"], host["device_emulated"]) == ("box", "host", False)
    assert (board["device"], board["device_serial"], board["device_emulated"]) == ("qemu-arm64", "b1", True)
    assert (host["model"], host["format"], host["precision"], host["tag"]) == ("tinynet-e", "tflite", "int8", None)
    assert host["created_at"] < board["created_at"] and host["id"] < board["id"]
    assert set(host) - set(make_profile()) == set(PROFILE_STORED_KEYS) - {"model", "format", "precision"}
    again = record(db, BOARD, host)  # a profile read back, stored anew (another device): new id, its device
    with Store(db) as s:
        copied = s.profiles(device="board", latest=True)[0]
    assert (copied["id"], copied["device"], copied["device_emulated"]) == (again, "qemu-arm64", True) and again == 3
    assert as_recorded(copied) == make_profile() and copied["created_at"] == host["created_at"]


def test_numpy_values_failed_rows_and_extra_keys_come_back(tmp_path: Path) -> None:
    p = make_profile()
    p["rows"][3].update(median_ms=None, p90_ms=None, share=None, macs_per_us=None, status="failed",
                        error="slice 3 did not convert", in_shape=tuple(np.array(p["rows"][3]["in_shape"])),
                        params=np.int64(3_504), notes="a key the store has no column for")
    p.update(sum_median_ms=None, ratio=None, whole=None, tag="main", seed=7)
    record(tmp_path / "r.db", HOST, p)
    with Store(tmp_path / "r.db") as s:
        (got,) = s.profiles()
    row = got["rows"][3]
    assert (row["status"], row["error"], row["median_ms"], row["params"]) == \
        ("failed", "slice 3 did not convert", None, 3_504)
    assert row["in_shape"] == [1, 27, 27, 16] and row["notes"] == "a key the store has no column for"
    assert (got["whole"], got["sum_median_ms"], got["tag"], got["seed"]) == (None, None, "main", 7)


def test_record_profile_refuses_another_models_artifact(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        dev = s.upsert_device(HOST)
        with pytest.raises(ValueError, match="profile model 'tinynet-e' is not the artifact's 'tinynet-a'"):
            s.record_profile(dev, artifact("tinynet-a"), make_profile())
        assert s.profiles(latest=False) == []  # nothing half-written


def test_latest_per_model_device_precision_runtime(db: Path) -> None:
    record(db, HOST, make_profile(scale=2.0))  # newer on the host: replaces the first
    record(db, HOST, make_profile(precision="fp32", scale=3.0))  # another precision: its own key
    record(db, HOST, make_profile("tinynet-a", blocks=BLOCKS[:4]))
    with Store(db) as s:
        latest = s.profiles()
        everything = s.profiles(latest=False)
        keys = [(p["model"], p["device"], p["precision"]) for p in latest]
        assert keys == [("tinynet-a", "box", "int8"), ("tinynet-e", "box", "fp32"), ("tinynet-e", "box", "int8"),
                        ("tinynet-e", "qemu-arm64", "int8")]
        assert latest[2]["sum_median_ms"] == pytest.approx(2 * make_profile()["sum_median_ms"])
        assert len(everything) == 5 and [p["id"] for p in everything] == [5, 4, 3, 2, 1]
        assert [p["device"] for p in s.profiles(["tinynet-e"], device="board")] == ["qemu-arm64"]
        assert [p["precision"] for p in s.profiles(["tinynet-e"], device="box", precision="fp32")] == ["fp32"]
        assert s.profiles(["efficientnet-b0"]) == []


def test_schema_3_store_is_upgraded_keeping_its_runs(tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    with sqlite3.connect(db) as c:
        for stmt in MIGRATIONS[0] + MIGRATIONS[1] + MIGRATIONS[2]:
            c.execute(stmt)
        c.execute("INSERT INTO devices (kind, name, serial, first_seen, last_seen, emulated) VALUES "
                  "('board', 'qemu-arm64', 'b1', 'x', 'x', 1)")
        c.execute("INSERT INTO artifacts (model, format, precision, path, sha256, first_seen) VALUES "
                  "('tinynet-e', 'tflite', 'int8', 'p', 'sha-tinynet-e-int8', 'x')")
        c.execute("INSERT INTO runs (device_id, artifact_id, runtime, threads, warmup, runs_requested, "
                  "runs_actual, finished_at, status, verdict) VALUES (1, 1, 'tflite', 1, 1, 5, 5, 'x', 'ok', 'stable')")
        c.execute("INSERT INTO run_stats (run_id, median_ms) VALUES (1, 11.0)")
        c.execute("PRAGMA user_version = 3")
    with Store(db) as s:
        assert s.schema_version() == SCHEMA_VERSION == 4
        (run,) = s.runs()
        assert (run["device"], run["device_emulated"], run["median_ms"], run["verdict"]) == \
            ("qemu-arm64", 1, 11.0, "stable")
        assert s.profiles() == []
    record(db, BOARD, make_profile())
    with Store(db) as s:
        (p,) = s.profiles()
        assert len(s.devices()) == 1 and p["device_emulated"] is True  # the same board, the same artifact
        assert s.conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 1
        s.conn.execute("DELETE FROM profiles")  # rows go with their profile
        assert s.conn.execute("SELECT count(*) FROM profile_rows").fetchone()[0] == 0


# ------------------------------------------------------------------------------------------------
# rows, stages, comparison
# ------------------------------------------------------------------------------------------------
def test_table_rows_sum_whole_and_ratio(db: Path) -> None:
    with Store(db) as s:
        board, host = s.profiles()
    rows = profile_table_rows(host)
    assert [r["kind"] for r in rows] == ["block"] * 12 + ["sum", "whole"]
    assert all(tuple(r)[:len(PROFILE_FIELDS)] == PROFILE_FIELDS for r in rows)
    first, total, whole = rows[0], rows[-2], rows[-1]
    assert (first["index"], first["name"], first["block"], first["shape"]) == \
        (0, "stem", "conv3x3_s2_c8", "106x106x3→53x53x8")
    assert [r["fallback"] for r in rows[:12]].count("float") == 1 and rows[10]["fallback"] == "float"
    assert total["median_ms"] == pytest.approx(sum(b[6] for b in BLOCKS))
    assert total["macs"] == sum(b[5] for b in BLOCKS) and total["share"] == pytest.approx(1.0)
    assert whole["median_ms"] == pytest.approx(total["median_ms"] / 1.14) and whole["ratio"] == pytest.approx(1.14)
    assert whole["block"] == "sum of blocks / whole = 1.14" and whole["shape"] == "106x106x3→1000"
    assert whole["macs_per_us"] == pytest.approx(total["macs"] / (whole["median_ms"] * 1000))
    assert [c[1] for c in profile_columns(rows)] == [
        "#", "block", "recipe block", "in→out", "params", "MACs", "median ms", "p90 ms", "share %", "MACs/µs",
        "SQNR dB", "local SQNR dB", "cosine", "fallback"]
    md = to_markdown(rows, profile_columns(rows)).splitlines()
    assert md[2] == ("| 0 | stem | conv3x3_s2_c8 | 106x106x3→53x53x8 | 224 | 607k | 0.052 | 0.056 | 4.4 | 11668 "
                     "| 38.0 | 40.0 | 1.0000 |  |")
    assert md[-2].startswith("|  | sum of blocks |  |  | 2.1M | 22.9M | 1.17 | - | 100.0 |")
    assert md[-1].startswith("|  | whole model | sum of blocks / whole = 1.14 | 106x106x3→1000 | - | - | 1.03 | 1.08 |")
    assert profile_title(host) == (f"profile of tinynet-e (tflite int8) on box: tflite, 1 thread, median of 200 runs, "
                                   f"blocks timed as slices, int8 error on 32 images "
                                   f"({host['created_at'][:16].replace('T', ' ')} UTC)")
    assert EMULATED_TIMINGS_MARK == " (emulated: timings are not latency)"
    assert profile_title(board).startswith("profile of tinynet-e (tflite int8) on qemu-arm64 (emulated: timings "
                                           "are not latency): ")
    assert profile_table_rows(board)[0]["device"] == "qemu-arm64 (emulated)"


def test_float_profile_and_failed_row_columns() -> None:
    p = make_profile(precision="fp32")
    p["rows"][2].update(median_ms=None, share=None, status="failed", error="slice did not convert")
    p.update(sum_median_ms=None, ratio=None)
    rows = profile_table_rows(p)
    keys = [c[0] for c in profile_columns(rows)]
    assert "sqnr_db" not in keys and "cosine" not in keys and "fallback" not in keys and keys[-1] == "error"
    assert rows[-2]["median_ms"] is None and rows[-1]["block"] == "sum of blocks / whole: -"
    assert "this host" in profile_title(p) and "int8 error" not in profile_title(p)


def test_stage_rows_and_comparison() -> None:
    a, b = make_profile(), make_profile("tinynet-a", scale=3.0, blocks=BLOCKS[:6] + BLOCKS[-1:])
    stages = stage_rows(a)
    assert [r["stage"] for r in stages] == ["stem", *(f"stage {i}" for i in range(7)), "head"]
    assert [r["blocks"] for r in stages] == [1, 1, 2, 2, 2, 1, 1, 1, 1]
    assert stages[2]["median_ms"] == pytest.approx(0.108 + 0.094) and stages[2]["macs"] == 1_327_248 + 2_468_736
    assert sum(r["share"] for r in stages) == pytest.approx(1.0)
    assert sum(r["params"] for r in stages) == sum(blk[4] for blk in BLOCKS)
    cmp = compare_stage_rows(a, b)
    assert [r["stage"] for r in cmp] == ["stem", *(f"stage {i}" for i in range(7)), "head", "sum of blocks",
                                         "whole model"]
    assert cmp[0]["delta_ms"] == pytest.approx(2 * 0.052) and cmp[0]["b_macs"] == 606_744
    assert (cmp[5]["a_ms"], cmp[5]["b_ms"], cmp[5]["delta_ms"]) == (pytest.approx(0.098), None, None)  # no B stage 4
    assert cmp[-2]["b_ms"] == pytest.approx(b["sum_median_ms"])
    assert cmp[-1]["a_ms"] == pytest.approx(a["whole"]["median_ms"])


# ------------------------------------------------------------------------------------------------
# edgeconv report --profile
# ------------------------------------------------------------------------------------------------
def test_report_profile_tables(db: Path) -> None:
    r = CliRunner().invoke(report, ["--db", str(db), "--profile", "tinynet-e"])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert out.count("profile of tinynet-e (tflite int8) on ") == 2  # one table per device
    assert "on qemu-arm64 (emulated: timings are not latency)" in out and "on box: tflite" in out
    for name in ("stem", "blocks.3.1", "head", "sum of blocks", "whole model"):
        assert len(re.findall(rf"│ {re.escape(name)} +│", out)) == 2, name
    assert out.count("sum of blocks / whole = 1.14") == 2 and "ir_k3_s1_e6_c160" in out and " float " in out
    r = CliRunner().invoke(report, ["--db", str(db), "--profile", "tinynet-e", "--device", "board", "--markdown"])
    lines = r.stdout.splitlines()
    assert lines[0].startswith("### profile of tinynet-e (tflite int8) on qemu-arm64 (emulated: timings are not "
                               "latency)")
    assert lines[2].startswith("| # | block | recipe block | in→out |") and len(lines) == 2 + 2 + 12 + 2


def test_report_profile_json_round_trips_and_csv(db: Path) -> None:
    record(db, HOST, make_profile(precision="fp32"))
    run = CliRunner()
    r = run.invoke(report, ["--db", str(db), "--profile", "tinynet-e", "--json"])
    assert r.exit_code == 0, r.stderr
    with Store(db) as s:
        assert json.loads(r.stdout) == s.profiles(["tinynet-e"])
    got = json.loads(run.invoke(report, ["--db", str(db), "--profile", "tinynet-e", "--precision", "int8", "--device",
                                         "host", "--json"]).stdout)
    assert len(got) == 1 and as_recorded(got[0]) == make_profile()
    r = run.invoke(report, ["--db", str(db), "--profile", "tinynet-e", "--csv", "--precision", "fp32"])
    lines = r.stdout.splitlines()
    assert lines[0] == ",".join(PROFILE_FIELDS) and len(lines) == 1 + 14
    assert lines[1].startswith("tinynet-e,tflite,fp32,box,False,tflite,block,0,stem,,conv3x3_s2_c8,106x106x3,53x53x8,")


def test_report_profile_missing_is_one_line(db: Path, tmp_path: Path) -> None:
    run = CliRunner()
    r = run.invoke(report, ["--db", str(db), "--profile", "efficientnet-b0"])
    assert (r.exit_code, r.stdout, r.stderr) == (
        1, "", "edgeconv: error: no stored profile of efficientnet-b0; run 'edgeconv profile efficientnet-b0' first\n")
    r = run.invoke(report, ["--db", str(db), "--profile", "tinynet-e", "--precision", "fp16"])
    assert (r.exit_code, r.stderr) == (1, "edgeconv: error: no stored profile of tinynet-e at precision fp16; "
                                          "run 'edgeconv profile tinynet-e' first\n")
    r = run.invoke(report, ["--db", str(tmp_path / "none.db"), "--profile", "tinynet-e"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "no stored profile of tinynet-e" in r.stderr
    assert not (tmp_path / "none.db").exists()
    r = run.invoke(report, ["--db", str(db), "--precision", "int8"])
    assert (r.exit_code, r.stderr) == (2, "edgeconv: error: --precision goes with --profile NAME\n")


def test_report_profile_plot(db: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(report, ["--db", str(db), "--profile", "tinynet-e", "--device", "box", "--plot",
                                    str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == f"plotted 12 blocks of tinynet-e (int8 on box) to {tmp_path}/p.png\n"
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------
def test_plot_profile_png_and_svg(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        board, host = s.profiles()
    png = tmp_path / "p.png"
    facts = plot_profile(host, png)
    assert len(facts) == facts.drawn == 12
    assert [b.group for b in facts.bars][:3] == ["stem", "stage 0", "stage 1"] and facts.bars[-1].group == "head"
    assert facts.bars[0].color == facts.bars[-1].color == "#9e9e9e" and facts.bars[1].color != facts.bars[2].color
    assert sum(b.value for b in facts.bars) == pytest.approx(100.0)
    assert facts.bars[0].text == "0.052 ms · SQNR 38.0 dB" and facts.bars[10].text.endswith("· float")
    assert facts.note == "sum of blocks 1.17 ms = 1.14 × whole model 1.03 ms"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    width, height = Image.open(png).size
    assert width == 1350 and height >= 480
    svg = tmp_path / "p.svg"
    facts = plot_profile(board, svg)
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text and facts.drawn == 12
    assert "emulated: timings are not latency" in facts.title and "emulated device" in facts.xlabel
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_plot_profile_readable_for_b0_sized_profiles(tmp_path: Path) -> None:
    blocks = [BLOCKS[0]] + [(f"blocks.{s}.{j}", s, f"ir_k5_s1_e6_c{16 * (s + 1)}", (7, 7, 16), 1000, 900_000,
                             0.05 + s / 50) for s, n in enumerate((1, 2, 2, 3, 3, 4, 1)) for j in range(n)]
    blocks.append(BLOCKS[-1])
    p = make_profile("efficientnet-b0", blocks=blocks)
    p["rows"][5].update(median_ms=None, share=None, status="failed", error="slice did not convert")
    facts = plot_profile(p, tmp_path / "b0.png")
    assert len(facts) == facts.drawn == 18 and facts.bars[5].value == 0.0 and facts.bars[5].text.startswith("failed")
    assert Image.open(tmp_path / "b0.png").size[1] > 0.3 * 18 * 150  # about 0.3 inch per bar


def test_plot_profile_compare_and_errors(tmp_path: Path) -> None:
    a, b = make_profile(), make_profile("tinynet-a", scale=3.0, blocks=BLOCKS[:6] + BLOCKS[-1:])
    facts = plot_profile_compare(a, b, tmp_path / "c.svg")
    assert len(facts) == facts.drawn == 2 * 9 and [x.group for x in facts.bars[:2]] == ["A", "B"]
    assert facts.bars[1].text == "0.156 ms (+0.104)" and facts.bars[11].text == "-"  # B has no stage 4
    assert facts.title == "A = tinynet-e (tflite int8) on this host, B = tinynet-a (tflite int8) on this host"
    assert (tmp_path / "c.svg").read_text().startswith("<?xml")
    with pytest.raises(UserError, match=r"use a \.png or \.svg file name"):
        plot_profile(a, tmp_path / "p.pdf")
    with pytest.raises(UserError, match="the profile has no blocks"):
        plot_profile({**copy.deepcopy(a), "rows": []}, tmp_path / "p.png")
