"""``edgeconv bench`` and ``edgeconv devices``: option parsing and rendering only; the work is done
by :mod:`edgeconv.bench.run` and :mod:`edgeconv.bench.android`."""
from __future__ import annotations

import sys

import click

from ..bench.run import Outcome, Target, failure_summary, mismatch_summary, outcome_label, outcome_row, run_bench
from ..errors import UserError
from ..formats import PRECISIONS, RUNTIMES, parse_choices
from .common import (
    MAX_RUNS,
    MAX_THREADS,
    Command,
    console,
    db_option,
    echo_json,
    json_option,
    out_option,
    tag_option,
    warn,
    weights_option,
)


class _Progress:
    """Live progress on a terminal; on a pipe or in CI, one line per finished artifact."""

    def __init__(self) -> None:
        self.total = self.done = 0
        self.bar = self.task = None

    def start(self, targets: list[Target]) -> None:
        self.total = len(targets)
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                console=console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting", total=1)

    def progress(self, target: Target, phase: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"[{self.done + 1}/{self.total}] {target.label} "
                            f"{phase}", completed=done, total=max(total, 1))

    def result(self, o: Outcome) -> None:
        from ..bench.stability import assess_run
        from ..bench.stats import summarize

        self.done += o.accepted
        head = f"[{self.done + (not o.accepted)}/{self.total}] {outcome_label(o)}:"
        repeat = o.run.extra.get("repeat")
        verdict = assess_run(o.run).status if o.run.status == "ok" else ""
        then = (f", {verdict}: repeating" if not o.accepted else f", {verdict}") + \
            (f" (repeat {repeat})" if repeat else "")
        if o.run.status == "ok" and o.run.timings_ns:
            st = summarize(o.run.timings_ns)
            msg = f"{head} median {st.median / 1e6:.4g} ms over {st.count} runs{then} (saved)"
        elif o.run.status == "ok":
            summary = o.run.extra["summary"]
            msg = f"{head} mean {summary['mean_ms']:.4g} ms over {summary['count']} runs{then} (saved)"
        else:
            msg = f"{head} FAILED: {o.run.error}"
        if o.run.parity and o.run.parity.get("status") == "differs":
            msg += f"; OUTPUT DIFFERS FROM HOST: {o.run.parity.get('reason')}"
        elif o.device and o.device.get("emulated"):
            msg += " [emulated device: not a latency of real hardware]"
        if self.bar is not None:
            self.bar.console.print(msg, markup=False)
        else:
            click.echo(msg, err=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@click.command("bench", cls=Command, interrupted="results measured so far are saved")
@click.argument("name", required=False)
@click.option("--device", default=None, metavar="host|android|board|PROFILE",
              help="Where to run: this machine, every attached ADB device (phones and boards, in "
              "parallel), or a profile from devices/ (a name or a .yaml path). Default: host, or "
              "android with --farm.")
@click.option("--farm", metavar="HOST:PORT", help="Benchmark the devices of the farm whose head is at "
              "HOST:PORT (edgeconv farm head), on the hosts they are attached to.")
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="--farm: the farm's token (default: this host's farm folder).")
@click.option("--model", "model_pattern", metavar="PATTERN",
              help="--farm: only devices whose model matches this pattern (e.g. 'Pixel 8*').")
@click.option("--serial", "serials", multiple=True, metavar="S",
              help="ADB device to use (repeatable; HOST:PORT is `adb connect`ed). Default: all attached.")
@click.option("--runtime", "runtime", metavar="LIST", help="Comma list of tflite, openvino, onnxruntime "
              "(default: all on the host, tflite on ADB devices).")
@click.option("--precisions", metavar="LIST", help="Comma list of fp32, fp16, dynamic, int8 (default: all).")
@click.option("--runs", default=1000, show_default=True, type=click.IntRange(1, MAX_RUNS),
              help="Timed invocations per artifact.")
@click.option("--warmup", default=50, show_default=True, type=click.IntRange(0, MAX_RUNS),
              help="Untimed invocations first.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, MAX_THREADS),
              help="Runtime threads (1: pinned to one core, the paper's protocol).")
@click.option("--core", type=click.IntRange(0, MAX_THREADS - 1),
              help="Host: core to pin to with --threads 1 (default: the last one).")
@click.option("--cores", metavar="big|little|all|MASK",
              help="ADB devices: cores to pin to, or a hex taskset mask (default: the profile's, big).")
@click.option("--cooldown", type=click.FloatRange(0, 3600), metavar="SECONDS",
              help="ADB devices: longest wait between artifacts for the temperature to get back near "
              "idle (default: the profile's, 30).")
@click.option("--runner", metavar="PATH",
              help="ADB devices: benchmark_model binary to push, device:/path of one already there, or "
              "'python' for edgeconv's own runner (default: the profile's).")
@click.option("--timeout", default=3600.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(0, 86400, min_open=True),
              help="ADB devices: longest run of one artifact (benchmark_model's --max_secs).")
@click.option("--artifacts", "artifacts", metavar="DIR",
              help="Benchmark this build folder (with manifest.json) instead of building NAME.")
@click.option("--until-stable", "until_stable", type=click.IntRange(1, 100), is_flag=False, flag_value=5,
              default=1, metavar="[MAX]",
              help="Measure each artifact again (up to MAX times, 5 without a number) until its verdict "
              "is stable; every repeat is saved, the accepted one is shown.")
@tag_option
@click.option("--allow-mismatch", is_flag=True,
              help="ADB devices: exit 0 even when a device's outputs differ from the host's "
              "(the runs are marked 'output differs from host' either way).")
@out_option
@weights_option
@db_option
@json_option
def bench(name: str | None, device: str | None, farm: str | None, token_file: str | None,
          model_pattern: str | None, serials: tuple[str, ...], runtime: str | None,
          precisions: str | None, runs: int, warmup: int, threads: int, core: int | None,
          cores: str | None, cooldown: float | None, runner: str | None, timeout: float,
          artifacts: str | None, until_stable: int, tag: str | None, allow_mismatch: bool, out: str,
          weights: str | None, db: str | None, as_json: bool) -> None:
    """Latency of NAME's artifacts: batch 1, --runs timed runs after --warmup, each runtime in its
    own process. Results are saved to the results database one by one as they are measured."""
    from ..store import Store

    if model_pattern and not farm:
        raise UserError("--model chooses among farm devices: give --farm HOST:PORT too")
    device = device or ("android" if farm else "host")
    runtimes = parse_choices(runtime, RUNTIMES, "--runtime") if runtime else None
    precs = parse_choices(precisions, PRECISIONS, "--precisions")
    progress = _Progress()
    with Store(db) as store:
        try:
            info, outcomes = run_bench(name, device, runtimes=runtimes, precisions=precs, runs=runs,
                                       warmup=warmup, threads=threads, core=core, artifacts=artifacts,
                                       out=out, weights=weights, store=store, warn=warn,
                                       on_start=progress.start, on_result=progress.result,
                                       on_progress=progress.progress, serials=serials, cores=cores,
                                       cooldown=cooldown, runner=runner, timeout=timeout, tag=tag,
                                       until_stable=until_stable, farm=farm, token_file=token_file,
                                       model_pattern=model_pattern)
        finally:
            progress.stop()
        db_path = str(store.path)
    rows = [outcome_row(o) for o in outcomes if o.accepted]
    model = outcomes[0].target.artifact.model
    if as_json:
        echo_json({"model": model, "device": info, "db": db_path, "results": rows})
    elif device == "host":
        _print_bench_table(model, info, rows, threads, db_path)
    else:
        for serial in dict.fromkeys(r["serial"] for r in rows):
            one = next(o.device for o in outcomes if o.device and o.device.get("serial") == serial)
            _print_bench_table(model, one, [r for r in rows if r["serial"] == serial], threads, db_path)
    for o, r in zip([o for o in outcomes if o.accepted], rows, strict=True):
        if r["verdict"] not in (None, "stable"):
            hint = "" if until_stable > 1 else "; --until-stable N repeats it until it is"
            advice = f"stop other jobs on core(s) {r['cores']} or pick an idle one with --core" \
                if device == "host" else "let the device cool down, close other apps"
            warn(f"{outcome_label(o)} is {r['verdict']}: {'; '.join(r['verdict_reasons'])} (its figures may "
                 f"not be trustworthy: {advice}{hint})")
    if (summary := failure_summary(outcomes)) is not None:
        raise UserError(summary)
    if not allow_mismatch and (mismatch := mismatch_summary(outcomes)) is not None:
        raise UserError(mismatch)


def _print_bench_table(model: str, info: dict, rows: list[dict], threads: int, db_path: str) -> None:
    from ..report import fmt_bytes, fmt_mb, fmt_ms, rich_table

    cols = [("runtime", "runtime", str), ("precision", "precision", str), ("size_bytes", "size", fmt_bytes)]
    cols += [(f"{k}_ms", k, fmt_ms)
             for k in ("mean", "median", "p90", "p99", "min", "std")]
    cols += [("runs", "runs", lambda v: "-" if v is None else str(v)), ("init_ms", "init ms", fmt_ms),
             ("first_ms", "first ms", fmt_ms), ("mem_mb", "mem MB", fmt_mb),
             ("import_rss_mb", "import MB", fmt_mb), ("status", "status", str),
             ("verdict", "verdict", lambda v: "-" if v is None else str(v))]
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
@json_option
def devices(serials: tuple[str, ...], as_json: bool) -> None:
    """Attached ADB devices (phones and boards): model, SoC or board, Android or Linux version, ABI,
    core clusters (max frequency per core) and which profile from devices/ applies."""
    from ..bench.adb import Adb
    from ..bench.android import list_devices

    rows = list_devices(Adb(), serials)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no ADB devices (`adb devices` lists none): plug one in with USB debugging on, or "
                   "`adb connect HOST:PORT`", err=True)
        return
    from ..report import rich_table

    text = lambda v: "-" if v is None else str(v)  # noqa: E731
    cols = [(k, h, text) for k, h in (("serial", "serial"), ("state", "state"), ("model", "model"),
                                      ("soc", "SoC / board"), ("os", "OS"), ("abi", "ABI"),
                                      ("clusters", "cores (max GHz)"), ("profile", "profile"))]
    console().print(rich_table(rows, cols, title="ADB devices"))
    for r in rows:
        if r.get("note"):
            warn(f"{r['serial']}: {r['note']}")
        if r.get("emulated"):
            warn(f"{r['serial']} is emulated ({r['emulation']}): its timings are not those of real hardware")
