"""Running benchmarks: ``run_bench`` and its helpers, the library behind ``edgeconv bench``.

``run_bench`` picks the artifacts from a build's manifest.json (building them first when missing),
dispatches on ``--device`` (``host`` to :mod:`edgeconv.bench.host`; ``android``, ``board`` or a profile
from ``devices/`` to :mod:`edgeconv.bench.android`, every ADB device in parallel) and commits each
result to the store as soon as it exists.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ArtifactError, UsageError, UserError
from ..formats import BUILD_MATRIX, PRECISIONS, REMOTE_RUNTIMES, RUNTIMES, TABLE, format_of
from ..util import sha256_file

if TYPE_CHECKING:  # numpy-backed modules load when a command runs: `edgeconv --help` stays fast
    from ..bench.adb import Adb
    from ..bench.android import DevicePlan, RemoteOptions
    from ..devices import Profile
    from ..store import ArtifactRecord, RunRecord, Store

DEVICES = ("host", "android", "board")  # or the name of a profile in devices/


@dataclass
class Target:
    """One artifact to benchmark with one runtime."""

    artifact: ArtifactRecord
    runtime: str
    file: Path
    manifest: dict | None = field(default=None, repr=False, compare=False)  # its build's manifest

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.artifact.precision}"


@dataclass
class Outcome:
    target: Target
    run: RunRecord
    run_id: int | None
    device: dict | None = None  # the device's record, for runs on ADB devices
    accepted: bool = True  # False: an --until-stable repeat that a later repeat replaced


def is_final(rec: RunRecord, until_stable: int) -> bool:
    """Whether ``rec`` is the repeat ``--until-stable`` reports: failed, stable, or the last allowed."""
    from ..bench.stability import assess_run

    return rec.status != "ok" or assess_run(rec).stable or int(rec.extra.get("repeat", 1)) >= until_stable


def _label_run(rec: RunRecord, tag: str | None, manifest: dict) -> None:
    """What every stored run carries for ``compare``: its tag and the build's tool versions."""
    rec.tag = tag
    if manifest.get("tools"):
        rec.extra.setdefault("tools", manifest["tools"])


def read_manifest(folder: str | Path) -> tuple[dict, str]:
    """(manifest, sha256 of the manifest file) of a build folder; the hash ties a run to the exact
    build (recipe, weights, tool versions) it measured."""
    from ..build import MANIFEST, load_manifest  # light: no torch/TensorFlow at import

    if Path(folder).is_file():
        hint = (f"give its folder, {Path(folder).parent}" if Path(folder).name == MANIFEST
                else f"--artifacts takes a build folder, the one holding {MANIFEST} (e.g. build/tinynet-e)")
        raise ArtifactError(f"{folder}: is a file, not a build folder; {hint}")
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
    from ..store import ArtifactRecord

    found = []
    for a in manifest["artifacts"]:
        fmt = TABLE.get(a.get("format"))
        runtime = fmt.runtime if fmt else None
        if runtime not in runtimes or a.get("precision") not in precisions:
            continue
        file = Path(folder) / a["path"]
        sha = _checked_sha(file, a)
        art = ArtifactRecord(model=manifest.get("model", Path(folder).name), format=a["format"],
                             precision=a["precision"], path=str(file.resolve()), sha256=sha,
                             size_bytes=a.get("size_bytes"), manifest_sha256=manifest_sha,
                             params=manifest.get("params"), macs=manifest.get("macs"),
                             resolution=manifest.get("resolution"))
        found.append(Target(art, runtime, file, manifest))
    found.sort(key=lambda t: (runtimes.index(t.runtime), precisions.index(t.artifact.precision)))
    return found


def check_host_cores(threads: int, core: int | None) -> None:
    """--threads and --core must fit the CPUs this process may use: refused before anything runs."""
    import os

    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, any count of threads
        return
    if threads > len(allowed):
        raise UsageError(f"--threads {threads}: this machine lets edgeconv use {len(allowed)} core(s)")
    if core is not None and core not in allowed:
        from .host import cpuset_str

        raise UsageError(f"--core {core}: not one of the usable cores {cpuset_str(set(allowed))}")


def _checked_sha(file: Path, entry: dict) -> str:
    """The sha256 of ``file``, which must be the one the manifest lists: a stored result always
    belongs to the artifact it names. A missing file fails alone when measured, under the listed hash."""
    if not file.is_file():
        return entry.get("sha256") or ""
    sha = sha256_file(file)
    if entry.get("sha256") and sha != entry["sha256"]:
        raise ArtifactError(f"{file}: sha256 {sha[:12]}... is not the manifest's {entry['sha256'][:12]}...: the "
                            "file changed after the build; rebuild it (edgeconv build NAME --force)")
    return sha


def _changed(manifest: dict | None, runtimes: Sequence[str], precisions: Sequence[str], folder: Path) -> list[str]:
    """Requested artifacts whose file is no longer the one the manifest lists."""
    wanted = {format_of(r) for r in runtimes}
    return [f"{a['format']}/{a['precision']}" for a in (manifest or {}).get("artifacts", [])
            if a.get("format") in wanted and a.get("precision") in precisions and a.get("sha256")
            and (folder / a["path"]).is_file() and sha256_file(folder / a["path"]) != a["sha256"]]


def _missing(manifest: dict | None, runtimes: Sequence[str], precisions: Sequence[str],
             folder: Path | None = None) -> list[str]:
    """Requested format/precision pairs the build can make but the manifest does not list (or, given
    ``folder``, whose file is gone)."""
    have = {(a.get("format"), a.get("precision")) for a in (manifest or {}).get("artifacts", [])
            if folder is None or (folder / a.get("path", "")).is_file()}
    return [f"{fmt}/{p}" for fmt in (format_of(r) for r in runtimes) for p in precisions
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
    changed = _changed(manifest, runtimes, precisions, folder)
    if manifest is not None and not stale_weights and not missing and not changed:
        return manifest, folder, sha
    try:
        from ..build import build
    except ImportError:
        raise UserError(f"{folder}: no artifacts for {name}, and this edgeconv cannot build them; "
                        "pass --artifacts DIR") from None
    from ..recipe import load_recipe

    load_recipe(name)  # an unknown model is the error, not "building it first"
    formats = sorted({format_of(r) for r in runtimes})
    if warn:
        why = "other --weights" if stale_weights else ", ".join(missing) or \
            f"{', '.join(changed)} changed since the build"
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
                on_progress: Callable[[Target, str, int, int], None] | None, until_stable: int = 1,
                invoke_only: bool = False) -> None:
    from ..bench.host import BenchJob, bench_host

    jobs = [BenchJob(path=str(t.file), runtime=t.runtime, precision=t.artifact.precision,
                     threads=threads, warmup=warmup, runs=runs, core=core, label=t.label,
                     invoke_only=invoke_only)
            for t in targets]
    by_job = {id(j): t for j, t in zip(jobs, targets, strict=True)}
    bench_host(jobs, on_result=lambda j, rec: on_result(by_job[id(j)], rec),
               on_progress=(lambda j, *a: on_progress(by_job[id(j)], *a)) if on_progress else None,
               until_stable=until_stable)


def device_info(device: str) -> dict:
    """The device record of the host (ADB devices describe themselves in bench.android)."""
    if device == "host":
        from ..sysinfo import host_info

        return host_info()
    raise UserError(f"--device {device}: not a local device (use --device host)")


@dataclass
class RemoteRequest:
    """What ``--device android|board|PROFILE`` needs beyond the host options."""

    profile: Profile | None  # None for plain android/board
    plans: list[DevicePlan]
    adb: Adb


def _remote_request(device: str, runtimes: Sequence[str], core: int | None, cores: str | None,
                    serials: Sequence[str], adb: Adb | None, plan: bool = True) -> RemoteRequest:
    """Validate the options of an ADB benchmark and find its devices (before any build)."""
    from ..bench.adb import Adb
    from ..bench.android import plan_devices
    from ..devices import check_cores, find_profile

    bad = [r for r in runtimes if r not in REMOTE_RUNTIMES]
    if bad:
        raise UserError(f"--device {device} runs {' and '.join(REMOTE_RUNTIMES)} only, not {bad[0]}")
    if core is not None:
        raise UserError("--core is for --device host; on ADB devices use --cores big|little|all|MASK")
    if cores is not None:
        check_cores(cores)
    profile = None if device in DEVICES else find_profile(device)
    adb = adb or Adb()
    return RemoteRequest(profile, plan_devices(adb, serials, profile) if plan else [], adb)


class _DeviceRecorder:
    """Stores what ADB devices (local or on a farm) report: a device row before its results, each
    result in its own transaction as it arrives."""

    def __init__(self, store: Store | None, on_result: Callable[[Outcome], None] | None, opts: RemoteOptions,
                 tag: str | None = None, manifest: dict | None = None) -> None:
        self.store, self.on_result, self.opts = store, on_result, opts
        self.tag, self.manifest = tag, manifest or {}
        self.infos: dict[str, dict] = {}
        self.ids: dict[str, int | None] = {}
        self.outcomes: list[Outcome] = []

    def device(self, serial: str, info: dict) -> None:
        self.infos[serial] = info
        self.ids[serial] = self.store.upsert_device(info) if self.store else None

    def result(self, serial: str, target: Target, rec: RunRecord) -> None:
        from ..bench.android import record_result

        _label_run(rec, self.tag, self.manifest)
        run_id = record_result(self.store, self.ids[serial], target.artifact, rec) if self.store else None
        self.outcomes.append(Outcome(target, rec, run_id, self.infos[serial], is_final(rec, self.opts.until_stable)))
        if self.on_result:
            self.on_result(self.outcomes[-1])

    def summary(self, serials: Sequence[str]) -> tuple[dict, list[Outcome]]:
        found = [self.infos[s] for s in serials if s in self.infos]
        info = found[0] if len(found) == 1 else {"kind": "android", "name": f"{len(found)} devices",
                                                 "cpu_model": "ADB", "devices": found}
        return info, self.outcomes


def _bench_remote(request: RemoteRequest, targets: list[Target], store: Store | None, opts: RemoteOptions,
                  on_result: Callable[[Outcome], None] | None,
                  on_progress: Callable[[Target, str, int, int], None] | None,
                  warn: Callable[[str], None] | None, tag: str | None = None,
                  manifest: dict | None = None) -> tuple[dict, list[Outcome]]:
    from ..bench.android import bench_remote

    rec = _DeviceRecorder(store, on_result, opts, tag, manifest)
    bench_remote(targets, request.plans, opts, adb=request.adb, on_device=rec.device, on_result=rec.result,
                 on_progress=_device_progress(on_progress), warn=warn)
    return rec.summary([p.serial for p in request.plans])


def _device_progress(on_progress: Callable[[Target, str, int, int], None] | None
                     ) -> Callable[[str, Target, str], None] | None:
    return (lambda serial, t, phase: on_progress(t, f"{phase} on {serial}", 0, 1)) if on_progress else None


@dataclass
class FarmRequest:
    """``bench --farm``: the connected farm and the devices chosen on it (before any build)."""

    ray: object
    devices: list[dict]


def _bench_farm(request: FarmRequest, targets: list[Target], store: Store | None, opts: RemoteOptions,
                on_result: Callable[[Outcome], None] | None,
                on_progress: Callable[[Target, str, int, int], None] | None,
                warn: Callable[[str], None] | None, tag: str | None = None,
                manifest: dict | None = None) -> tuple[dict, list[Outcome]]:
    from ..bench.farm import bench_farm
    from ..store import RunRecord, now_iso

    def failed(target: Target, error: str) -> RunRecord:
        return RunRecord(runtime=target.runtime, status="failed", runs_requested=opts.runs, warmup=opts.warmup,
                         threads=opts.threads, error=error, finished_at=now_iso())

    rec = _DeviceRecorder(store, on_result, opts, tag, manifest)
    bench_farm(request.ray, targets, request.devices, opts, on_device=rec.device, on_result=rec.result,
               on_progress=_device_progress(on_progress), warn=warn, failed_record=failed)
    return rec.summary([d["serial"] for d in request.devices])


def run_bench(name: str | None, device: str = "host", *, runtimes: Sequence[str] | None = None,
              precisions: Sequence[str] = PRECISIONS, runs: int = 1000, warmup: int = 50,
              threads: int = 1, core: int | None = None, artifacts: str | Path | None = None,
              out: str | Path = "build", weights: str | None = None, store: Store | None = None,
              on_start: Callable[[list[Target]], None] | None = None,
              on_result: Callable[[Outcome], None] | None = None,
              on_progress: Callable[[Target, str, int, int], None] | None = None,
              warn: Callable[[str], None] | None = None, serials: Sequence[str] = (),
              cores: str | None = None, cooldown: float | None = None, runner: str | None = None,
              timeout: float = 3600.0, reconnect_timeout: float = 30.0, adb: Adb | None = None,
              tag: str | None = None, until_stable: int = 1,
              farm: str | None = None, token_file: str | Path | None = None, model_pattern: str | None = None,
              _farm: FarmRequest | None = None) -> tuple[dict, list[Outcome]]:
    """Benchmark the artifacts of ``name`` (or of the ``artifacts`` folder) on ``device``: ``host``,
    ``android``/``board`` (every attached ADB device, or ``serials``) or a profile name.
    Each result goes to ``store`` in its own transaction as soon as it exists, labelled ``tag``.
    ``until_stable`` > 1 repeats an artifact until its verdict is stable (every repeat stored; the
    ones replaced by a later repeat are outcomes with ``accepted`` False).
    With ``farm`` (HOST:PORT of an ``edgeconv farm head``), the devices are those of the farm's
    nodes (``serials``, ``model_pattern``, ``device`` kind or profile choose among them).
    Returns (device info, outcomes); failed artifacts are outcomes with status 'failed'."""
    if farm is not None:
        if device == "host":
            raise UserError("--farm benchmarks ADB devices: use --device android, board or a profile")
        import contextlib

        from ..bench.farm import choose_devices, connected, farm_devices

        with contextlib.ExitStack() as stack:
            _remote_request(device, runtimes or ("tflite",), core, cores, (), adb, plan=False)
            ray = stack.enter_context(connected(farm, Path(token_file) if token_file else None))
            chosen = choose_devices(farm_devices(ray), device, serials, model_pattern)
            return run_bench(name, device, runtimes=runtimes, precisions=precisions, runs=runs, warmup=warmup,
                             threads=threads, artifacts=artifacts, out=out, weights=weights, store=store,
                             on_start=on_start, on_result=on_result, on_progress=on_progress, warn=warn,
                             cores=cores, cooldown=cooldown, runner=runner, timeout=timeout,
                             reconnect_timeout=reconnect_timeout, tag=tag, until_stable=until_stable,
                             _farm=FarmRequest(ray, chosen))
    if runs < 1 or warmup < 0 or threads < 1:
        raise UsageError("--runs and --threads must be at least 1, --warmup at least 0")
    if cooldown is not None and cooldown < 0 or timeout <= 0:
        raise UsageError("--cooldown must be at least 0 and --timeout more than 0")
    if until_stable < 1:
        raise UsageError("--until-stable must be at least 1")
    request: RemoteRequest | None = None
    if device == "host":
        if serials or cores or cooldown is not None or runner:
            raise UserError("--serial, --cores, --cooldown and --runner are for ADB devices "
                            "(--device android, board or a profile)")
        check_host_cores(threads, core)
        runtimes = list(runtimes or RUNTIMES)
        info = device_info(device)
    else:
        runtimes = list(runtimes or ("tflite",))
        request = _remote_request(device, runtimes, core, cores, serials, adb, plan=_farm is None)
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
        from ..bench.android import RemoteOptions

        opts = RemoteOptions(runs=runs, warmup=warmup, threads=threads, cores=cores, cooldown=cooldown,
                             runner=runner, timeout_s=timeout, reconnect_timeout_s=reconnect_timeout,
                             until_stable=until_stable)
        if _farm is not None:
            if on_start:
                on_start(targets * len(_farm.devices))
            return _bench_farm(_farm, targets, store, opts, on_result=on_result, on_progress=on_progress,
                               warn=warn, tag=tag, manifest=manifest)
        if on_start:
            on_start(targets * len(request.plans))
        return _bench_remote(request, targets, store, opts, on_result=on_result, on_progress=on_progress,
                             warn=warn, tag=tag, manifest=manifest)
    device_id = store.upsert_device(info) if store else None
    if on_start:
        on_start(targets)
    outcomes: list[Outcome] = []

    def record(target: Target, rec: RunRecord) -> None:
        _label_run(rec, tag, manifest)
        run_id = store.record_run(device_id, target.artifact, rec) if store else None
        outcomes.append(Outcome(target, rec, run_id, accepted=is_final(rec, until_stable)))
        if on_result:
            on_result(outcomes[-1])

    _bench_host(targets, runs=runs, warmup=warmup, threads=threads, core=core, on_result=record,
                on_progress=on_progress, until_stable=until_stable)
    return info, outcomes


def outcome_label(o: Outcome) -> str:
    """``tflite int8``, prefixed with the device's serial for ADB devices."""
    return f"{o.device.get('serial')} {o.target.label}" if o.device else o.target.label


def failure_summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line for the exit error when some benchmarks failed (their rows are already stored)."""
    outcomes = [o for o in outcomes if o.accepted]
    failed = [o for o in outcomes if o.run.status != "ok"]
    if not failed:
        return None
    first = f"{outcome_label(failed[0])}: {failed[0].run.error}"
    return first if len(outcomes) == 1 else f"{len(failed)} of {len(outcomes)} benchmarks failed; {first}"


def outcome_row(o: Outcome) -> dict:
    """Flat, JSON-able summary of one outcome (what the table and --json show). Runs measured by
    benchmark_model carry only its aggregates (no p90/p99)."""
    from ..bench.stability import assess_run
    from ..bench.stats import TimingStats, summarize

    r, a = o.run, o.target.artifact
    verdict = assess_run(r) if r.status == "ok" else None
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
            "temp_before_c": r.temp_before_c, "temp_after_c": r.temp_after_c,
            "verdict": verdict.status if verdict else None, "verdict_reasons": list(verdict.reasons) if verdict else [],
            "mem_mb": r.mem_mb, "import_rss_mb": r.import_rss_mb, "peak_rss_mb": r.peak_rss_mb, "tag": r.tag,
            "repeat": r.extra.get("repeat"), "accepted": o.accepted,
            **({"emulated": bool(o.device.get("emulated"))} if o.device else {}),
            **({"parity": r.parity} if r.parity is not None else {})}


def mismatch_summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line for the exit error when a device's outputs differ from the host's."""
    from .parity import describe_mismatch

    differ = [o for o in outcomes if o.run.parity and o.run.parity.get("status") == "differs"]
    if not differ:
        return None
    first = describe_mismatch(outcome_label(differ[0]), differ[0].run.parity)
    more = f"{len(differ)} of {len(outcomes)} runs: " if len(outcomes) > 1 else ""
    return f"{more}{first} (results are saved; --allow-mismatch accepts them)"
