"""The results store: one SQLite file holding devices, artifacts, benchmark runs (with their raw
timings) and accuracy results, so reports can compare runs made days apart on different devices.

Why SQLite and these settings: a benchmark of the whole zoo takes hours, so every result is committed
in its own transaction the moment it is measured (a crash or Ctrl-C loses at most the run in flight);
WAL + ``busy_timeout`` let two benchmark processes (host and phone, say) write to the same file at
once. The schema is versioned with ``PRAGMA user_version`` and upgraded by ``MIGRATIONS``.

Default location: ``click.get_app_dir("edgeconv")/results.db``; ``--db PATH`` or ``$EDGECONV_DB``
override it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .bench.stability import assess_run
from .bench.stats import compress_timings, decompress_timings, summarize
from .errors import UserError

ENV_DB = "EDGECONV_DB"
SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 60.0
DEVICE_KINDS = ("host", "android", "board")

# One list of statements per schema version; MIGRATIONS[i] upgrades user_version i -> i + 1.
MIGRATIONS: list[list[str]] = [[
    """CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('host', 'android', 'board')),
        name TEXT NOT NULL,
        serial TEXT NOT NULL DEFAULT '',
        cpu_model TEXT, flags TEXT, cores INTEGER, kernel TEXT, governor TEXT, soc TEXT, abi TEXT,
        os_version TEXT,
        runtime_versions TEXT,          -- JSON object package -> version
        extra TEXT,                     -- JSON object: any other field the device code reports
        first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
        UNIQUE (kind, name, serial))""",
    """CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL, format TEXT NOT NULL, precision TEXT NOT NULL,
        path TEXT NOT NULL, sha256 TEXT NOT NULL, manifest_sha256 TEXT,
        size_bytes INTEGER, params INTEGER, macs INTEGER, resolution INTEGER,
        first_seen TEXT NOT NULL,
        UNIQUE (model, format, precision, sha256))""",
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        device_id INTEGER NOT NULL REFERENCES devices(id),
        artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
        runtime TEXT NOT NULL, runtime_version TEXT,
        threads INTEGER NOT NULL, cores TEXT,       -- cores: the affinity set, e.g. '1' or '0-3'
        warmup INTEGER NOT NULL, runs_requested INTEGER NOT NULL, runs_actual INTEGER NOT NULL,
        started_at TEXT, finished_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), error TEXT,
        temp_before_c REAL, temp_after_c REAL, raw_log TEXT, harness_overhead_ns REAL,
        extra TEXT)""",
    """CREATE TABLE run_stats (
        run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        mean_ms REAL, median_ms REAL, p90_ms REAL, p99_ms REAL, min_ms REAL, max_ms REAL,
        std_ms REAL,                    -- population standard deviation
        init_ms REAL, first_ms REAL,
        timings BLOB)                   -- edgeconv.bench.stats.compress_timings""",
    """CREATE TABLE accuracy (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL, format TEXT NOT NULL, precision TEXT NOT NULL,
        dataset TEXT NOT NULL, n INTEGER NOT NULL,
        top1 REAL NOT NULL, top5 REAL, agreement REAL,   -- fractions in [0, 1]
        artifact_sha256 TEXT, extra TEXT, created_at TEXT NOT NULL)""",
    "CREATE INDEX runs_artifact ON runs (artifact_id, device_id, threads, status)",
    "CREATE INDEX accuracy_model ON accuracy (model, format, precision)",
], [  # 2: stability verdicts, peak memory, tags (edgeconv compare)
    "ALTER TABLE runs ADD COLUMN tag TEXT",
    "ALTER TABLE runs ADD COLUMN verdict TEXT",           # stable | noisy | throttled (NULL: failed)
    "ALTER TABLE runs ADD COLUMN verdict_reasons TEXT",   # JSON list of sentences
    "ALTER TABLE runs ADD COLUMN context TEXT",           # JSON: load, clock, busy tasks, ...
    "ALTER TABLE runs ADD COLUMN peak_rss_mb REAL",
    "ALTER TABLE runs ADD COLUMN import_rss_mb REAL",
    "ALTER TABLE runs ADD COLUMN mem_mb REAL",
    "ALTER TABLE accuracy ADD COLUMN tag TEXT",
    "CREATE INDEX runs_tag ON runs (tag)",
    "CREATE INDEX accuracy_tag ON accuracy (tag)",
], [
    # 2 -> 3: emulated devices (never shown as real hardware) and on-device output parity
    "ALTER TABLE devices ADD COLUMN emulated INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE parity (
        run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        status TEXT NOT NULL CHECK (status IN ('ok', 'differs', 'not checked')),
        inputs INTEGER,                 -- how many fixed inputs were compared
        max_abs_diff REAL, cosine REAL, -- device logits vs the host's, over all inputs
        top1_agreement REAL,            -- fraction in [0, 1]
        tolerance REAL,                 -- the max_abs_diff allowed
        quant_step REAL,                -- int8 outputs: one output quantization step
        logit_range REAL,               -- host logits' max - min
        reason TEXT)                    -- why 'differs' or 'not checked'""",
], [
    # 3 -> 4: per-block profiles (edgeconv profile): one row per recipe block, timed and int8-checked
    """CREATE TABLE profiles (
        id INTEGER PRIMARY KEY,
        device_id INTEGER NOT NULL REFERENCES devices(id),
        artifact_id INTEGER NOT NULL REFERENCES artifacts(id),   -- the whole model that was cut
        runtime TEXT NOT NULL, precision TEXT NOT NULL,
        method TEXT NOT NULL,           -- how block latencies were measured, e.g. 'slices'
        runs INTEGER, warmup INTEGER, threads INTEGER,
        whole_median_ms REAL, whole_p90_ms REAL,     -- the whole model, timed in the same run
        sum_median_ms REAL,             -- sum of the rows' median_ms (NULL if any row failed)
        ratio REAL,                     -- sum_median_ms / whole_median_ms
        error_images INTEGER,           -- images the int8 error columns were computed on
        created_at TEXT NOT NULL, tag TEXT,
        extra TEXT)                     -- JSON: the whole model's status/error, resolution, any other key""",
    """CREATE TABLE profile_rows (
        profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,           -- network order: stem, every stage.block, head
        name TEXT NOT NULL,             -- 'stem', 'blocks.3.1', 'head'
        stage INTEGER,                  -- NULL for stem and head
        block TEXT,                     -- recipe words, e.g. 'ir_k5_s2_e6_c40'
        in_shape TEXT, out_shape TEXT,  -- JSON lists, NHWC
        params INTEGER, macs INTEGER,
        median_ms REAL, p90_ms REAL, share REAL,     -- share: median_ms / sum_median_ms, in [0, 1]
        macs_per_us REAL,
        sqnr_db REAL, local_sqnr_db REAL, cosine REAL,   -- int8 vs fp32: cumulative, block alone
        float_fallback TEXT,            -- JSON list of the block's modules kept in float
        status TEXT, error TEXT,
        extra TEXT,                     -- JSON: any other key of the row
        PRIMARY KEY (profile_id, idx))""",
    "CREATE INDEX profiles_key ON profiles (artifact_id, device_id, precision, runtime)",
]]
PARITY_STATUSES = ("ok", "differs", "not checked")
PARITY_FIELDS = ("status", "inputs", "max_abs_diff", "cosine", "top1_agreement", "tolerance",
                 "quant_step", "logit_range", "reason")


# what Store.runs() / latest_ok_runs() return per run (the keys of each dict, in order)
RUN_SELECT = (
    "r.id AS run_id", "r.finished_at", "r.started_at", "r.status", "r.error", "r.runtime",
    "r.runtime_version", "r.threads", "r.cores", "r.warmup", "r.runs_requested", "r.runs_actual",
    "r.harness_overhead_ns", "r.temp_before_c", "r.temp_after_c", "d.id AS device_id",
    "d.kind AS device_kind", "d.name AS device", "d.serial AS device_serial", "d.cpu_model", "a.model",
    "a.format", "a.precision", "a.path", "a.sha256", "a.size_bytes", "a.params", "a.macs",
    "a.resolution", "s.mean_ms", "s.median_ms", "s.p90_ms", "s.p99_ms", "s.min_ms", "s.max_ms",
    "s.std_ms", "s.init_ms", "s.first_ms", "r.tag", "r.verdict", "r.verdict_reasons", "r.peak_rss_mb",
    "r.import_rss_mb", "r.mem_mb", "d.emulated AS device_emulated", "p.status AS parity",
    "p.inputs AS parity_inputs", "p.max_abs_diff AS parity_max_diff", "p.cosine AS parity_cosine",
    "p.top1_agreement AS parity_top1", "p.tolerance AS parity_tolerance",
    "p.quant_step AS parity_step", "p.reason AS parity_reason")
RUN_FIELDS = tuple(c.split(" AS ")[-1].split(".")[-1] for c in RUN_SELECT)

# a profile (edgeconv.profile): its top-level keys stored in columns of `profiles` ("whole" is
# whole_median_ms/whole_p90_ms plus the rest of it in extra), and each row's keys stored in columns
# of `profile_rows` ("index" is idx); every other key goes to the extra JSON and comes back as it was
PROFILE_COLUMNS = ("runtime", "precision", "method", "runs", "warmup", "threads", "sum_median_ms", "ratio",
                   "error_images", "tag")
PROFILE_ROW_COLUMNS = ("name", "stage", "block", "in_shape", "out_shape", "params", "macs", "median_ms",
                       "p90_ms", "share", "macs_per_us", "sqnr_db", "local_sqnr_db", "cosine",
                       "float_fallback", "status", "error")
PROFILE_ROW_JSON = ("in_shape", "out_shape", "float_fallback")
# what Store.profiles() adds to a profile as it was recorded
PROFILE_STORED_KEYS = ("id", "created_at", "tag", "device_id", "device", "device_kind", "device_serial",
                       "device_emulated", "model", "format", "precision")


def default_db_path() -> Path:
    """``$EDGECONV_DB``, else results.db in the per-user application directory."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    import click

    return Path(click.get_app_dir("edgeconv")) / "results.db"


def now_iso() -> str:
    """UTC timestamp with milliseconds; ISO 8601 strings sort chronologically."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class ArtifactRecord:
    """One converted model file, identified by content (sha256), not by path."""

    model: str
    format: str
    precision: str
    path: str
    sha256: str
    size_bytes: int | None = None
    manifest_sha256: str | None = None
    params: int | None = None
    macs: int | None = None
    resolution: int | None = None


@dataclass
class RunRecord:
    """One benchmark of one artifact on one device with one runtime, as every device backend
    (host, ADB, board) reports it. Statistics are derived from ``timings_ns`` by the store, so the
    stored summary can never disagree with the stored raw timings."""

    runtime: str
    status: str  # "ok" or "failed"
    runs_requested: int
    warmup: int
    threads: int = 1
    timings_ns: Sequence[int] | None = None
    runtime_version: str | None = None
    cores: str | None = None
    error: str | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    temp_before_c: float | None = None
    temp_after_c: float | None = None
    raw_log: str | None = None
    harness_overhead_ns: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] | None = None  # what else happened meanwhile (edgeconv.bench.context)
    tag: str | None = None  # bench --tag: the label compare finds runs by
    peak_rss_mb: float | None = None  # the worker's peak resident memory (VmHWM)
    import_rss_mb: float | None = None  # what the runtime import alone held (the baseline of mem_mb)
    mem_mb: float | None = None  # load + inference: peak - import (benchmark_model: its "overall")
    parity: dict[str, Any] | None = None  # PARITY_FIELDS: the device's outputs vs the host's


BACKFILL_NOTE = "judged from the timings alone when the database was upgraded (no context recorded)"


def _backfill_verdicts(c: sqlite3.Connection) -> None:
    """Runs stored before verdicts existed get one from what was stored: raw timings (or the
    printed aggregates) and the temperatures; the missing context is said in the reasons."""
    from .bench.stability import assess

    rows = c.execute("SELECT r.id, r.extra, r.temp_before_c, r.temp_after_c, s.timings FROM runs r "
                     "LEFT JOIN run_stats s ON s.run_id = r.id WHERE r.status = 'ok'").fetchall()
    for run_id, extra, t0, t1, blob in rows:
        summary = (json.loads(extra) if extra else {}).get("summary")
        v = assess(decompress_timings(blob) if blob else None, summary, None, t0, t1)
        c.execute("UPDATE runs SET verdict = ?, verdict_reasons = ? WHERE id = ?",
                  (v.status, json.dumps([*v.reasons, BACKFILL_NOTE]), run_id))


def _db_error(path: Path, e: BaseException) -> UserError:
    msg = str(e).strip() or type(e).__name__
    if "readonly" in msg or "unable to open" in msg:
        msg += " (is the folder writable? use --db PATH or $EDGECONV_DB)"
    return UserError(f"results database {path}: {msg}")


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=True)


def _plain(v: Any) -> Any:
    """``v`` with numpy scalars and arrays and tuples as Python numbers and lists (what SQLite and
    JSON take)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _run_row(r: sqlite3.Row) -> dict:
    row = dict(r)
    if isinstance(row.get("verdict_reasons"), str):
        row["verdict_reasons"] = json.loads(row["verdict_reasons"])
    return row


class Store:
    """A connection to one results database. Use as a context manager; safe to open from several
    processes at once."""

    def __init__(self, path: str | Path | None = None, timeout_s: float = BUSY_TIMEOUT_S,
                 must_exist: bool = False):
        """``must_exist``: for commands that only read (``results``, ``report``): a missing file is
        an error instead of a new, empty database."""
        self.path = Path(path).expanduser() if path else default_db_path()
        parent = self.path.parent
        if parent.exists() and not parent.is_dir():
            raise UserError(f"results database {self.path}: {parent} is not a folder")
        if self.path.is_dir():
            raise UserError(f"results database {self.path}: is a folder, not a file")
        if must_exist and not self.path.exists():
            raise UserError(f"results database {self.path}: no such file (nothing was stored there yet; "
                            "check --db or $EDGECONV_DB)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"results database {self.path}: cannot create {parent} "
                            f"({e.strerror or e})") from None
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise _db_error(self.path, e) from None
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._wal(timeout_s)
            self._migrate()
        except sqlite3.Error as e:
            self.conn.close()
            raise _db_error(self.path, e) from None
        except UserError:
            self.conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------------
    def _wal(self, timeout_s: float) -> None:
        """``PRAGMA journal_mode = WAL``, retried: when two processes open a new file at the same
        moment, SQLite answers "database is locked" at once instead of waiting ``busy_timeout`` (the
        switch needs the exclusive lock while this connection holds a shared one)."""
        deadline, delay = time.monotonic() + timeout_s, 0.001
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.05)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``BEGIN IMMEDIATE`` takes the write lock up front, so concurrent
        writers queue on ``busy_timeout`` instead of failing on a lock upgrade."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _db_error(self.path, e) from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise _db_error(self.path, e) from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self.transaction() as c:
            version = self.schema_version()  # again, under the lock: another process may have won
            if version > SCHEMA_VERSION:
                raise UserError(f"results database {self.path} has schema version {version}, newer "
                                f"than this edgeconv understands ({SCHEMA_VERSION}); upgrade edgeconv")
            if version == 0 and c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise UserError(f"results database {self.path}: not an edgeconv results database")
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v]:
                    c.execute(stmt)
            if 0 < version < 2:
                _backfill_verdicts(c)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- writes -----------------------------------------------------------------------------------
    def upsert_device(self, info: Mapping[str, Any]) -> int:
        """Insert or refresh a device (``sysinfo.host_info()`` or the ADB equivalent); returns its
        id. Keys beyond the table's columns go to the ``extra`` JSON column."""
        if info.get("kind") not in DEVICE_KINDS:
            raise ValueError(f"device kind must be one of {DEVICE_KINDS}, not {info.get('kind')!r}")
        cols = ("cpu_model", "cores", "kernel", "governor", "soc", "abi", "os_version")
        known = {"kind", "name", "serial", "flags", "runtime_versions", "emulated", *cols}
        extra = {k: v for k, v in info.items() if k not in known}
        flags = info.get("flags")
        values = {
            "kind": info["kind"], "name": info.get("name") or "", "serial": info.get("serial") or "",
            **{k: info.get(k) for k in cols},
            "flags": " ".join(flags) if isinstance(flags, list | tuple) else flags,
            "runtime_versions": _json(info.get("runtime_versions")), "extra": _json(extra or None),
            "emulated": int(bool(info.get("emulated"))),
        }
        now = now_iso()
        names = list(values)
        updates = ", ".join(f"{k} = excluded.{k}" for k in names if k not in ("kind", "name", "serial"))
        sql = (f"INSERT INTO devices ({', '.join(names)}, first_seen, last_seen) "
               f"VALUES ({', '.join('?' * len(names))}, ?, ?) "
               f"ON CONFLICT (kind, name, serial) DO UPDATE SET {updates}, last_seen = excluded.last_seen "
               "RETURNING id")
        with self.transaction() as c:
            return int(c.execute(sql, [*values.values(), now, now]).fetchone()[0])

    @staticmethod
    def _upsert_artifact(c: sqlite3.Connection, a: ArtifactRecord) -> int:
        sql = ("INSERT INTO artifacts (model, format, precision, path, sha256, manifest_sha256, "
               "size_bytes, params, macs, resolution, first_seen) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
               "ON CONFLICT (model, format, precision, sha256) DO UPDATE SET path = excluded.path, "
               "manifest_sha256 = coalesce(excluded.manifest_sha256, manifest_sha256) RETURNING id")
        return int(c.execute(sql, (a.model, a.format, a.precision, a.path, a.sha256, a.manifest_sha256,
                                   a.size_bytes, a.params, a.macs, a.resolution, now_iso())).fetchone()[0])

    def record_run(self, device_id: int, artifact: ArtifactRecord, run: RunRecord) -> int:
        """Store one benchmark result (artifact row, run row, statistics) in one transaction and
        commit it; returns the run id. An ok run needs its raw timings, or, for tools that print only
        aggregates (benchmark_model, benchmark_app), ``run.extra["summary"]`` with count, mean_ms,
        median_ms (may be None), min_ms, max_ms and std_ms, stored as printed (no p90/p99, no blob)."""
        if run.status not in ("ok", "failed"):
            raise ValueError(f"run status must be 'ok' or 'failed', not {run.status!r}")
        timings = np.asarray(run.timings_ns if run.timings_ns is not None else [], dtype=np.int64)
        summary = (run.extra or {}).get("summary") if timings.size == 0 else None
        if run.status == "ok" and timings.size == 0 and not summary:
            raise ValueError("an ok run needs its timings (or the runner's printed summary)")
        verdict = assess_run(run) if run.status == "ok" else None
        with self.transaction() as c:
            artifact_id = self._upsert_artifact(c, artifact)
            run_id = int(c.execute(
                "INSERT INTO runs (device_id, artifact_id, runtime, runtime_version, threads, cores, "
                "warmup, runs_requested, runs_actual, started_at, finished_at, status, error, "
                "temp_before_c, temp_after_c, raw_log, harness_overhead_ns, extra, tag, verdict, "
                "verdict_reasons, context, peak_rss_mb, import_rss_mb, mem_mb) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (device_id, artifact_id, run.runtime, run.runtime_version, run.threads, run.cores,
                 run.warmup, run.runs_requested, int(summary["count"]) if summary else int(timings.size),
                 run.started_at,
                 run.finished_at or now_iso(), run.status, run.error, run.temp_before_c,
                 run.temp_after_c, run.raw_log, run.harness_overhead_ns, _json(run.extra or None),
                 run.tag, verdict.status if verdict else None,
                 _json(list(verdict.reasons)) if verdict else None,
                 _json({**(run.context or {}), "metrics": verdict.metrics} if verdict else run.context),
                 run.peak_rss_mb, run.import_rss_mb, run.mem_mb),
            ).fetchone()[0])
            if timings.size or summary or run.init_ms is not None:
                ms = summarize(timings).as_ms() if timings.size else {}
                if summary:
                    ms = {k: summary.get(f"{k}_ms") for k in ("mean", "median", "min", "max", "std")}
                c.execute(
                    "INSERT INTO run_stats (run_id, mean_ms, median_ms, p90_ms, p99_ms, min_ms, max_ms, "
                    "std_ms, init_ms, first_ms, timings) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, *(ms.get(k) for k in ("mean", "median", "p90", "p99", "min", "max", "std")),
                     run.init_ms, run.first_ms, compress_timings(timings) if timings.size else None))
            if run.parity is not None:
                if run.parity.get("status") not in PARITY_STATUSES:
                    raise ValueError(f"parity status must be one of {PARITY_STATUSES}")
                c.execute(f"INSERT INTO parity (run_id, {', '.join(PARITY_FIELDS)}) "
                          f"VALUES (?{', ?' * len(PARITY_FIELDS)})",
                          (run_id, *(run.parity.get(k) for k in PARITY_FIELDS)))
        return run_id

    def record_profile(self, device_id: int, artifact: ArtifactRecord, profile: Mapping[str, Any]) -> int:
        """Store one per-block profile (the dict ``edgeconv.profile`` makes, see
        ``notes/profile_format.md``) of ``artifact`` on a device, its artifact row and all its block
        rows in one transaction, committed at once; returns the profile id. ``profile["created_at"]``
        (default: now) and ``profile["tag"]`` are optional."""
        for key in ("model", "format"):
            if profile.get(key) not in (None, getattr(artifact, key)):
                raise ValueError(f"profile {key} {profile[key]!r} is not the artifact's "
                                 f"{getattr(artifact, key)!r}")
        for key in ("runtime", "method"):
            if not profile.get(key):
                raise ValueError(f"a profile needs its {key}")
        p = _plain(dict(profile))
        whole = p.get("whole")
        known = {"whole", "rows", *PROFILE_STORED_KEYS, *PROFILE_COLUMNS}  # a profile read back: stored anew
        extra = {k: v for k, v in p.items() if k not in known}
        extra["whole"] = None if whole is None else {k: v for k, v in whole.items()
                                                     if k not in ("median_ms", "p90_ms")}
        values = {k: p.get(k) for k in PROFILE_COLUMNS}
        values["precision"] = values["precision"] or artifact.precision
        rows = []
        for i, r in enumerate(p.get("rows") or []):
            if not r.get("name"):
                raise ValueError(f"profile row {i} has no name")
            rows.append((r.get("index", i), *(_json(r.get(k)) if k in PROFILE_ROW_JSON else r.get(k)
                                              for k in PROFILE_ROW_COLUMNS),
                         _json({k: v for k, v in r.items() if k not in ("index", *PROFILE_ROW_COLUMNS)}
                               or None)))
        with self.transaction() as c:
            artifact_id = self._upsert_artifact(c, artifact)
            profile_id = int(c.execute(
                f"INSERT INTO profiles (device_id, artifact_id, {', '.join(values)}, whole_median_ms, "
                f"whole_p90_ms, created_at, extra) VALUES (?, ?{', ?' * len(values)}, ?, ?, ?, ?) RETURNING id",
                (device_id, artifact_id, *values.values(), (whole or {}).get("median_ms"),
                 (whole or {}).get("p90_ms"), p.get("created_at") or now_iso(), _json(extra)),
            ).fetchone()[0])
            c.executemany(
                f"INSERT INTO profile_rows (profile_id, idx, {', '.join(PROFILE_ROW_COLUMNS)}, extra) "
                f"VALUES (?, ?{', ?' * len(PROFILE_ROW_COLUMNS)}, ?)", [(profile_id, *r) for r in rows])
        return profile_id

    def record_accuracy(self, model: str, format: str, precision: str, dataset: str, n: int,
                        top1: float, top5: float | None = None, agreement: float | None = None,
                        artifact_sha256: str | None = None, extra: Mapping[str, Any] | None = None,
                        created_at: str | None = None, tag: str | None = None) -> int:
        """Store one accuracy evaluation; ``top1``/``top5``/``agreement`` (top-1 agreement with the
        PyTorch reference) are fractions in [0, 1]. Returns the row id."""
        for name, v in (("top1", top1), ("top5", top5), ("agreement", agreement)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], not {v} (a percentage?)")
        if n < 1:
            raise ValueError("n must be at least 1")
        with self.transaction() as c:
            return int(c.execute(
                "INSERT INTO accuracy (model, format, precision, dataset, n, top1, top5, agreement, "
                "artifact_sha256, extra, created_at, tag) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (model, format, precision, dataset, int(n), float(top1), top5, agreement,
                 artifact_sha256, _json(dict(extra) if extra else None), created_at or now_iso(), tag),
            ).fetchone()[0])

    # -- reads ------------------------------------------------------------------------------------
    _RUN_COLUMNS = ", ".join(RUN_SELECT)
    _RUN_JOINS = ("FROM runs r JOIN devices d ON d.id = r.device_id "
                  "JOIN artifacts a ON a.id = r.artifact_id LEFT JOIN run_stats s ON s.run_id = r.id "
                  "LEFT JOIN parity p ON p.run_id = r.id")

    @staticmethod
    def _filters(models: Sequence[str] | None, device: str | None, status: str | None = None,
                 threads: int | None = None, tag: str | None = None) -> tuple[str, list]:
        where, args = ["1"], []
        if tag is not None:
            where.append("r.tag = ?")
            args.append(tag)
        if models:
            where.append(f"a.model IN ({', '.join('?' * len(models))})")
            args += list(models)
        if device:  # a kind ('host', 'android'), a device name or a serial
            where.append("(d.kind = ? OR d.name = ? OR d.serial = ?)")
            args += [device] * 3
        if status:
            where.append("r.status = ?")
            args.append(status)
        if threads is not None:
            where.append("r.threads = ?")
            args.append(threads)
        return " AND ".join(where), args

    def runs(self, models: Sequence[str] | None = None, device: str | None = None,
             status: str | None = None, limit: int | None = None, tag: str | None = None) -> list[dict]:
        """Runs, newest first, joined with device, artifact and statistics (no raw timings)."""
        where, args = self._filters(models, device, status, tag=tag)
        sql = f"SELECT {self._RUN_COLUMNS} {self._RUN_JOINS} WHERE {where} ORDER BY r.id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_run_row(r) for r in self.conn.execute(sql, args)]

    def latest_ok_runs(self, models: Sequence[str] | None = None, device: str | None = None,
                       threads: int | None = 1, tag: str | None = None) -> list[dict]:
        """The newest ok run of each (model, format, precision, runtime, device, threads)."""
        where, args = self._filters(models, device, "ok", threads, tag)
        sql = (f"SELECT * FROM (SELECT {self._RUN_COLUMNS}, row_number() OVER (PARTITION BY a.model, "
               f"a.format, a.precision, r.runtime, r.device_id, r.threads ORDER BY r.id DESC) AS rank_ "
               f"{self._RUN_JOINS} WHERE {where}) WHERE rank_ = 1 "
               "ORDER BY model, format, precision, device")
        return [{k: v for k, v in _run_row(r).items() if k != "rank_"} for r in self.conn.execute(sql, args)]

    def latest_accuracy(self, models: Sequence[str] | None = None, tag: str | None = None
                        ) -> dict[tuple[str, str, str], dict]:
        """The newest accuracy result per (model, format, precision) (with ``tag``: of that tag)."""
        where, args = ("1", [])
        if models:
            where, args = f"model IN ({', '.join('?' * len(models))})", list(models)
        if tag is not None:
            where, args = f"{where} AND tag = ?", [*args, tag]
        sql = (f"SELECT * FROM accuracy WHERE {where} ORDER BY id")  # later rows overwrite earlier
        return {(r["model"], r["format"], r["precision"]): dict(r) for r in self.conn.execute(sql, args)}

    def profiles(self, models: Sequence[str] | None = None, device: str | None = None,
                 precision: str | None = None, latest: bool = True) -> list[dict]:
        """Stored profiles, newest first, each as it was given to :meth:`record_profile` plus
        :data:`PROFILE_STORED_KEYS` (``device_emulated`` a bool); with ``latest`` only the newest of
        each (model, device, precision, runtime). ``device``: a kind, a device name or a serial."""
        where, args = self._filters(models, device)
        if precision:
            where += " AND pr.precision = ?"
            args.append(precision)
        sql = ("SELECT pr.*, d.name AS device, d.kind AS device_kind, d.serial AS device_serial, "
               "d.emulated AS device_emulated, a.model, a.format, row_number() OVER (PARTITION BY a.model, "
               "pr.device_id, pr.precision, pr.runtime ORDER BY pr.id DESC) AS rank_ "
               "FROM profiles pr JOIN devices d ON d.id = pr.device_id JOIN artifacts a ON a.id = pr.artifact_id "
               f"WHERE {where}")
        heads = [dict(r) for r in self.conn.execute(
            f"SELECT * FROM ({sql}) {'WHERE rank_ = 1 ' if latest else ''}ORDER BY id DESC", args)]
        rows: dict[int, list[dict]] = {h["id"]: [] for h in heads}
        if heads:
            ids = list(rows)
            for r in self.conn.execute(f"SELECT * FROM profile_rows WHERE profile_id IN "
                                       f"({', '.join('?' * len(ids))}) ORDER BY profile_id, idx", ids):
                row = {"index": r["idx"], **{k: json.loads(r[k]) if k in PROFILE_ROW_JSON and r[k] is not None
                                             else r[k] for k in PROFILE_ROW_COLUMNS}}
                rows[r["profile_id"]].append({**row, **json.loads(r["extra"] or "{}")})
        out = []
        for h in heads:
            extra = json.loads(h["extra"] or "{}")
            whole = extra.pop("whole", {})
            out.append({
                **{k: h[k] for k in PROFILE_STORED_KEYS}, "device_emulated": bool(h["device_emulated"]),
                **{k: h[k] for k in PROFILE_COLUMNS}, **extra,
                "whole": None if whole is None else {"median_ms": h["whole_median_ms"],
                                                     "p90_ms": h["whole_p90_ms"], **whole},
                "rows": rows[h["id"]]})
        return out

    def timings(self, run_id: int) -> np.ndarray:
        """The raw per-run timings (ns) of a run, for statistics not stored in ``run_stats``."""
        row = self.conn.execute("SELECT timings FROM run_stats WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or row[0] is None:
            return np.zeros(0, dtype=np.int64)
        return decompress_timings(row[0])

    def devices(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM devices ORDER BY id")]


def record_accuracy(model: str, format: str, precision: str, dataset: str, n: int, top1: float,
                    top5: float | None = None, agreement: float | None = None, *,
                    db: str | Path | None = None, artifact_sha256: str | None = None,
                    extra: Mapping[str, Any] | None = None, tag: str | None = None) -> int:
    """Open the results store (``db`` or the default), record one accuracy result, close it."""
    with Store(db) as store:
        return store.record_accuracy(model, format, precision, dataset, n, top1, top5, agreement,
                                     artifact_sha256=artifact_sha256, extra=extra, tag=tag)
