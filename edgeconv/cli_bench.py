"""``edgeconv bench``, ``edgeconv results`` and ``edgeconv report``.

The library half (``run_bench`` and its helpers) picks the artifacts from a build's manifest.json
(building them first when missing), dispatches to the device's harness and commits each result to
the store as soon as it exists. The Click half only parses options and renders. ``run_bench`` is the
seam for other devices: ``--device android`` gets its own harness next to ``_bench_host``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import ArtifactError, UserError
from .export import ALL_PRECISIONS as PRECISIONS
from .export import PRECISIONS as BUILD_MATRIX  # what `edgeconv build` makes per format
from .util import sha256_file

if TYPE_CHECKING:  # numpy-backed modules load when a command runs: `edgeconv --help` stays fast
    from .store import ArtifactRecord, RunRecord, Store

FORMAT_OF_RUNTIME = {"tflite": "tflite", "openvino": "openvino", "onnxruntime": "onnx"}
RUNTIME_OF_FORMAT = {v: k for k, v in FORMAT_OF_RUNTIME.items()}
RUNTIMES = tuple(FORMAT_OF_RUNTIME)  # == bench.host.HOST_RUNTIMES (a test keeps them equal)
DEVICES = ("host", "android", "board")


# ------------------------------------------------------------------------------------------------
# library half
# ------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One artifact to benchmark with one runtime."""

    artifact: ArtifactRecord
    runtime: str
    file: Path

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.artifact.precision}"


@dataclass
class Outcome:
    target: Target
    run: RunRecord
    run_id: int | None


def parse_choices(value: str | Sequence[str] | None, allowed: Sequence[str], what: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (order kept, duplicates dropped); an unknown name is a user error."""
    if value is None:
        return list(allowed)
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item not in allowed:
            raise UserError(f"unknown {what} {item!r} (choose from {', '.join(allowed)})")
        if item not in out:
            out.append(item)
    if not out:
        raise UserError(f"no {what} given (choose from {', '.join(allowed)})")
    return out


def read_manifest(folder: str | Path) -> tuple[dict, str]:
    """(manifest, sha256 of the manifest file) of a build folder; the hash ties a run to the exact
    build (recipe, weights, tool versions) it measured."""
    from .build import MANIFEST, load_manifest  # light: no torch/TensorFlow at import

    if not Path(folder).is_dir():
        raise ArtifactError(f"{folder}: no such artifacts folder")
    manifest = load_manifest(folder)
    if not isinstance(manifest.get("artifacts"), list):
        raise ArtifactError(f"{Path(folder) / MANIFEST}: no artifacts list")
    return manifest, sha256_file(Path(folder) / MANIFEST)


def select_targets(manifest: dict, folder: str | Path, manifest_sha: str | None,
                   runtimes: Sequence[str], precisions: Sequence[str]) -> list[Target]:
    """The manifest's artifacts that the requested runtimes can run at the requested precisions,
    ordered by runtime then precision as the user listed them."""
    from .store import ArtifactRecord

    found = []
    for a in manifest["artifacts"]:
        runtime = RUNTIME_OF_FORMAT.get(a.get("format"))
        if runtime not in runtimes or a.get("precision") not in precisions:
            continue
        file = Path(folder) / a["path"]
        sha = a.get("sha256") or (sha256_file(file) if file.is_file() else "")
        art = ArtifactRecord(model=manifest.get("model", Path(folder).name), format=a["format"],
                             precision=a["precision"], path=str(file.resolve()), sha256=sha,
                             size_bytes=a.get("size_bytes"), manifest_sha256=manifest_sha,
                             params=manifest.get("params"), macs=manifest.get("macs"),
                             resolution=manifest.get("resolution"))
        found.append(Target(art, runtime, file))
    found.sort(key=lambda t: (runtimes.index(t.runtime), precisions.index(t.artifact.precision)))
    return found


def _missing(manifest: dict | None, runtimes: Sequence[str], precisions: Sequence[str],
             folder: Path | None = None) -> list[str]:
    """Requested format/precision pairs the build can make but the manifest does not list (or, given
    ``folder``, whose file is gone)."""
    have = {(a.get("format"), a.get("precision")) for a in (manifest or {}).get("artifacts", [])
            if folder is None or (folder / a.get("path", "")).is_file()}
    return [f"{fmt}/{p}" for fmt in (FORMAT_OF_RUNTIME[r] for r in runtimes) for p in precisions
            if p in BUILD_MATRIX[fmt] and (fmt, p) not in have]


def ensure_artifacts(name: str, out: str | Path, weights: str | None, runtimes: Sequence[str],
                     precisions: Sequence[str], warn: Callable[[str], None] | None = None
                     ) -> tuple[dict, Path, str]:
    """The manifest of ``out/NAME``, building the missing formats/precisions first. Only a missing
    artifact or other --weights trigger a build: a cached build still loads torch and runs parity."""
    folder = Path(out) / (Path(name).stem if name.endswith((".yaml", ".yml")) else name)
    try:
        manifest, sha = read_manifest(folder)
    except ArtifactError:
        manifest = None
    stale_weights = manifest is not None and weights is not None and \
        (manifest.get("weights") or {}).get("spec") != weights
    missing = _missing(manifest, runtimes, precisions, folder)
    if manifest is not None and not stale_weights and not missing:
        return manifest, folder, sha
    try:
        from .build import build
    except ImportError:
        raise UserError(f"{folder}: no artifacts for {name}, and this edgeconv cannot build them; "
                        "pass --artifacts DIR") from None
    formats = sorted({FORMAT_OF_RUNTIME[r] for r in runtimes})
    if warn:
        why = "other --weights" if stale_weights else ", ".join(missing)
        warn(f"building {name} first ({why}); this takes a while")

    def forward(event: str, **kw) -> None:  # the build's own warnings (random weights, calibration)
        if event == "warn" and warn:
            warn(str(kw.get("message")))

    manifest = build(name, weights=weights, formats=formats, precisions=list(precisions), out=str(out),
                     progress=forward)
    folder = Path(out) / manifest.get("model", folder.name)
    manifest, sha = read_manifest(folder)
    return manifest, folder, sha


def _bench_host(targets: list[Target], *, runs: int, warmup: int, threads: int, core: int | None,
                on_result: Callable[[Target, RunRecord], None],
                on_progress: Callable[[Target, str, int, int], None] | None) -> None:
    from .bench.host import BenchJob, bench_host

    jobs = [BenchJob(path=str(t.file), runtime=t.runtime, precision=t.artifact.precision,
                     threads=threads, warmup=warmup, runs=runs, core=core, label=t.label)
            for t in targets]
    by_job = {id(j): t for j, t in zip(jobs, targets, strict=True)}
    bench_host(jobs, on_result=lambda j, rec: on_result(by_job[id(j)], rec),
               on_progress=(lambda j, *a: on_progress(by_job[id(j)], *a)) if on_progress else None)


def device_info(device: str) -> dict:
    """The device record for ``--device``; the seam where ADB/board backends plug in."""
    if device == "host":
        from .sysinfo import host_info

        return host_info()
    raise UserError(f"--device {device}: benchmarking on {device} is not available yet "
                    "(use --device host)")


def run_bench(name: str | None, device: str = "host", *, runtimes: Sequence[str] = RUNTIMES,
              precisions: Sequence[str] = PRECISIONS, runs: int = 1000, warmup: int = 50,
              threads: int = 1, core: int | None = None, artifacts: str | Path | None = None,
              out: str | Path = "build", weights: str | None = None, store: Store | None = None,
              on_start: Callable[[list[Target]], None] | None = None,
              on_result: Callable[[Outcome], None] | None = None,
              on_progress: Callable[[Target, str, int, int], None] | None = None,
              warn: Callable[[str], None] | None = None) -> tuple[dict, list[Outcome]]:
    """Benchmark the artifacts of ``name`` (or of the ``artifacts`` folder) on ``device``.
    Each result goes to ``store`` in its own transaction before the next artifact starts.
    Returns (device info, outcomes); failed artifacts are outcomes with status 'failed'."""
    if runs < 1 or warmup < 0 or threads < 1:
        raise UserError("--runs and --threads must be at least 1, --warmup at least 0")
    info = device_info(device)
    if artifacts is not None:
        manifest, sha = read_manifest(artifacts)
        folder = Path(artifacts)
    elif name:
        manifest, folder, sha = ensure_artifacts(name, out, weights, runtimes, precisions, warn)
    else:
        raise UserError("give a model NAME or --artifacts DIR")
    if name and artifacts is not None and manifest.get("model") not in (None, name, Path(name).stem):
        raise UserError(f"--artifacts {artifacts} holds {manifest.get('model')}, not {name}")
    targets = select_targets(manifest, folder, sha, runtimes, precisions)
    if not targets:
        raise UserError(f"{folder}: no artifacts for --runtime {','.join(runtimes)} "
                        f"--precisions {','.join(precisions)}")
    if warn and artifacts is not None and (gaps := _missing(manifest, runtimes, precisions)):
        warn(f"{folder} has no {', '.join(gaps)} artifacts; benchmarking the others")
    device_id = store.upsert_device(info) if store else None
    if on_start:
        on_start(targets)
    outcomes: list[Outcome] = []

    def record(target: Target, rec: RunRecord) -> None:
        run_id = store.record_run(device_id, target.artifact, rec) if store else None
        outcomes.append(Outcome(target, rec, run_id))
        if on_result:
            on_result(outcomes[-1])

    _bench_host(targets, runs=runs, warmup=warmup, threads=threads, core=core, on_result=record,
                on_progress=on_progress)
    return info, outcomes


def failure_summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line for the exit error when some benchmarks failed (their rows are already stored)."""
    failed = [o for o in outcomes if o.run.status != "ok"]
    if not failed:
        return None
    first = f"{failed[0].target.label}: {failed[0].run.error}"
    return first if len(outcomes) == 1 else f"{len(failed)} of {len(outcomes)} benchmarks failed; {first}"


def outcome_row(o: Outcome) -> dict:
    """Flat, JSON-able summary of one outcome (what the table and --json show)."""
    from .bench.stats import TimingStats, summarize

    r, a = o.run, o.target.artifact
    stats = summarize(r.timings_ns).as_ms() if r.timings_ns else \
        dict.fromkeys(TimingStats.__dataclass_fields__)  # same keys, null, for a failed run
    return {"runtime": r.runtime, "runtime_version": r.runtime_version, "format": a.format,
            "precision": a.precision, "path": a.path, "size_bytes": a.size_bytes, "status": r.status,
            "error": r.error, "run_id": o.run_id, "threads": r.threads, "cores": r.cores,
            **{f"{k}_ms" if k != "count" else "runs": v for k, v in stats.items()},
            "init_ms": r.init_ms, "first_ms": r.first_ms, "harness_overhead_ns": r.harness_overhead_ns}


# ------------------------------------------------------------------------------------------------
# Click half
# ------------------------------------------------------------------------------------------------
class Command(click.Command):
    """Like cli.Group: a user error is one line on stderr and exit 1, never a traceback — also when
    the command is invoked on its own (tests, or before it is registered in the group)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"edgeconv: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeconv: interrupted (results measured so far are saved)", err=True)
            ctx.exit(130)


def _db_option(f):
    return click.option("--db", metavar="PATH",
                        help="Results database (default: $EDGECONV_DB or the user data folder).")(f)


class _Progress:
    """Live progress on a terminal; on a pipe or in CI, one line per finished artifact."""

    def __init__(self) -> None:
        self.total = self.done = 0
        self.bar = self.task = None

    def start(self, targets: list[Target]) -> None:
        self.total = len(targets)
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            from .cli import console

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                console=console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting", total=1)

    def progress(self, target: Target, phase: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"[{self.done + 1}/{self.total}] {target.label} "
                            f"{phase}", completed=done, total=max(total, 1))

    def result(self, o: Outcome) -> None:
        from .bench.stats import summarize

        self.done += 1
        head = f"[{self.done}/{self.total}] {o.target.label}:"
        if o.run.status == "ok":
            st = summarize(o.run.timings_ns or [])
            msg = f"{head} median {st.median / 1e6:.4g} ms over {st.count} runs (saved)"
        else:
            msg = f"{head} FAILED: {o.run.error}"
        if self.bar is not None:
            self.bar.console.print(msg, markup=False)
        else:
            click.echo(msg, err=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@click.command("bench", cls=Command)
@click.argument("name", required=False)
@click.option("--device", default="host", show_default=True, type=click.Choice(DEVICES),
              help="Where to run.")
@click.option("--runtime", "runtime", metavar="LIST", help="Comma list of tflite, openvino, onnxruntime "
              "(default: all).")
@click.option("--precisions", metavar="LIST", help="Comma list of fp32, fp16, dynamic, int8 (default: all).")
@click.option("--runs", default=1000, show_default=True, type=int, help="Timed invocations per artifact.")
@click.option("--warmup", default=50, show_default=True, type=int, help="Untimed invocations first.")
@click.option("--threads", default=1, show_default=True, type=int,
              help="Runtime threads (1: pinned to one core, the paper's protocol).")
@click.option("--core", type=int, help="Core to pin to with --threads 1 (default: the last one).")
@click.option("--artifacts", "artifacts", metavar="DIR",
              help="Benchmark this build folder (with manifest.json) instead of building NAME.")
@click.option("--out", default="build", show_default=True, help="Build folder for NAME.")
@click.option("--weights", metavar="SPEC", help="Weights for the build (see edgeconv build).")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(name: str | None, device: str, runtime: str | None, precisions: str | None, runs: int,
          warmup: int, threads: int, core: int | None, artifacts: str | None, out: str,
          weights: str | None, db: str | None, as_json: bool) -> None:
    """Latency of NAME's artifacts: batch 1, --runs timed runs after --warmup, each runtime in its
    own process. Results are saved to the results database one by one as they are measured."""
    from .cli import warn

    from .store import Store

    runtimes = parse_choices(runtime, RUNTIMES, "runtime")
    precs = parse_choices(precisions, PRECISIONS, "precision")
    progress = _Progress()
    with Store(db) as store:
        try:
            info, outcomes = run_bench(name, device, runtimes=runtimes, precisions=precs, runs=runs,
                                       warmup=warmup, threads=threads, core=core, artifacts=artifacts,
                                       out=out, weights=weights, store=store, warn=warn,
                                       on_start=progress.start, on_result=progress.result,
                                       on_progress=progress.progress)
        finally:
            progress.stop()
        db_path = str(store.path)
    rows = [outcome_row(o) for o in outcomes]
    model = outcomes[0].target.artifact.model
    if as_json:
        from .cli import echo_json

        echo_json({"model": model, "device": info, "db": db_path, "results": rows})
    else:
        _print_bench_table(model, info, rows, threads, db_path)
    if (summary := failure_summary(outcomes)) is not None:
        raise UserError(summary)


def _print_bench_table(model: str, info: dict, rows: list[dict], threads: int, db_path: str) -> None:
    from .cli import console
    from .report import fmt_bytes, fmt_ms, rich_table

    cols = [("runtime", "runtime", str), ("precision", "precision", str), ("size_bytes", "size", fmt_bytes)]
    cols += [(f"{k}_ms", k, fmt_ms)
             for k in ("mean", "median", "p90", "p99", "min", "std")]
    cols += [("runs", "runs", lambda v: "-" if v is None else str(v)), ("init_ms", "init ms", fmt_ms),
             ("first_ms", "first ms", fmt_ms), ("status", "status", str)]
    cores = next((r["cores"] for r in rows if r.get("cores")), "?")
    c = console()
    c.print(rich_table(rows, cols, title=f"{model} on {info.get('name')} ({info.get('cpu_model')}), "
                       f"{threads} thread{'s' if threads > 1 else ''}, cores {cores} — times in ms"))
    overheads = [r["harness_overhead_ns"] for r in rows if r.get("harness_overhead_ns")]
    if overheads:
        c.print(f"harness overhead ≈ {min(overheads):.0f} ns per invocation; saved to {db_path}",
                markup=False)


def _output_format(f):
    for flag, value in (("--json", "json"), ("--csv", "csv")):
        f = click.option(flag, "fmt", flag_value=value, help=f"Print {value.upper()}.")(f)
    return click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(f)


def _emit(rows: list[dict], columns, fields: Sequence[str], fmt: str, title: str) -> None:
    from .report import rich_table, to_csv, to_markdown, visible_columns

    if fmt == "json":
        from .cli import echo_json

        echo_json(rows)
    elif fmt == "csv":
        click.echo(to_csv(rows, fields), nl=False)
    elif fmt == "markdown":
        click.echo(to_markdown(rows, visible_columns(rows, columns)), nl=False)
    else:
        from .cli import console

        console().print(rich_table(rows, visible_columns(rows, columns), title=title))


@click.command("results", cls=Command)
@click.option("--model", "models", metavar="LIST", help="Only these models (comma list).")
@click.option("--device", help="Only this device (kind, name or serial).")
@click.option("--limit", default=100, show_default=True, type=int, help="Newest N runs (0: all).")
@_output_format
@_db_option
def results(models: str | None, device: str | None, limit: int, fmt: str, db: str | None) -> None:
    """Every stored benchmark run, newest first."""
    from .report import RESULTS_COLUMNS, results_rows
    from .store import RUN_FIELDS, Store

    with Store(db) as store:
        rows = results_rows(store, _split(models), device, limit or None)
        path = store.path
    if not rows and fmt == "table":
        click.echo(f"no benchmark results in {path}", err=True)
        return
    _emit(rows, RESULTS_COLUMNS, RUN_FIELDS, fmt, f"benchmark runs in {path}")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("report", cls=Command)
@click.option("--models", metavar="LIST", help="Only these models (comma list).")
@click.option("--device", help="Only this device (kind, name or serial).")
@click.option("--threads", default=1, show_default=True, type=int, help="Runs with this many threads.")
@click.option("--markdown", "fmt", flag_value="markdown", help="Print a Markdown table.")
@_output_format
@click.option("--plot", metavar="FILE", help="Also draw latency vs top-1 (or MACs) to FILE.png/.svg.")
@_db_option
def report(models: str | None, device: str | None, threads: int, fmt: str, plot: str | None,
           db: str | None) -> None:
    """Compare models: one row per model/format/precision/device from its latest successful run,
    with top-1 where an accuracy result exists."""
    from .report import REPORT_COLUMNS, REPORT_FIELDS, plot_pareto, report_rows
    from .store import Store

    with Store(db) as store:
        rows = report_rows(store, _split(models), device, threads)
        path = store.path
    if plot:
        n = plot_pareto(rows, plot)
        click.echo(f"plotted {n} point{'s' if n != 1 else ''} to {plot}", err=True)
    if not rows and fmt in ("table", "markdown"):
        click.echo(f"no successful {threads}-thread benchmark results in {path}", err=True)
        return
    plural = "s" if threads > 1 else ""
    _emit(rows, REPORT_COLUMNS, REPORT_FIELDS, fmt, f"edgeconv report ({threads} thread{plural})")
