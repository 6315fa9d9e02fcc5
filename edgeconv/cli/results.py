"""``edgeconv results`` and ``edgeconv report``: what the results database holds, as tables, CSV,
Markdown, JSON and a plot."""
from __future__ import annotations

from collections.abc import Sequence

import click

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
@click.option("--plot", metavar="FILE", help="Also draw latency vs top-1 (measured, else published) to FILE.png/.svg.")
@click.option("--tag", metavar="NAME", help="Only results saved with bench/eval --tag NAME.")
@db_option
def report(models: str | None, device: str | None, threads: int, fmt: str, plot: str | None,
           tag: str | None, db: str | None) -> None:
    """Compare models: one row per model/format/precision/device from its latest successful run,
    with top-1 where an accuracy result exists."""
    from ..report import REPORT_COLUMNS, REPORT_FIELDS, plot_pareto, report_rows
    from ..store import Store

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
