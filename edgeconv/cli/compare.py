"""``edgeconv compare``: the latency and accuracy regression gate between two tags (the library half
is :mod:`edgeconv.compare`)."""
from __future__ import annotations

import click

from .common import Command, console, db_option, echo_json, json_option, warn


@click.command("compare", cls=Command)
@click.option("--baseline", required=True, metavar="TAG", help="Tag of the reference results (bench/eval --tag).")
@click.option("--candidate", required=True, metavar="TAG", help="Tag of the results to judge.")
@click.option("--baseline-db", metavar="PATH",
              help="Read the baseline from this results database (e.g. main's, downloaded in CI). "
              "Default: --db.")
@click.option("--max-slowdown", default=5.0, show_default=True, type=click.FloatRange(0, 1000), metavar="PCT",
              help="Largest allowed latency increase, in percent of the baseline's median.")
@click.option("--max-drop", default=1.0, show_default=True, type=click.FloatRange(0, 100), metavar="PT",
              help="Largest allowed top-1 drop, in points.")
@click.option("--confidence", default=0.95, show_default=True, type=click.FloatRange(0.5, 0.999),
              help="Confidence level of the bootstrap interval of the median ratio.")
@click.option("--junit", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write JUnit XML: a failure per regression, skipped per inconclusive row.")
@db_option
@json_option
def compare_cmd(baseline: str, candidate: str, baseline_db: str | None, max_slowdown: float, max_drop: float,
                confidence: float, junit: str | None, db: str | None, as_json: bool) -> None:
    """Is CANDIDATE slower or less accurate than BASELINE? Rows are matched on model, format,
    precision, runtime, device and threads; latency is judged by a bootstrap confidence interval of
    the median ratio from the stored raw timings, so noise alone does not fail a build. Exit 1 on a
    regression beyond the limits; a regression in a run that was not stable is 'inconclusive'."""
    from contextlib import ExitStack

    from ..compare import INCONCLUSIVE, compare, junit_xml
    from ..store import Store
    from ..util import atomic_write_text

    with ExitStack() as stack:
        store = stack.enter_context(Store(db))
        base_store = stack.enter_context(Store(baseline_db)) if baseline_db else None
        cmp = compare(baseline, candidate, store=store, baseline_store=base_store, max_slowdown_pct=max_slowdown,
                      max_drop_pt=max_drop, confidence=confidence)
    if junit:
        atomic_write_text(junit, junit_xml(cmp))
    if as_json:
        echo_json(cmp.to_dict())
    else:
        _print(cmp)
    for r in cmp.rows:
        if r.verdict == INCONCLUSIVE:
            warn(f"{r.label}: inconclusive ({'; '.join(r.notes)})")
    if cmp.exit_code:
        n = cmp.count("regression")
        click.echo(f"edgeconv: {n} regression{'s' if n > 1 else ''} beyond the limits "
                   f"(+{max_slowdown:g} % latency, -{max_drop:g} pt top-1)", err=True)
        click.get_current_context().exit(cmp.exit_code)


def _print(cmp) -> None:
    from ..report import fmt_ms, rich_table

    c = console()
    ms = lambda v: fmt_ms(v)  # noqa: E731
    if cmp.latency:
        rows = [{"what": f"{r.model} {r.format}/{r.precision}", "runtime": r.runtime, "device": r.device,
                 "base": r.baseline_ms, "cand": r.candidate_ms, "ratio": f"{r.ratio:.3f}",
                 "ci": f"{r.ci[0]:.3f}-{r.ci[1]:.3f}" if r.ci else "-", "verdict": r.verdict,
                 "notes": "; ".join(r.notes)} for r in cmp.latency]
        cols = [("what", "model format/precision", str), ("runtime", "runtime", str), ("device", "device", str),
                ("base", f"{cmp.baseline} ms", ms), ("cand", f"{cmp.candidate} ms", ms), ("ratio", "ratio", str),
                ("ci", f"{100 * cmp.confidence:g} % CI", str), ("verdict", "verdict", str), ("notes", "notes", str)]
        c.print(rich_table(rows, cols, title=f"latency: {cmp.candidate} vs {cmp.baseline} (median ratio, limit "
                           f"+{cmp.max_slowdown_pct:g} %)"))
    if cmp.accuracy:
        rows = [{"what": f"{a.model} {a.format}/{a.precision}", "dataset": a.dataset,
                 "base": f"{a.baseline_top1:.2f}", "cand": f"{a.candidate_top1:.2f}",
                 "drop": f"{a.drop_pt:+.2f} ± {1.96 * a.se_pt:.2f}", "verdict": a.verdict,
                 "notes": "; ".join(a.notes)} for a in cmp.accuracy]
        cols = [("what", "model format/precision", str), ("dataset", "dataset", str),
                ("base", f"{cmp.baseline} top-1 %", str), ("cand", f"{cmp.candidate} top-1 %", str),
                ("drop", "drop pt", str), ("verdict", "verdict", str), ("notes", "notes", str)]
        c.print(rich_table(rows, cols, title=f"accuracy (limit -{cmp.max_drop_pt:g} pt)"))
    c.print("environment: " + ("; ".join(cmp.environment) if cmp.environment else "no differences"), markup=False)
    for side, items in cmp.unmatched.items():
        if items:
            c.print(f"only in {side}: {', '.join(items)}", markup=False)
