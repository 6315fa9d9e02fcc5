"""``edgeconv results`` and ``edgeconv report``: what the results database holds, as tables, CSV,
Markdown, JSON and a plot."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from ..errors import UsageError, UserError
from .common import MAX_ROWS, MAX_THREADS, Command, console, db_option, echo_json, split


def _output_format(f):
    for flag, value in (("--json", "json"), ("--csv", "csv")):
        f = click.option(flag, "fmt", flag_value=value, help=f"Print {value.upper()}.")(f)
    return click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(f)


def _emit(rows: list[dict], columns, fields: Sequence[str], fmt: str, title: str) -> None:
    from ..report import rich_table, to_csv, to_markdown, visible_columns

    if fmt == "json":
        echo_json(rows)
    elif fmt == "csv":
        click.echo(to_csv(rows, fields), nl=False)
    elif fmt == "markdown":
        click.echo(to_markdown(rows, visible_columns(rows, columns)), nl=False)
    else:
        console().print(rich_table(rows, visible_columns(rows, columns), title=title))


@click.command("results", cls=Command)
@click.option("--model", "models", metavar="LIST", help="Only these models (comma list).")
@click.option("--device", help="Only this device (kind, name or serial).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0, MAX_ROWS),
              help="Newest N runs (0: all).")
@click.option("--tag", metavar="NAME", help="Only runs saved with bench --tag NAME.")
@_output_format
@db_option
def results(models: str | None, device: str | None, limit: int, tag: str | None, fmt: str, db: str | None) -> None:
    """Every stored benchmark run, newest first."""
    from ..report import RESULTS_COLUMNS, results_rows
    from ..store import RUN_FIELDS, Store

    with Store(db, must_exist=True) as store:
        rows = results_rows(store, split(models), device, limit or None, tag)
        path = store.path
    if not rows and fmt == "table":
        click.echo(f"no benchmark results in {path}", err=True)
        return
    _emit(rows, RESULTS_COLUMNS, RUN_FIELDS, fmt, f"benchmark runs in {path}")


@click.command("report", cls=Command)
@click.option("--models", metavar="LIST", help="Only these models (comma list).")
@click.option("--device", help="Only this device (kind, name or serial).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, MAX_THREADS),
              help="Runs with this many threads.")
@click.option("--markdown", "fmt", flag_value="markdown", help="Print a Markdown table.")
@_output_format
@click.option("--plot", metavar="FILE", help="Also draw latency vs top-1 (measured, else published) to FILE.png/.svg; "
              "with --profile: the first profile's per-block latency shares.")
@click.option("--tag", metavar="NAME", help="Only results saved with bench/eval --tag NAME.")
@click.option("--profile", "profile_name", metavar="NAME",
              help="Show the latest stored per-block profile(s) of model NAME (edgeconv profile NAME) instead.")
@click.option("--precision", metavar="P", help="With --profile: only profiles of this precision (int8, fp32, ...).")
@db_option
def report(models: str | None, device: str | None, threads: int, fmt: str, plot: str | None,
           tag: str | None, profile_name: str | None, precision: str | None, db: str | None) -> None:
    """Compare models: one row per model/format/precision/device from its latest successful run,
    with top-1 where an accuracy result exists. With --profile NAME: NAME's per-block profile, one
    table per device and precision."""
    from ..report import REPORT_COLUMNS, REPORT_FIELDS, plot_pareto, report_rows
    from ..store import Store

    if profile_name is not None:
        for given, flag in ((models, "--models"), (tag, "--tag")):
            if given is not None:
                raise UsageError(f"--profile takes no {flag} (it shows one model's latest profiles)")
        _report_profiles(profile_name, device, precision, fmt, plot, db)
        return
    if precision is not None:
        raise UsageError("--precision goes with --profile NAME")
    with Store(db, must_exist=True) as store:
        rows = report_rows(store, split(models), device, threads, tag)
        path = store.path
    if plot:
        n = len(plot_pareto(rows, plot))
        click.echo(f"plotted {n} point{'s' if n != 1 else ''} to {plot}", err=True)
    if not rows and fmt in ("table", "markdown"):
        click.echo(f"no successful {threads}-thread benchmark results in {path}", err=True)
        return
    plural = "s" if threads > 1 else ""
    _emit(rows, REPORT_COLUMNS, REPORT_FIELDS, fmt, f"edgeconv report ({threads} thread{plural})")
    if fmt in ("table", "markdown"):
        for r in rows:
            if r.get("verdict") not in (None, "stable"):
                click.echo(f"(!) {r['model']} {r['format']}/{r['precision']} on {r['device']}: {r['verdict']}: "
                           f"{'; '.join(r.get('verdict_reasons') or [])} (run {r['run_id']})", err=True)


def _report_profiles(name: str, device: str | None, precision: str | None, fmt: str, plot: str | None,
                     db: str | None) -> None:
    """``report --profile NAME``: the latest stored profile of NAME per device, precision and
    runtime; one table each (Markdown: a heading each), one CSV, or the stored profiles as JSON."""
    from ..report import (
        PROFILE_FIELDS,
        plot_profile,
        profile_columns,
        profile_table_rows,
        profile_title,
        rich_table,
        to_csv,
        to_markdown,
    )
    from ..store import Store, default_db_path

    where = "".join(f" {w} {v}" for w, v in (("on", device), ("at precision", precision)) if v)
    missing = f"no stored profile of {name}{where}; run 'edgeconv profile {name}' first"
    path = Path(db).expanduser() if db else default_db_path()
    if not path.is_file():
        raise UserError(f"{missing} (nothing is stored in {path} yet)")
    with Store(path, must_exist=True) as store:
        profiles = store.profiles([name], device, precision)
    if not profiles:
        raise UserError(missing)
    if plot:
        n = len(plot_profile(profiles[0], plot))
        click.echo(f"plotted {n} blocks of {name} ({profiles[0]['precision']} on {profiles[0]['device']}) "
                   f"to {plot}", err=True)
    if fmt == "json":
        echo_json(profiles)
        return
    tables = [(profile_title(p), profile_table_rows(p)) for p in profiles]
    if fmt == "csv":
        click.echo(to_csv([r for _t, rows in tables for r in rows], PROFILE_FIELDS), nl=False)
    elif fmt == "markdown":
        click.echo("\n".join(f"### {title}\n\n{to_markdown(rows, profile_columns(rows))}" for title, rows in tables),
                   nl=False)
    else:
        out = console()
        for title, rows in tables:
            out.print(rich_table(rows, profile_columns(rows), title=title))
