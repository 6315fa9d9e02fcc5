"""``edgeconv eval`` and ``edgeconv check``: accuracy of every artifact on labelled images, and the
quantization gate for CI. The library half is :mod:`edgeconv.evaluate` (and :mod:`edgeconv.quant`
for the float fallback)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import (
    MAX_ROWS,
    MAX_RUNS,
    MAX_THREADS,
    Command,
    calib_options,
    console,
    db_option,
    echo_json,
    formats_option,
    json_option,
    library_output_to_stderr,
    out_option,
    precisions_option,
    progress_printer,
    quiet_option,
    tag_option,
    weights_option,
)

SAVED = "the accuracy rows measured so far are saved"


def _common_options(f):
    """The options eval and check share (weights, build folder, data, calibration, output)."""
    opts = [
        weights_option, out_option,
        click.option("--data", required=True, metavar="DIR",
                     help="Labelled images: ImageFolder (one folder per class; wnid folders are ordered by a "
                          "labels.tsv) or flat <wnid>_*.JPEG files with a labels.tsv."),
        click.option("--limit", type=click.IntRange(1, MAX_ROWS), metavar="N",
                     help="Evaluate N images sampled deterministically (default: all)."),
        calib_options, formats_option, precisions_option,
        click.option("--threads", default=2, show_default=True, type=click.IntRange(1, MAX_THREADS),
                     help="Threads per runtime while evaluating."),
        db_option, json_option, quiet_option, tag_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _progress(quiet: bool):
    """The build's progress lines, plus one line per float-fallback trial."""
    base = progress_printer(quiet)

    def progress(event: str, **kw) -> None:
        if event == "trial":
            if not quiet:
                click.echo(f"    · {kw['fmt']}: {kw['layer']} in float -> drop {kw['drop']:.1f} pt"
                           f"{'' if kw['kept'] else ' (no gain, back to int8)'}", err=True)
            return
        base(event, **kw)

    return progress


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _table(ev, gate=None):
    from rich.table import Table

    ref = ev.reference
    title = f"{ev.model} on {ev.dataset}: {ev.n} images" + (f" ({len(ev.skipped)} undecodable skipped)"
                                                              if ev.skipped else "")
    t = Table(title=title, title_justify="left", caption=f"weights: {ev.weights.get('spec') or 'random init'}",
              caption_justify="left")
    cols = [("artifact", "left"), ("top-1 %", "right"), ("top-5 %", "right"), ("drop pt", "right"),
            ("agree %", "right"), ("ms/img", "right"), ("float ops", "left")]
    if gate is not None:
        cols.append(("check", "left"))
    for col, just in cols:
        t.add_column(col, justify=just)
    rows = {r.label: r for r in gate.rows} if gate is not None else {}
    for r in ev.results:
        cells = [r.label, _pct(r.top1), _pct(r.top5), "-" if r is ref else f"{ev.drop(r):+.2f}",
                 _pct(r.agreement), f"{1000 * r.seconds / max(r.n, 1):.2f}",
                 _ops(r.float_fallback)]
        if gate is not None:
            row = rows.get(r.label)
            cells.append("reference" if row is None else "ok" if row.ok else f"FAIL (> {gate.max_drop:g})")
        t.add_row(*cells)
    return t


@click.command("eval", cls=Command, interrupted=SAVED)
@click.argument("name")
@_common_options
def eval_cmd(name, weights, out, data, limit, calib, calib_size, formats, precisions, threads, db, as_json, quiet,
             tag):
    """Top-1/top-5 of every artifact of NAME (PyTorch fp32, ONNX, TFLite fp32/fp16/dynamic/int8,
    OpenVINO fp32/fp16/int8) on labelled images, and each one's agreement with PyTorch. Missing
    artifacts are built first. Results go to the results database (see edgeconv report)."""
    from ..evaluate import evaluate

    with library_output_to_stderr():
        ev = evaluate(name, data, weights=weights, out=out, limit=limit, calib=calib, calib_size=calib_size,
                      formats=formats, precisions=precisions, threads=threads, db=db, progress=_progress(quiet),
                      tag=tag)
    if as_json:
        echo_json(ev.to_dict())
        return
    console().print(_table(ev))


@click.command("check", cls=Command, interrupted=SAVED)
@click.argument("name")
@_common_options
@click.option("--max-drop", type=click.FloatRange(0), metavar="PT",
              help="Largest allowed top-1 drop vs PyTorch fp32, in points. Default: the recipe's "
                   "quantization.max_drop.")
@click.option("--junit", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write JUnit XML: one testcase per artifact, a failure where the drop is over the limit.")
@click.option("--no-fallback", is_flag=True,
              help="Gate only: no sensitivity pass keeping the most damaged int8 ops in float.")
@click.option("--latency-runs", default=200, show_default=True, type=click.IntRange(0, MAX_RUNS),
              help="Single-thread runs timing int8 vs the float-fallback artifact (0: do not time).")
def check_cmd(name, weights, out, data, limit, calib, calib_size, formats, precisions, threads, db, as_json, quiet,
              tag, max_drop, junit, no_fallback, latency_runs):
    """Fail (exit 1) if any artifact's top-1 drops more than --max-drop points below PyTorch fp32.

    \b
    An int8 artifact over the limit first gets a sensitivity pass: the ops that hurt most stay in
    float (TFLite: QuantizationDebugger statistics + denylisted nodes; OpenVINO: NNCF's accuracy
    control) until the limit holds; that mixed artifact then replaces the int8 one in the build
    (manifest: precision int8 with float_fallback) and its latency cost is reported.

    
    Exit codes: 0 passed, 1 a gate failed, 2 a bad command line, 3 a data, artifact or tool error
    (then the --junit file holds one <error> saying why)."""
    from ..evaluate import check, junit_xml
    from ..util import as_interrupt, atomic_write_text, check_writable

    if junit:
        check_writable(junit)  # before minutes of evaluation, not after
    try:
        _check_command_line(name, formats, precisions)
        with library_output_to_stderr():
            res = check(name, data, weights=weights, out=out, limit=limit, calib=calib, calib_size=calib_size,
                        formats=formats, precisions=precisions, max_drop=max_drop, fallback=not no_fallback,
                        threads=threads, latency_runs=latency_runs, db=db, progress=_progress(quiet),
                        tag=tag)
    except BaseException as e:
        e = as_interrupt(e)
        if junit:
            _junit_error(junit, name, e)
        raise _check_error(e) from None
    if junit:
        atomic_write_text(junit, junit_xml(res.evaluation, res.gate))
    if as_json:
        echo_json(res.to_dict())
    else:
        c = console()
        c.print(_table(res.evaluation, res.gate))
        for fb in res.fallbacks:
            c.print(_fallback_line(fb), markup=False)
        if res.gate.passed:
            c.print(res.gate.summary(), markup=False)
    res.gate.raise_for_failures()


def _check_command_line(name: str, formats: str, precisions: str) -> None:
    """What check's exit code 2 covers beyond Click's own checks: an unknown model, unknown formats."""
    from ..errors import UsageError, UserError
    from ..formats import FORMATS, PRECISIONS, parse_choices
    from ..recipe import recipe_names, unknown_model_message

    if not Path(name).exists() and name not in recipe_names():
        raise UsageError(unknown_model_message(name))
    try:
        parse_choices(formats, FORMATS, "--formats")
        parse_choices(precisions, PRECISIONS, "--precisions")
    except UsageError:
        raise
    except UserError as e:
        raise UsageError(str(e)) from None


def _check_error(e: BaseException) -> BaseException:
    """check's exit codes: 2 for a bad command line, 3 for every other error that stops it before a
    verdict (data, artifacts, checkpoints; tool failures and unwritable files are 3 already)."""
    from ..errors import UsageError, UserError
    from ..evaluate import CheckError

    if isinstance(e, UserError) and not isinstance(e, UsageError) and e.exit_code != 3:
        return CheckError(str(e))
    return e


def _junit_error(junit: str, name: str, e: BaseException) -> None:
    """The JUnit file says why there is no verdict (CI shows an error, not a missing report)."""
    from ..evaluate import junit_error_xml
    from ..util import atomic_write_text

    if isinstance(e, KeyboardInterrupt):
        kind, message = type(e).__name__, "interrupted before a verdict"
    else:
        kind = type(e).__name__
        message = (f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror
                   else str(e).strip().splitlines()[0] if str(e).strip() else kind)
    try:
        atomic_write_text(junit, junit_error_xml(Path(name).stem if Path(name).suffix else name, message, kind))
    except OSError:
        pass  # the error being reported matters more than the report


def _ops(names: list[str], width: int = 48) -> str:
    """'3: conv_stem (CONV_2D), blocks.0.0.conv_dw (…), …' cut to ``width`` characters."""
    if not names:
        return ""
    text = f"{len(names)}: {', '.join(names)}"
    return text if len(text) <= width else text[:width - 1] + "…"


def _fallback_line(fb) -> str:
    lat = fb.latency_ms or {}
    cost = ""
    if lat.get("int8") and lat.get("mixed"):
        cost = (f"; 1-thread latency {lat['int8']:.3f} -> {lat['mixed']:.3f} ms "
                f"({100 * (lat['mixed'] / lat['int8'] - 1):+.0f} %)")
    ops = ", ".join(fb.float_ops) if fb.float_ops else "none"
    verdict = "replaces the int8 artifact" if fb.reached else "limit not reached, int8 artifact unchanged"
    return (f"{fb.format}/int8 float fallback: {len(fb.float_ops)} op(s) kept in float ({ops}); drop "
            f"{fb.drop_before:.2f} -> {fb.drop_after:.2f} pt{cost}; {verdict}")
