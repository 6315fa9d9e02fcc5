"""Per-block profiles (edgeconv profile) in the results store and in `edgeconv report --profile`:
round trips on a host and an emulated board, the newest per key, the upgrade of a schema-3
database, the table (sum of blocks vs whole model, the emulated mark), JSON/CSV/Markdown, a missing
profile as one line, per-stage sums and comparisons, and the PNG/SVG plots."""
from __future__ import annotations

import copy
import json
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
