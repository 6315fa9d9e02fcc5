"""Reading the results store back: the run listing (``edgeconv results``), the comparison report
(``edgeconv report``: one row per model/format/precision/device from its latest ok run, joined with
the latest accuracy result) and the latency/accuracy Pareto plot of the TinyNet paper's figure.

Renderers take plain row dicts plus a column list, so the table, Markdown, CSV and JSON outputs
cannot drift apart. matplotlib is imported only when a plot is asked for.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError
from .store import Store
from .util import atomic_path

Column = tuple[str, str, Callable[[object], str]]  # (row key, header, formatter)

# family -> (color, marker); looked up by name prefix, most specific first
FAMILY_STYLE: dict[str, tuple[str, str]] = {
    "TinyNet": ("#d62728", "o"),
    "EfficientNet-Lite": ("#2ca02c", "^"),
    "EfficientNet": ("#1f77b4", "s"),
    "other": ("#7f7f7f", "D"),
}
_FAMILY_PREFIX = (("tinynet", "TinyNet"), ("efficientnet-lite", "EfficientNet-Lite"),
                  ("efficientnet", "EfficientNet"))
PLOT_SUFFIXES = (".png", ".svg")
TEXT_KEYS = {"model", "device", "error", "status", "runtime", "format", "precision", "finished_at"}


def family_of(model: str) -> str:
    name = model.lower()
    return next((fam for prefix, fam in _FAMILY_PREFIX if name.startswith(prefix)), "other")


def fmt_ms(v: object) -> str:
    """Milliseconds with useful precision from microsecond-scale toy models to second-scale B7."""
    if v is None:
        return "-"
    v = float(v)  # type: ignore[arg-type]
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def fmt_mb(v: object) -> str:
    return "-" if v is None else f"{v:.2f}" if float(v) >= 1 else f"{v:.3f}"  # type: ignore[arg-type]


def fmt_bytes(v: object) -> str:
    """File size with its unit: MB for real models, kB for test toys."""
    if v is None:
        return "-"
    n = int(v)  # type: ignore[call-overload]
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _fmt(spec: str) -> Callable[[object], str]:
    return lambda v: "-" if v is None else format(v, spec)


def _text(v: object) -> str:
    return "-" if v is None else str(v)


# the keys of a report row, in order (also the CSV header, with or without rows)
REPORT_FIELDS = ("model", "format", "precision", "device", "device_kind", "runtime", "runtime_version",
                 "threads", "size_mb", "top1_pct", "dataset", "median_ms", "p90_ms", "mean_ms", "runs",
                 "params", "macs", "run_id", "finished_at", "emulated", "parity", "parity_max_diff",
                 "parity_top1", "parity_step")
EMULATED_MARK = " (emulated)"  # appended to the device of every row measured on an emulated device


def parity_text(row: dict) -> str:
    """The on-device output check in a few words: ``ok: top-1 100%, max diff 0.0039 (1 step)``."""
    status = row.get("parity")
    if status is None:
        return "-"
    if status == "not checked":
        return "not checked"
    head = "output differs from host" if status == "differs" else "ok"
    top1, diff, step = row.get("parity_top1"), row.get("parity_max_diff"), row.get("parity_step")
    parts = [f"top-1 {100 * top1:.0f}%" if top1 is not None else None,
             f"max diff {diff:.2g}" + (f" ({diff / step:.3g} steps)" if step and diff is not None else "")
             if diff is not None else None]
    return f"{head}: {', '.join(p for p in parts if p)}"
RESULTS_COLUMNS: list[Column] = [
    ("run_id", "id", _text), ("finished_at", "finished (UTC)", lambda v: _text(v)[:19].replace("T", " ")),
    ("device", "device", _text), ("model", "model", _text), ("format", "format", _text),
    ("precision", "precision", _text), ("runtime", "runtime", _text), ("threads", "threads", _text),
    ("status", "status", _text), ("median_ms", "median ms", fmt_ms), ("p90_ms", "p90 ms", fmt_ms),
    ("runs_actual", "runs", _text), ("parity", "output vs host", _text),
    ("error", "error", lambda v: "" if v is None else str(v)),
]
REPORT_COLUMNS: list[Column] = [
    ("model", "model", _text), ("format", "format", _text), ("precision", "precision", _text),
    ("device", "device", _text), ("size_mb", "size MB", fmt_mb), ("top1_pct", "top-1 %", _fmt(".1f")),
    ("median_ms", "median ms", fmt_ms), ("p90_ms", "p90 ms", fmt_ms), ("runs", "runs", _text),
    ("parity", "output vs host", _text),
]


# ------------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------------
def results_rows(store: Store, models: Sequence[str] | None = None, device: str | None = None,
                 limit: int | None = None) -> list[dict]:
    """Every stored run (ok and failed), newest first; an emulated device's name carries
    :data:`EMULATED_MARK`."""
    return [_mark_emulated(r) for r in store.runs(models=models, device=device, limit=limit)]


def _mark_emulated(row: dict) -> dict:
    if row.get("device_emulated"):
        row["device"] = f"{row['device']}{EMULATED_MARK}"
    return row


def report_rows(store: Store, models: Sequence[str] | None = None, device: str | None = None,
                threads: int | None = 1) -> list[dict]:
    """One row per (model, format, precision, device) from its latest ok run with ``threads``
    threads (1: the paper's protocol), with top-1 from the latest matching accuracy result."""
    acc = store.latest_accuracy(models)
    rows = []
    for r in store.latest_ok_runs(models=models, device=device, threads=threads):
        a = acc.get((r["model"], r["format"], r["precision"]))
        r = _mark_emulated(r)
        row = {k: r.get(k) for k in REPORT_FIELDS}
        row.update(size_mb=r["size_bytes"] / 1e6 if r["size_bytes"] is not None else None,
                   top1_pct=100 * a["top1"] if a else None, dataset=a["dataset"] if a else None,
                   runs=r["runs_actual"], emulated=bool(r.get("device_emulated")))
        rows.append(row)
    return rows


def visible_columns(rows: Sequence[dict], columns: Sequence[Column]) -> list[Column]:
    """Drop the device column when every row is from the same device (the usual single-host case),
    unless that device is emulated (its mark stays in sight), and the output-vs-host column when no
    row was checked on a device."""
    hidden = set()
    if len({r.get("device") for r in rows}) <= 1 and not any(r.get("device_emulated") or r.get("emulated")
                                                              for r in rows):
        hidden.add("device")
    if not any(r.get("parity") for r in rows):
        hidden.add("parity")
    return [c for c in columns if c[0] not in hidden]


# ------------------------------------------------------------------------------------------------
# renderers
# ------------------------------------------------------------------------------------------------
def _cell(row: dict, key: str, f: Callable[[object], str]) -> str:
    """One table cell: the parity column summarizes several fields, the others format their own."""
    return parity_text(row) if key == "parity" else f(row.get(key))


def rich_table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for key, header, _f in columns:
        t.add_column(header, justify="left" if key in TEXT_KEYS else "right")
    for r in rows:
        t.add_row(*(_cell(r, key, f) for key, _h, f in columns))
    return t


def to_markdown(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    lines = ["| " + " | ".join(h for _k, h, _f in columns) + " |",
             "|" + "|".join("---" if k in TEXT_KEYS else "---:" for k, _h, _f in columns)
             + "|"]
    lines += ["| " + " | ".join(_cell(r, k, f).replace("|", "\\|") for k, _h, f in columns) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict], keys: Sequence[str]) -> str:
    """CSV with raw (unformatted) values, for spreadsheets and scripts."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(keys), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Pareto plot
# ------------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower x and higher y), ordered by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _labels(rows: Sequence[dict]) -> list[str]:
    """The model name; plus format/precision (and device) only where a model has several points."""
    per_model: dict[str, int] = {}
    for r in rows:
        per_model[r["model"]] = per_model.get(r["model"], 0) + 1
    devices = len({r.get("device") for r in rows}) > 1
    out = []
    for r in rows:
        label = r["model"]
        if per_model[r["model"]] > 1:
            label += f" {r['format']}/{r['precision']}"
        if devices:
            label += f" @{r['device']}"
        out.append(label)
    return out


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str | None = None) -> int:
    """Latency (x, median ms) against ImageNet top-1 (y) — or against MACs when no row has an
    accuracy result — with the Pareto front as a step line. PNG or SVG by the file suffix, written
    atomically. Returns the number of points plotted."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: use a .png or .svg file name")
    if not path.absolute().parent.is_dir():
        raise UserError(f"--plot {path}: folder {path.parent} does not exist")
    pts = [r for r in rows if r.get("median_ms")]
    by_accuracy = any(r.get("top1_pct") is not None for r in pts)
    ykey = "top1_pct" if by_accuracy else "macs"
    pts = [r for r in pts if r.get(ykey) is not None]
    if not pts:
        raise UserError("nothing to plot: no benchmark results with latency and accuracy or MACs")
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    xs = [float(r["median_ms"]) for r in pts]
    ys = [float(r[ykey]) if by_accuracy else r[ykey] / 1e6 for r in pts]
    fig = Figure(figsize=(8, 5.5), dpi=150, layout="constrained")
    ax = fig.subplots()
    families = [family_of(r["model"]) for r in pts]
    for fam, (color, marker) in FAMILY_STYLE.items():
        idx = [i for i, f in enumerate(families) if f == fam]
        if idx:
            ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], c=color, marker=marker, s=42,
                       label=fam, zorder=3, edgecolors="black", linewidths=0.4)
    for x, y, label in zip(xs, ys, _labels(pts), strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, zorder=4,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75})
    front = pareto_front(list(zip(xs, ys, strict=True)))
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1, alpha=0.7, zorder=2,
            label="Pareto front" if by_accuracy else "front (most MACs per ms)")
    ax.margins(x=0.1, y=0.06)  # room for the right-most labels
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    devices = sorted({str(r.get("device")) for r in pts})
    ax.set_xlabel(f"latency, median ms (batch 1, {pts[0].get('threads') or 1} thread) on "
                  f"{', '.join(devices)}")
    ax.set_ylabel("ImageNet top-1 accuracy (%)" if by_accuracy else "MACs (millions)")
    ax.set_title(title or ("Latency vs accuracy" if by_accuracy else "Latency vs MACs"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix[1:])
    return len(pts)
