"""The SQLite results store: schema, round trips, concurrent writers in real processes, durability
when a writer is killed, and one-line errors for unusable database paths."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeconv.bench.stats import summarize
from edgeconv.errors import UserError
from edgeconv.store import (
    SCHEMA_VERSION,
    ArtifactRecord,
    RunRecord,
    Store,
    default_db_path,
    record_accuracy,
)

ROOT = Path(__file__).resolve().parents[1]
DEVICE = {"kind": "host", "name": "testbox", "serial": "abc", "cpu_model": "Test CPU",
          "flags": ["avx2", "fma"], "cores": 2, "kernel": "6.1", "runtime_versions": {"onnxruntime": "1"}}


def artifact(precision: str = "int8", sha: str = "s1") -> ArtifactRecord:
    return ArtifactRecord("tinynet-e", "tflite", precision, f"/b/{precision}.tflite", sha, 2_000_000,
                          params=2_042_972, macs=24_356_848, resolution=106)


def ok_run(timings: list[int] | None = None) -> RunRecord:
    return RunRecord("tflite", "ok", runs_requested=5, warmup=2, threads=1, cores="1",
                     timings_ns=timings or [300, 100, 1000, 200, 400], init_ms=12.5, first_ms=3.0,
                     harness_overhead_ns=110.0, runtime_version="ai-edge-litert 2.3.0")


def run_child(code: str, *args: str) -> subprocess.Popen:
    """A real second process using the store (not a thread: SQLite locking is per process)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_schema_and_pragmas(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"devices", "artifacts", "runs", "run_stats", "accuracy", "parity", "profiles",
                "profile_rows"} <= tables
        assert s.schema_version() == SCHEMA_VERSION == 4
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    with Store(tmp_path / "r.db") as s:  # reopening an up-to-date store changes nothing
        assert s.schema_version() == SCHEMA_VERSION


def test_version_2_store_is_upgraded_keeping_its_runs(tmp_path: Path) -> None:
    """A results.db of schema 2 (no emulated column, no parity table) gains both; its runs stay."""
    from edgeconv.store import MIGRATIONS

    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as c:
        for stmt in MIGRATIONS[0] + MIGRATIONS[1]:
            c.execute(stmt)
        c.execute("INSERT INTO devices (kind, name, serial, first_seen, last_seen) VALUES "
                  "('board', 'old board', 's1', 'x', 'x')")
        c.execute("INSERT INTO artifacts (model, format, precision, path, sha256, first_seen) VALUES "
                  "('m', 'tflite', 'int8', 'p', 'h', 'x')")
        c.execute("INSERT INTO runs (device_id, artifact_id, runtime, threads, warmup, runs_requested, "
                  "runs_actual, finished_at, status) VALUES (1, 1, 'tflite', 1, 1, 5, 5, 'x', 'ok')")
        c.execute("PRAGMA user_version = 2")
    with Store(db) as s:
        assert s.schema_version() == SCHEMA_VERSION
        (row,) = s.runs()
        assert (row["device"], row["device_emulated"], row["parity"]) == ("old board", 0, None)
        dev = s.upsert_device({"kind": "board", "name": "qemu board", "serial": "s2", "emulated": True})
        art = ArtifactRecord("m", "tflite", "int8", "p", "h")
        run = RunRecord("tflite", "ok", 3, 1, timings_ns=[1_000_000, 2_000_000, 3_000_000],
                        parity={"status": "differs", "inputs": 4, "max_abs_diff": 0.5, "cosine": 0.9,
                                "top1_agreement": 0.75, "tolerance": 0.1, "quant_step": 0.1,
                                "logit_range": 9.0, "reason": "input 2: top-1 differs"})
        s.record_run(dev, art, run)
        new = s.runs()[0]
        assert (new["device_emulated"], new["parity"], new["parity_top1"], new["parity_inputs"]) == \
            (1, "differs", 0.75, 4)
        with pytest.raises(ValueError, match="parity status"):
            s.record_run(dev, art, RunRecord("tflite", "ok", 3, 1, timings_ns=[1, 2, 3],
                                             parity={"status": "maybe"}))


def test_run_round_trip_and_stats_from_raw_timings(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        dev = s.upsert_device(DEVICE)
        run_id = s.record_run(dev, artifact(), ok_run())
        (row,) = s.runs()
        assert row["run_id"] == run_id and row["status"] == "ok" and row["runs_actual"] == 5
        assert row["median_ms"] == pytest.approx(0.0003)
        assert row["p90_ms"] == pytest.approx(0.00076)
        assert row["std_ms"] == pytest.approx(summarize([300, 100, 1000, 200, 400]).std / 1e6)
        assert (row["init_ms"], row["first_ms"], row["harness_overhead_ns"]) == (12.5, 3.0, 110.0)
        assert s.timings(run_id).tolist() == [300, 100, 1000, 200, 400]
        assert row["macs"] == 24_356_848 and row["device"] == "testbox"


def test_device_upsert_is_idempotent_and_keeps_extra_fields(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        a = s.upsert_device(DEVICE)
        b = s.upsert_device(DEVICE | {"kernel": "6.2", "android_sdk": 34})
        assert a == b
        (d,) = s.devices()
        assert d["kernel"] == "6.2" and d["flags"] == "avx2 fma"
        assert '"android_sdk": 34' in d["extra"]
        assert d["first_seen"] <= d["last_seen"]
        with pytest.raises(ValueError, match="device kind"):
            s.upsert_device({"kind": "phone", "name": "x"})


def test_same_artifact_content_is_one_row(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        dev = s.upsert_device(DEVICE)
        s.record_run(dev, artifact(), ok_run())
        s.record_run(dev, artifact(), ok_run())
        s.record_run(dev, artifact(sha="s2"), ok_run())
        assert s.conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 2


def test_failed_run_keeps_error_and_no_stats(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        dev = s.upsert_device(DEVICE)
        rid = s.record_run(dev, artifact(), RunRecord("tflite", "failed", 5, 2, error="x: corrupt"))
        (row,) = s.runs(status="failed")
        assert row["error"] == "x: corrupt" and row["median_ms"] is None and row["runs_actual"] == 0
        assert s.timings(rid).size == 0
        with pytest.raises(ValueError, match="needs its timings"):
            s.record_run(dev, artifact(), RunRecord("tflite", "ok", 5, 2))


def test_latest_ok_run_wins(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db") as s:
        dev = s.upsert_device(DEVICE)
        s.record_run(dev, artifact(), ok_run([5_000_000] * 3))
        newest_ok = s.record_run(dev, artifact(), ok_run([2_000_000] * 3))
        s.record_run(dev, artifact(), RunRecord("tflite", "failed", 3, 0, error="boom"))
        (row,) = s.latest_ok_runs()
        assert row["run_id"] == newest_ok and row["median_ms"] == pytest.approx(2.0)
        assert s.latest_ok_runs(device="other-box") == []
        assert len(s.latest_ok_runs(device="host")) == len(s.latest_ok_runs(device="abc")) == 1


def test_record_accuracy_function(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    record_accuracy("tinynet-e", "tflite", "int8", "imagenet-val", 50000, 0.593, 0.81, 0.97, db=db)
    rid = record_accuracy("tinynet-e", "tflite", "int8", "imagenet-val", 50000, 0.595, db=db)
    with Store(db) as s:
        acc = s.latest_accuracy(["tinynet-e"])
        assert acc[("tinynet-e", "tflite", "int8")]["id"] == rid
        assert acc[("tinynet-e", "tflite", "int8")]["top1"] == pytest.approx(0.595)
    with pytest.raises(ValueError, match=r"top1 must be a fraction in \[0, 1\], not 59.3"):
        record_accuracy("tinynet-e", "tflite", "int8", "imagenet-val", 50000, 59.3, db=db)


def test_default_path_env_and_app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECONV_DB", str(tmp_path / "env.db"))
    assert default_db_path() == tmp_path / "env.db"
    monkeypatch.delenv("EDGECONV_DB")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_db_path() == tmp_path / "cfg" / "edgeconv" / "results.db"
    with Store() as s:  # creates the folder
        assert s.path.is_file()


def test_unusable_paths_are_one_line_user_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as e:
        Store(blocker / "results.db")
    assert str(e.value) == f"results database {blocker}/results.db: {blocker} is not a folder"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserError) as e:
        Store(junk)
    assert str(e.value) == f"results database {junk}: file is not a database"
    with pytest.raises(UserError) as e:
        Store(tmp_path)
    assert str(e.value) == f"results database {tmp_path}: is a folder, not a file"


def test_foreign_or_newer_databases_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE notes (x)")
    with pytest.raises(UserError, match="not an edgeconv results database"):
        Store(other)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as c:
        c.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="schema version 99, newer than this edgeconv"):
        Store(newer)


WRITER = """
    import sys, time
    from pathlib import Path
    from edgeconv.store import Store, ArtifactRecord, RunRecord
    db, tag, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    with Store(db) as s:  # both processes may create the schema at the same moment
        dev = s.upsert_device({"kind": "host", "name": "shared-box"})
        for i in range(40):
            art = ArtifactRecord("m" + tag, "tflite", "int8", "/x", f"{tag}-{i % 3}", 10)
            s.record_run(dev, art, RunRecord("tflite", "ok", 50, 0, timings_ns=list(range(1, 51))))
    print("done", tag)
"""


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    db, go = tmp_path / "shared.db", tmp_path / "go"
    procs = [run_child(WRITER, str(db), tag, str(go)) for tag in ("a", "b")]
    time.sleep(0.5)  # let both interpreters start and wait at the barrier
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.startswith("done")
    with Store(db) as s:
        assert s.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 80
        assert s.conn.execute("SELECT count(*) FROM run_stats").fetchone()[0] == 80
        assert len(s.devices()) == 1  # the same device upserted by both
        assert {r["model"] for r in s.runs()} == {"ma", "mb"}


KILLED_WRITER = """
    import os, signal, sys
    from edgeconv.store import Store, ArtifactRecord, RunRecord
    s = Store(sys.argv[1])
    dev = s.upsert_device({"kind": "host", "name": "box"})
    for i in range(3):
        s.record_run(dev, ArtifactRecord("m", "tflite", "int8", "/x", "sha", 10),
                     RunRecord("tflite", "ok", 4, 0, timings_ns=[i + 1] * 4))
        print("committed", i + 1, flush=True)
    with s.transaction() as c:  # the 4th result: killed before its commit
        c.execute("INSERT INTO runs (device_id, artifact_id, runtime, threads, warmup, runs_requested, "
                  "runs_actual, finished_at, status) VALUES (?, 1, 'tflite', 1, 0, 4, 4, 'now', 'ok')",
                  (dev,))
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_keeps_committed_results(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    p = run_child(KILLED_WRITER, str(db))
    out, err = p.communicate(timeout=60)
    assert p.returncode == -9, err
    assert out.split("\n")[:3] == ["committed 1", "committed 2", "committed 3"]
    with Store(db) as s:
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = s.runs()
        assert len(runs) == 3 and all(r["status"] == "ok" for r in runs)
        assert sorted(int(s.timings(r["run_id"])[0]) for r in runs) == [1, 2, 3]
        dev = s.upsert_device({"kind": "host", "name": "box"})  # still writable afterwards
        s.record_run(dev, ArtifactRecord("m", "tflite", "int8", "/x", "sha", 10),
                     RunRecord("tflite", "ok", 1, 0, timings_ns=[7]))
        assert len(s.runs()) == 4
