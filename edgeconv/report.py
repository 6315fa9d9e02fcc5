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
from dataclasses import dataclass, field
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
TEXT_KEYS = {"model", "device", "error", "status", "runtime", "format", "precision", "finished_at", "verdict",
             "tag", "what", "notes", "dataset"}


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


def fmt_verdict(v: object) -> str:
    """``stable``; anything else marked, so a row not to trust stands out (``-``: not judged)."""
    return "-" if v is None else str(v) if v == "stable" else f"{str(v).upper()} (!)"


# the keys of a report row, in order (also the CSV header, with or without rows)
REPORT_FIELDS = ("model", "format", "precision", "device", "device_kind", "runtime", "runtime_version",
                 "threads", "size_mb", "top1_pct", "dataset", "median_ms", "p90_ms", "mean_ms", "runs",
                 "mem_mb", "import_rss_mb", "peak_rss_mb", "verdict", "verdict_reasons", "tag",
                 "params", "macs", "run_id", "finished_at", "emulated",
                 "parity", "parity_max_diff", "parity_top1", "parity_step")
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
    ("runs_actual", "runs", _text), ("mem_mb", "mem MB", fmt_mb), ("verdict", "verdict", fmt_verdict),
    ("parity", "output vs host", _text), ("tag", "tag", _text),
    ("error", "error", lambda v: "" if v is None else str(v)),
]
REPORT_COLUMNS: list[Column] = [
    ("model", "model", _text), ("format", "format", _text), ("precision", "precision", _text),
    ("device", "device", _text), ("size_mb", "size MB", fmt_mb), ("top1_pct", "top-1 %", _fmt(".1f")),
    ("median_ms", "median ms", fmt_ms), ("p90_ms", "p90 ms", fmt_ms), ("runs", "runs", _text),
    ("mem_mb", "mem MB", fmt_mb), ("verdict", "verdict", fmt_verdict), ("parity", "output vs host", _text),
]


# ------------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------------
def results_rows(store: Store, models: Sequence[str] | None = None, device: str | None = None,
                 limit: int | None = None, tag: str | None = None) -> list[dict]:
    """Every stored run (ok and failed; with ``tag``: of that tag), newest first; an emulated
    device's name carries :data:`EMULATED_MARK`."""
    return [_mark_emulated(r) for r in store.runs(models=models, device=device, limit=limit, tag=tag)]


def _mark_emulated(row: dict) -> dict:
    if row.get("device_emulated"):
        row["device"] = f"{row['device']}{EMULATED_MARK}"
    return row


def report_rows(store: Store, models: Sequence[str] | None = None, device: str | None = None,
                threads: int | None = 1, tag: str | None = None) -> list[dict]:
    """One row per (model, format, precision, device) from its latest ok run with ``threads``
    threads (1: the paper's protocol), with top-1 from the latest matching accuracy result."""
    acc = store.latest_accuracy(models, tag=tag)
    rows = []
    for r in store.latest_ok_runs(models=models, device=device, threads=threads, tag=tag):
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
    w.writerows({k: "; ".join(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
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


def published_top1(model: str) -> float | None:
    """The paper's top-1 (%) from the model's recipe, or None (no such recipe, nothing published)."""
    from .recipe import load_recipe

    try:
        top1 = load_recipe(model).published.get("top1")
    except UserError:
        return None
    return float(top1) if isinstance(top1, (int, float)) else None


@dataclass
class PlotPoint:
    model: str
    label: str
    family: str
    latency_ms: float
    y: float  # top-1 % (measured or published), or MMACs when nothing has a top-1
    published: bool  # y is the paper's top-1, not one measured by ``edgeconv eval``
    on_front: bool = False


@dataclass
class PlotFacts:
    """What the plot shows, for callers and tests: the points, the front, the texts, and where each
    label was placed (display pixels: x0, y0, x1, y1)."""

    points: list[PlotPoint]
    by_accuracy: bool
    title: str
    xlabel: str
    ylabel: str
    label_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def front(self) -> list[str]:
        return [p.label for p in self.points if p.on_front]

    def __len__(self) -> int:
        return len(self.points)


def plot_points(rows: Sequence[dict], published: Callable[[str], float | None] = published_top1
                ) -> tuple[list[PlotPoint], bool]:
    """The points of the plot and whether y is top-1: the measured top-1 where ``eval`` stored one,
    the published one otherwise; latency vs MACs (no front) only when no row has either. The
    Pareto front (nothing both faster and more accurate) is marked on top-1 plots only."""
    rows = [r for r in rows if r.get("median_ms")]
    paper = {m: published(m) for m in {r["model"] for r in rows}}
    by_accuracy = any(r.get("top1_pct") is not None or paper[r["model"]] is not None for r in rows)
    points = []
    for r, label in zip(rows, _labels(rows), strict=True):
        if by_accuracy:
            measured = r.get("top1_pct")
            y = measured if measured is not None else paper[r["model"]]
            is_published = measured is None
        else:
            y, is_published = (r["macs"] / 1e6 if r.get("macs") is not None else None), False
        if y is not None:
            points.append(PlotPoint(r["model"], label, family_of(r["model"]), float(r["median_ms"]), float(y),
                                    is_published))
    if by_accuracy:
        for i in pareto_front([(p.latency_ms, p.y) for p in points]):
            points[i].on_front = True
    return points, by_accuracy


def _plot_texts(rows: Sequence[dict], points: Sequence[PlotPoint], by_accuracy: bool) -> tuple[str, str, str]:
    used = [r for r in rows if r.get("median_ms")]
    devices = ", ".join(sorted({str(r.get("device")) for r in used}))
    threads = sorted({int(r.get("threads") or 1) for r in used})
    thread_text = "/".join(map(str, threads)) + (" thread" if threads == [1] else " threads")
    precisions = ", ".join(sorted({f"{r.get('format')} {r.get('precision')}" for r in used}))
    title = (f"{'Latency vs ImageNet top-1' if by_accuracy else 'Latency vs MACs'} on {devices}: "
             f"{thread_text}, batch 1, {precisions}")
    xlabel = f"latency on {devices}, median ms ({thread_text}, batch 1)"
    if not by_accuracy:
        ylabel = "MACs (millions); no top-1 known, so no front"
    elif all(p.published for p in points):
        ylabel = "ImageNet top-1 (%), published (hollow markers)"
    elif any(p.published for p in points):
        ylabel = "ImageNet top-1 (%): measured (filled) or published (hollow)"
    else:
        ylabel = "ImageNet top-1 (%), measured by edgeconv eval"
    return title, xlabel, ylabel


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


# label offsets in points (dx, dy, ha, va), tried in order at growing distances
_PLACES = [(6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"), (-6, -5, "right", "top"),
           (0, 8, "center", "bottom"), (0, -8, "center", "top"), (8, 0, "left", "center"), (-8, 0, "right", "center")]


def _place_labels(fig, ax, points: Sequence[PlotPoint], avoid=()) -> list[tuple[float, float, float, float]]:
    """Greedy non-overlapping placement: each label takes the first candidate position (nearest
    first) that stays inside the axes and overlaps no placed label, no marker and nothing in
    ``avoid`` (display boxes, e.g. the legend); failing all, the least overlapping one. Labels set
    away from their point get a thin leader line. Returns each label's box (display pixels)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    pad = 8.0 * fig.dpi / 72  # twice a marker's half size in pixels: a label keeps clear of other points
    markers = [ax.transData.transform((p.latency_ms, p.y)) for p in points]
    taken = [(x - pad, y - pad, x + pad, y + pad) for x, y in markers] + list(avoid)
    boxes: list[tuple[float, float, float, float]] = [(0.0, 0.0, 0.0, 0.0)] * len(points)

    def neighbours(i: int) -> int:
        return sum(1 for m in markers if abs(m[0] - markers[i][0]) + abs(m[1] - markers[i][1]) < 80)

    for i in sorted(range(len(points)), key=neighbours, reverse=True):  # crowded points first
        p = points[i]
        best = None
        for scale in (1, 2, 3.5, 5):
            for dx, dy, ha, va in _PLACES:
                lead = {"arrowstyle": "-", "color": "0.5", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}
                ann = ax.annotate(p.label, (p.latency_ms, p.y), textcoords="offset points",
                                  xytext=(dx * scale, dy * scale), ha=ha, va=va, fontsize=7, zorder=4,
                                  arrowprops=lead if scale > 1 else None,
                                  bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
                ann.update_positions(renderer)
                e = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
                box = (e.x0, e.y0, e.x1, e.y1)
                outside = box[0] < inside.x0 or box[2] > inside.x1 or box[1] < inside.y0 or box[3] > inside.y1
                cost = sum(_overlap(box, t) for j, t in enumerate(taken) if j != i) + (1e9 if outside else 0)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, ann, box)
                else:
                    ann.remove()
                if cost == 0:
                    break
            if best[0] == 0:
                break
        taken.append(best[2])
        boxes[i] = best[2]
    return boxes


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str | None = None) -> PlotFacts:
    """Latency (x, median ms) against ImageNet top-1 (y): measured where ``eval`` stored a result,
    the published figure otherwise (hollow markers); the Pareto front as a step line. Only when no
    model has any top-1, latency against MACs, without a front. PNG or SVG by the file suffix,
    written atomically. Returns what was plotted (:class:`PlotFacts`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: use a .png or .svg file name")
    if not path.absolute().parent.is_dir():
        raise UserError(f"--plot {path}: folder {path.parent} does not exist")
    points, by_accuracy = plot_points(rows)
    if not points:
        raise UserError("nothing to plot: no benchmark results with latency and accuracy or MACs")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.lines import Line2D

    auto_title, xlabel, ylabel = _plot_texts(rows, points, by_accuracy)
    facts = PlotFacts(points, by_accuracy, title or auto_title, xlabel, ylabel)
    fig = Figure(figsize=(8, 5.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    handles = []
    for fam, (color, marker) in FAMILY_STYLE.items():
        for published in (False, True):
            sel = [p for p in points if p.family == fam and p.published == published]
            if sel:
                ax.scatter([p.latency_ms for p in sel], [p.y for p in sel], marker=marker, s=42, zorder=3,
                           facecolors="none" if published else color, edgecolors=color if published else "black",
                           linewidths=1.2 if published else 0.4)
        if any(p.family == fam for p in points):
            handles.append(Line2D([], [], color=color, marker=marker, linestyle="", markeredgecolor="black",
                                  markeredgewidth=0.4, label=fam))
    if any(p.published for p in points):
        handles.append(Line2D([], [], color="0.3", marker="o", linestyle="", markerfacecolor="none",
                              label="published top-1 (hollow)"))
    if by_accuracy and not all(p.published for p in points):
        handles.append(Line2D([], [], color="0.3", marker="o", linestyle="", label="measured top-1 (filled)"))
    if by_accuracy:
        front = sorted((p for p in points if p.on_front), key=lambda p: p.latency_ms)
        ax.step([p.latency_ms for p in front], [p.y for p in front], where="post", color="black",
                linestyle="--", linewidth=1, alpha=0.7, zorder=2)
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1,
                              label="Pareto front (faster or more accurate)"))
    xs = [p.latency_ms for p in points]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(facts.title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    legend = ax.legend(handles=handles, loc="lower right", fontsize=7)
    fig.canvas.draw()  # settle the constrained layout, then freeze it so label positions hold
    fig.set_layout_engine("none")
    e = legend.get_window_extent(fig.canvas.get_renderer())
    facts.label_boxes = _place_labels(fig, ax, points, avoid=[(e.x0, e.y0, e.x1, e.y1)])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix[1:])
    return facts
