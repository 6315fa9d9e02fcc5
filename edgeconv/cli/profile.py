"""``edgeconv profile``: option parsing and rendering; the work is :mod:`edgeconv.profile`."""
from __future__ import annotations

import click

from ..errors import UserError
from .common import (
    MAX_RUNS,
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


class _Lines:
    """One stderr line per measured block (the whole model last)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def __call__(self, event: str, **kw) -> None:
        if event == "warn":
            warn(str(kw.get("message")))
        elif event == "step":
            click.echo(f"edgeconv: {kw['message']}", err=True)
        elif event == "measured":
            self.done += 1
            where = f" on {kw['serial']}" if kw.get("serial") else ""
            what = f"{kw['median_ms']:.4f} ms median ({kw.get('verdict')})" if kw.get("status") == "ok" \
                else f"failed: {kw.get('error')}"
            click.echo(f"[{self.done}/{self.total}] {kw['block']}{where}: {what}", err=True)


def _show(profile: dict, fmt: str) -> None:
    from ..report import profile_columns, profile_table_rows, profile_title, rich_table, to_markdown

    rows = profile_table_rows(profile)
    cols = profile_columns(rows)
    title = profile_title(profile)
    if fmt == "markdown":
        click.echo(f"### {title}\n\n{to_markdown(rows, cols)}")
    else:
        console().print(rich_table(rows, cols, title=title))


def _show_compare(a: dict, b: dict, fmt: str) -> None:
    from ..report import STAGE_COMPARE_COLUMNS, compare_stage_rows, compare_title, rich_table, to_markdown

    rows = compare_stage_rows(a, b)
    if fmt == "markdown":
        click.echo(f"### {compare_title(a, b)}\n\n{to_markdown(rows, STAGE_COMPARE_COLUMNS)}")
    else:
        console().print(rich_table(rows, STAGE_COMPARE_COLUMNS, title=compare_title(a, b)))


@click.command("profile", cls=Command, interrupted="the profiles completed so far are saved")
@click.argument("name")
@click.option("--device", default="host", show_default=True, metavar="host|android|board|PROFILE",
              help="Where to time the blocks: this machine, the attached ADB device(s), or a device profile.")
@click.option("--serial", "serials", multiple=True, metavar="S", help="ADB device to use (repeatable).")
@click.option("--precision", default="int8", show_default=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Which TFLite artifact to profile (int8 adds the per-block error against fp32).")
@click.option("--runs", default=200, show_default=True, type=click.IntRange(1, MAX_RUNS),
              help="Timed invocations per block (and of the whole model).")
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(0, MAX_RUNS),
              help="Untimed invocations first.")
@click.option("--core", type=click.IntRange(0, 4095), help="Host: the core to pin to (default: the last one).")
@click.option("--cooldown", type=click.FloatRange(0, 3600), metavar="SECONDS",
              help="ADB devices: longest wait between blocks for the device to cool down (default 0).")
@click.option("--runner", metavar="PATH", help="ADB devices: benchmark_model to push, device:/path, or 'python'.")
@click.option("--images", "error_images", default=32, show_default=True, type=click.IntRange(0, 1000),
              help="int8: calibration images the per-block error is computed on (0: no error columns).")
@click.option("--compare", "compare", metavar="NAME",
              help="Also profile NAME the same way and show the two models per stage, side by side.")
@click.option("--plot", metavar="FILE", help="Draw the blocks' latency shares (and int8 SQNR) to FILE.png/.svg.")
@click.option("--markdown", "fmt", flag_value="markdown", help="Print Markdown tables.")
@click.option("--table", "fmt", flag_value="table", default=True, hidden=True)
@tag_option
@out_option
@weights_option
@db_option
@json_option
def profile_cmd(name: str, device: str, serials: tuple[str, ...], precision: str, runs: int, warmup: int,
                core: int | None, cooldown: float | None, runner: str | None, error_images: int,
                compare: str | None, plot: str | None, fmt: str, tag: str | None, out: str,
                weights: str | None, db: str | None, as_json: bool) -> None:
    """Where NAME's time and int8 error go, block by block of its recipe: params, MACs, latency
    (median, p90; each block cut out of the built .tflite and timed alone), share, MACs/µs, and for
    int8 each block's SQNR against fp32. Saved to the results database; shown again by
    'edgeconv report --profile NAME'."""
    from ..profile import ProfileRequest, run_profile
    from ..recipe import load_recipe, resolve
    from ..store import Store

    if plot is not None:
        from ..report import PLOT_SUFFIXES

        if not plot.lower().endswith(PLOT_SUFFIXES):
            raise UserError(f"--plot {plot}: the file must end in {' or '.join(PLOT_SUFFIXES)}")
    names = [name] + ([compare] if compare else [])
    for n in names:
        load_recipe(n)  # an unknown model is the first error, before anything is built
    results: dict[str, list[dict]] = {}
    with Store(db) as store:
        for n in names:
            blocks = sum(len(s.blocks) for s in resolve(load_recipe(n)).stages) + 2
            request = ProfileRequest(n, device=device, precision=precision, runs=runs, warmup=warmup, out=out,
                                     weights=weights, serials=serials, runner=runner, cooldown=cooldown,
                                     core=core, tag=tag, error_images=error_images)
            results[n] = run_profile(request, store, _Lines(blocks + 1))
        db_path = str(store.path)
    main = results[name]
    facts = None
    if plot is not None and main:
        from ..report import plot_profile, plot_profile_compare

        facts = plot_profile_compare(main[0], results[compare][0], plot) if compare and results[compare] \
            else plot_profile(main[0], plot)
    if as_json:
        payload = {"db": db_path, "profiles": main}
        if compare:
            payload["compare"] = results[compare]
        if facts is not None:
            payload["plot"] = plot
        echo_json(payload)
    else:
        for p in main:
            _show(p, fmt)
        if compare:
            for a, b in zip(main, results[compare], strict=False):
                _show_compare(a, b, fmt)
        if plot is not None:
            click.echo(f"plot: {plot}", err=True)
    everything = main + (results[compare] if compare else [])
    failed = [(p["device"], r["name"]) for p in everything for r in p["rows"] if r["status"] != "ok"]
    failed += [(p["device"], "the whole model") for p in everything if p["whole"]["status"] != "ok"]
    for p in main:
        if p["device_emulated"]:
            warn(f"{p['device']} is emulated: its timings are not latency (the block shares "
                 "are those of an instruction-set emulator)")
    if failed:
        raise UserError(f"{len(failed)} block(s) failed to run (e.g. {failed[0][1]} on {failed[0][0]}); "
                        "the profile is saved with them marked failed")
