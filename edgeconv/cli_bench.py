"""``edgeconv bench``, ``edgeconv results`` and ``edgeconv report``.

The library half (``run_bench`` and its helpers) picks the artifacts from a build's manifest.json
(building them first when missing), dispatches to the device's harness and commits each result to
the store as soon as it exists. The Click half only parses options and renders. ``run_bench``
dispatches on ``--device``: ``host`` to :mod:`edgeconv.bench.host`; ``android``, ``board`` or a
profile from ``devices/`` to :mod:`edgeconv.bench.android` (every ADB device in parallel).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .devices import REMOTE_RUNTIMES  # light: no numpy, no adb
from .errors import ArtifactError, UserError
from .export import ALL_PRECISIONS as PRECISIONS
from .export import PRECISIONS as BUILD_MATRIX  # what `edgeconv build` makes per format
from .util import sha256_file

if TYPE_CHECKING:  # numpy-backed modules load when a command runs: `edgeconv --help` stays fast
    from .bench.adb import Adb
    from .bench.android import DevicePlan, RemoteOptions
    from .devices import Profile
    from .store import ArtifactRecord, RunRecord, Store

FORMAT_OF_RUNTIME = {"tflite": "tflite", "openvino": "openvino", "onnxruntime": "onnx"}
RUNTIME_OF_FORMAT = {v: k for k, v in FORMAT_OF_RUNTIME.items()}
RUNTIMES = tuple(FORMAT_OF_RUNTIME)  # == bench.host.HOST_RUNTIMES (a test keeps them equal)
DEVICES = ("host", "android", "board")  # or the name of a profile in devices/


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
    device: dict | None = None  # the device's record, for runs on ADB devices


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
    """The device record of the host (ADB devices describe themselves in bench.android)."""
    if device == "host":
        from .sysinfo import host_info

        return host_info()
    raise UserError(f"--device {device}: not a local device (use --device host)")


@dataclass
class RemoteRequest:
    """What ``--device android|board|PROFILE`` needs beyond the host options."""

    profile: Profile | None  # None for plain android/board
    plans: list[DevicePlan]
    adb: Adb


def _remote_request(device: str, runtimes: Sequence[str], core: int | None, cores: str | None,
                    serials: Sequence[str], adb: Adb | None) -> RemoteRequest:
    """Validate the options of an ADB benchmark and find its devices (before any build)."""
    from .bench.adb import Adb
    from .bench.android import plan_devices
    from .devices import check_cores, find_profile

    bad = [r for r in runtimes if r not in REMOTE_RUNTIMES]
    if bad:
        raise UserError(f"--device {device} runs {' and '.join(REMOTE_RUNTIMES)} only, not {bad[0]}")
    if core is not None:
        raise UserError("--core is for --device host; on ADB devices use --cores big|little|all|MASK")
    if cores is not None:
        check_cores(cores)
    profile = None if device in DEVICES else find_profile(device)
    adb = adb or Adb()
    return RemoteRequest(profile, plan_devices(adb, serials, profile), adb)


def _bench_remote(request: RemoteRequest, targets: list[Target], store: Store | None, opts: RemoteOptions,
                  on_result: Callable[[Outcome], None] | None,
                  on_progress: Callable[[Target, str, int, int], None] | None,
                  warn: Callable[[str], None] | None) -> tuple[dict, list[Outcome]]:
    from .bench.android import bench_remote, record_result

    infos: dict[str, dict] = {}
    ids: dict[str, int | None] = {}
    outcomes: list[Outcome] = []

    def on_device(serial: str, info: dict) -> None:
        infos[serial] = info
        ids[serial] = store.upsert_device(info) if store else None

    def record(serial: str, target: Target, rec: RunRecord) -> None:
        run_id = record_result(store, ids[serial], target.artifact, rec) if store else None
        outcomes.append(Outcome(target, rec, run_id, infos[serial]))
        if on_result:
            on_result(outcomes[-1])

    bench_remote(targets, request.plans, opts, adb=request.adb, on_device=on_device, on_result=record,
                 on_progress=(lambda serial, t, phase: on_progress(t, f"{phase} on {serial}", 0, 1))
                 if on_progress else None, warn=warn)
    found = [infos[p.serial] for p in request.plans if p.serial in infos]
    info = found[0] if len(found) == 1 else {"kind": "android", "name": f"{len(found)} devices",
                                             "cpu_model": "ADB", "devices": found}
    return info, outcomes


def run_bench(name: str | None, device: str = "host", *, runtimes: Sequence[str] | None = None,
              precisions: Sequence[str] = PRECISIONS, runs: int = 1000, warmup: int = 50,
              threads: int = 1, core: int | None = None, artifacts: str | Path | None = None,
              out: str | Path = "build", weights: str | None = None, store: Store | None = None,
              on_start: Callable[[list[Target]], None] | None = None,
              on_result: Callable[[Outcome], None] | None = None,
              on_progress: Callable[[Target, str, int, int], None] | None = None,
              warn: Callable[[str], None] | None = None, serials: Sequence[str] = (),
              cores: str | None = None, cooldown: float | None = None, runner: str | None = None,
              timeout: float = 3600.0, reconnect_timeout: float = 30.0, adb: Adb | None = None
              ) -> tuple[dict, list[Outcome]]:
    """Benchmark the artifacts of ``name`` (or of the ``artifacts`` folder) on ``device``: ``host``,
    ``android``/``board`` (every attached ADB device, or ``serials``) or a profile name.
    Each result goes to ``store`` in its own transaction as soon as it exists.
    Returns (device info, outcomes); failed artifacts are outcomes with status 'failed'."""
    if runs < 1 or warmup < 0 or threads < 1:
        raise UserError("--runs and --threads must be at least 1, --warmup at least 0")
    if cooldown is not None and cooldown < 0 or timeout <= 0:
        raise UserError("--cooldown must be at least 0 and --timeout more than 0")
    request: RemoteRequest | None = None
    if device == "host":
        if serials or cores or cooldown is not None or runner:
            raise UserError("--serial, --cores, --cooldown and --runner are for ADB devices "
                            "(--device android, board or a profile)")
        runtimes = list(runtimes or RUNTIMES)
        info = device_info(device)
    else:
        runtimes = list(runtimes or ("tflite",))
        request = _remote_request(device, runtimes, core, cores, serials, adb)
        info = {}
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
    if request is not None:
        from .bench.android import RemoteOptions

        if on_start:
            on_start(targets * len(request.plans))
        opts = RemoteOptions(runs=runs, warmup=warmup, threads=threads, cores=cores, cooldown=cooldown,
                             runner=runner, timeout_s=timeout, reconnect_timeout_s=reconnect_timeout)
        return _bench_remote(request, targets, store, opts, on_result=on_result, on_progress=on_progress,
                             warn=warn)
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


def outcome_label(o: Outcome) -> str:
    """``tflite int8``, prefixed with the device's serial for ADB devices."""
    return f"{o.device.get('serial')} {o.target.label}" if o.device else o.target.label


def failure_summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line for the exit error when some benchmarks failed (their rows are already stored)."""
    failed = [o for o in outcomes if o.run.status != "ok"]
    if not failed:
        return None
    first = f"{outcome_label(failed[0])}: {failed[0].run.error}"
    return first if len(outcomes) == 1 else f"{len(failed)} of {len(outcomes)} benchmarks failed; {first}"


def outcome_row(o: Outcome) -> dict:
    """Flat, JSON-able summary of one outcome (what the table and --json show). Runs measured by
    benchmark_model carry only its aggregates (no p90/p99)."""
    from .bench.stats import TimingStats, summarize

    r, a = o.run, o.target.artifact
    stats = dict.fromkeys(TimingStats.__dataclass_fields__)  # same keys, null, for a failed run
    if r.timings_ns:
        stats = summarize(r.timings_ns).as_ms()
    elif r.status == "ok" and (summary := r.extra.get("summary")):
        stats.update(count=summary["count"], mean=summary["mean_ms"], median=summary["median_ms"],
                     min=summary["min_ms"], max=summary["max_ms"], std=summary["std_ms"])
    device = {"device": o.device.get("name"), "serial": o.device.get("serial")} if o.device else {}
    return {**device, "runtime": r.runtime, "runtime_version": r.runtime_version, "format": a.format,
            "precision": a.precision, "path": a.path, "size_bytes": a.size_bytes, "status": r.status,
            "error": r.error, "run_id": o.run_id, "threads": r.threads, "cores": r.cores,
            **{f"{k}_ms" if k != "count" else "runs": v for k, v in stats.items()},
            "init_ms": r.init_ms, "first_ms": r.first_ms, "harness_overhead_ns": r.harness_overhead_ns,
            "temp_before_c": r.temp_before_c, "temp_after_c": r.temp_after_c}


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
        head = f"[{self.done}/{self.total}] {outcome_label(o)}:"
        if o.run.status == "ok" and o.run.timings_ns:
            st = summarize(o.run.timings_ns)
            msg = f"{head} median {st.median / 1e6:.4g} ms over {st.count} runs (saved)"
        elif o.run.status == "ok":
            summary = o.run.extra["summary"]
            msg = f"{head} mean {summary['mean_ms']:.4g} ms over {summary['count']} runs (saved)"
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
@click.option("--device", default="host", show_default=True, metavar="host|android|board|PROFILE",
              help="Where to run: this machine, every attached ADB device (phones and boards, in "
              "parallel), or a profile from devices/ (a name or a .yaml path).")
@click.option("--serial", "serials", multiple=True, metavar="S",
              help="ADB device to use (repeatable; HOST:PORT is `adb connect`ed). Default: all attached.")
@click.option("--runtime", "runtime", metavar="LIST", help="Comma list of tflite, openvino, onnxruntime "
              "(default: all on the host, tflite on ADB devices).")
@click.option("--precisions", metavar="LIST", help="Comma list of fp32, fp16, dynamic, int8 (default: all).")
@click.option("--runs", default=1000, show_default=True, type=int, help="Timed invocations per artifact.")
@click.option("--warmup", default=50, show_default=True, type=int, help="Untimed invocations first.")
@click.option("--threads", default=1, show_default=True, type=int,
              help="Runtime threads (1: pinned to one core, the paper's protocol).")
@click.option("--core", type=int, help="Host: core to pin to with --threads 1 (default: the last one).")
@click.option("--cores", metavar="big|little|all|MASK",
              help="ADB devices: cores to pin to, or a hex taskset mask (default: the profile's, big).")
@click.option("--cooldown", type=float, metavar="SECONDS",
              help="ADB devices: longest wait between artifacts for the temperature to get back near "
              "idle (default: the profile's, 30).")
@click.option("--runner", metavar="PATH",
              help="ADB devices: benchmark_model binary to push, device:/path of one already there, or "
              "'python' for edgeconv's own runner (default: the profile's).")
@click.option("--timeout", default=3600.0, show_default=True, type=float, metavar="SECONDS",
              help="ADB devices: longest run of one artifact (benchmark_model's --max_secs).")
@click.option("--artifacts", "artifacts", metavar="DIR",
              help="Benchmark this build folder (with manifest.json) instead of building NAME.")
@click.option("--out", default="build", show_default=True, help="Build folder for NAME.")
@click.option("--weights", metavar="SPEC", help="Weights for the build (see edgeconv build).")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(name: str | None, device: str, serials: tuple[str, ...], runtime: str | None,
          precisions: str | None, runs: int, warmup: int, threads: int, core: int | None,
          cores: str | None, cooldown: float | None, runner: str | None, timeout: float,
          artifacts: str | None, out: str, weights: str | None, db: str | None, as_json: bool) -> None:
    """Latency of NAME's artifacts: batch 1, --runs timed runs after --warmup, each runtime in its
    own process. Results are saved to the results database one by one as they are measured."""
    from .cli import warn
    from .store import Store

    runtimes = parse_choices(runtime, RUNTIMES, "runtime") if runtime else None
    precs = parse_choices(precisions, PRECISIONS, "precision")
    progress = _Progress()
    with Store(db) as store:
        try:
            info, outcomes = run_bench(name, device, runtimes=runtimes, precisions=precs, runs=runs,
                                       warmup=warmup, threads=threads, core=core, artifacts=artifacts,
                                       out=out, weights=weights, store=store, warn=warn,
                                       on_start=progress.start, on_result=progress.result,
                                       on_progress=progress.progress, serials=serials, cores=cores,
                                       cooldown=cooldown, runner=runner, timeout=timeout)
        finally:
            progress.stop()
        db_path = str(store.path)
    rows = [outcome_row(o) for o in outcomes]
    model = outcomes[0].target.artifact.model
    if as_json:
        from .cli import echo_json

        echo_json({"model": model, "device": info, "db": db_path, "results": rows})
    elif device == "host":
        _print_bench_table(model, info, rows, threads, db_path)
    else:
        for serial in dict.fromkeys(r["serial"] for r in rows):
            one = next(o.device for o in outcomes if o.device and o.device.get("serial") == serial)
            _print_bench_table(model, one, [r for r in rows if r["serial"] == serial], threads, db_path)
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
    where = f"{info.get('name')} ({info.get('cpu_model')})"
    if info.get("kind") != "host":
        where = f"{info.get('name')} [{info.get('serial')}] ({info.get('cpu_model') or '?'}, " \
                f"{info.get('clusters_text', '?')})"
    c = console()
    c.print(rich_table(rows, cols, title=f"{model} on {where}, "
                       f"{threads} thread{'s' if threads > 1 else ''}, cores {cores} — times in ms"))
    overheads = [r["harness_overhead_ns"] for r in rows if r.get("harness_overhead_ns")]
    if overheads:
        c.print(f"harness overhead ≈ {min(overheads):.0f} ns per invocation; saved to {db_path}",
                markup=False)
    elif info.get("kind") != "host":
        c.print(f"saved to {db_path}", markup=False)


@click.command("devices", cls=Command)
@click.option("--serial", "serials", multiple=True, metavar="S", help="Only this device (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def devices(serials: tuple[str, ...], as_json: bool) -> None:
    """Attached ADB devices (phones and boards): model, SoC or board, Android or Linux version, ABI,
    core clusters (max frequency per core) and which profile from devices/ applies."""
    from .bench.adb import Adb
    from .bench.android import list_devices

    rows = list_devices(Adb(), serials)
    if as_json:
        from .cli import echo_json

        echo_json(rows)
        return
    if not rows:
        click.echo("no ADB devices (`adb devices` lists none): plug one in with USB debugging on, or "
                   "`adb connect HOST:PORT`", err=True)
        return
    from .cli import console, warn
    from .report import rich_table

    text = lambda v: "-" if v is None else str(v)  # noqa: E731
    cols = [(k, h, text) for k, h in (("serial", "serial"), ("state", "state"), ("model", "model"),
                                      ("soc", "SoC / board"), ("os", "OS"), ("abi", "ABI"),
                                      ("clusters", "cores (max GHz)"), ("profile", "profile"))]
    console().print(rich_table(rows, cols, title="ADB devices"))
    for r in rows:
        if r.get("note"):
            warn(f"{r['serial']}: {r['note']}")


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
