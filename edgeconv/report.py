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
             "tag", "what", "notes", "dataset", "name", "block", "shape", "fallback", "stage"}


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
# in a profile's title and plot: what an emulated device's block timings are not
EMULATED_TIMINGS_MARK = f"{EMULATED_MARK[:-1]}: timings are not latency)"


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


def _plot_path(path: str | Path) -> tuple[Path, str]:
    """The plot file and its format (png or svg): a one-line error for another suffix or a folder
    that does not exist."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: use a .png or .svg file name")
    if not path.absolute().parent.is_dir():
        raise UserError(f"--plot {path}: folder {path.parent} does not exist")
    return path, suffix[1:]


def _save_figure(fig, path: Path, fmt: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str | None = None) -> PlotFacts:
    """Latency (x, median ms) against ImageNet top-1 (y): measured where ``eval`` stored a result,
    the published figure otherwise (hollow markers); the Pareto front as a step line. Only when no
    model has any top-1, latency against MACs, without a front. PNG or SVG by the file suffix,
    written atomically. Returns what was plotted (:class:`PlotFacts`)."""
    path, fmt = _plot_path(path)
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
    _save_figure(fig, path, fmt)
    return facts


# ------------------------------------------------------------------------------------------------
# per-block profiles (edgeconv profile; stored by Store.record_profile)
# ------------------------------------------------------------------------------------------------
def fmt_count(v: object) -> str:
    """Parameters and MACs: 224, 12.3k, 1.23M, 390M."""
    if v is None:
        return "-"
    n = float(v)  # type: ignore[arg-type]
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            n /= div
            return f"{n:.3g}{unit}" if n < 100 else f"{n:.0f}{unit}"
    return f"{n:.0f}"


def fmt_rate(v: object) -> str:
    if v is None:
        return "-"
    v = float(v)  # type: ignore[arg-type]
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_share(v: object) -> str:
    """A fraction in [0, 1] as a percentage."""
    return "-" if v is None else f"{100 * float(v):.1f}"  # type: ignore[arg-type]


def fmt_signed_ms(v: object) -> str:
    return "-" if v is None else ("+" if float(v) >= 0 else "-") + fmt_ms(abs(float(v)))  # type: ignore[arg-type]


def fmt_shape(shape: object) -> str:
    """NHWC without the batch of 1: ``106x106x3``."""
    if shape is None:
        return "?"
    dims = list(shape)  # type: ignore[call-overload]
    if len(dims) > 1 and dims[0] == 1:
        dims = dims[1:]
    return "x".join(str(d) for d in dims)


def _blank(v: object) -> str:
    return "" if v is None else str(v)


# the keys of a profile table row (also the CSV header); "kind": block | sum | whole
PROFILE_FIELDS = ("model", "format", "precision", "device", "emulated", "runtime", "kind", "index", "name",
                  "stage", "block", "in_shape", "out_shape", "params", "macs", "median_ms", "p90_ms", "share",
                  "macs_per_us", "sqnr_db", "local_sqnr_db", "cosine", "float_fallback", "status", "error",
                  "ratio")
PROFILE_COLUMNS: list[Column] = [
    ("index", "#", _blank), ("name", "block", _text), ("block", "recipe block", _blank),
    ("shape", "in→out", _blank), ("params", "params", fmt_count), ("macs", "MACs", fmt_count),
    ("median_ms", "median ms", fmt_ms), ("p90_ms", "p90 ms", fmt_ms), ("share", "share %", fmt_share),
    ("macs_per_us", "MACs/µs", fmt_rate), ("sqnr_db", "SQNR dB", _fmt(".1f")),
    ("local_sqnr_db", "local SQNR dB", _fmt(".1f")), ("cosine", "cosine", _fmt(".4f")),
    ("fallback", "fallback", _blank), ("error", "error", _blank),
]
STAGE_COLUMNS: list[Column] = [
    ("stage", "stage", _text), ("blocks", "blocks", _text), ("params", "params", fmt_count),
    ("macs", "MACs", fmt_count), ("median_ms", "median ms", fmt_ms), ("share", "share %", fmt_share),
]
STAGE_COMPARE_COLUMNS: list[Column] = [
    ("stage", "stage", _text), ("a_ms", "A ms", fmt_ms), ("b_ms", "B ms", fmt_ms),
    ("delta_ms", "B-A ms", fmt_signed_ms), ("a_macs", "A MACs", fmt_count), ("b_macs", "B MACs", fmt_count),
]
INT8_KEYS = ("sqnr_db", "local_sqnr_db", "cosine")


def _sum(values: Sequence[object]) -> float | None:
    """The sum, or None when any value is missing (a failed row) or there are none."""
    if not values or any(v is None for v in values):
        return None
    return sum(values)  # type: ignore[arg-type]


def _rate(macs: object, ms: object) -> float | None:
    return macs / (ms * 1000) if macs is not None and ms else None  # type: ignore[operator]


def _device_of(profile: dict) -> tuple[str, bool]:
    return str(profile.get("device") or "this host"), bool(profile.get("device_emulated"))


def profile_table_rows(profile: dict) -> list[dict]:
    """One row per block of ``profile`` (as recorded, or as :meth:`Store.profiles` returns it), then
    "sum of blocks" (params, MACs, the sum of the medians) and "whole model" (the whole model's own
    median/p90 in the same run, and ``ratio`` = sum / whole, also said in its recipe-block cell).
    Every row has :data:`PROFILE_FIELDS` plus the display keys ``shape`` and ``fallback``."""
    device, emulated = _device_of(profile)
    common = {"model": profile.get("model"), "format": profile.get("format"), "precision": profile.get("precision"),
              "device": device + (EMULATED_MARK if emulated else ""), "emulated": emulated,
              "runtime": profile.get("runtime")}
    blocks = list(profile.get("rows") or [])
    out = []
    for i, r in enumerate(blocks):
        row = {**{k: None for k in PROFILE_FIELDS}, **common, "kind": "block",
               **{k: r.get(k) for k in PROFILE_FIELDS if k in r and k not in common}}
        row.update(index=r.get("index", i), in_shape=fmt_shape(r.get("in_shape")),
                   out_shape=fmt_shape(r.get("out_shape")), float_fallback=list(r.get("float_fallback") or []))
        row.update(shape=f"{row['in_shape']}→{row['out_shape']}", fallback="float" if row["float_fallback"] else "")
        out.append(row)
    params, macs = _sum([r.get("params") for r in blocks]), _sum([r.get("macs") for r in blocks])
    total = profile.get("sum_median_ms") if "sum_median_ms" in profile else _sum([r.get("median_ms") for r in blocks])
    whole = profile.get("whole") or {}
    ratio = profile.get("ratio")
    if ratio is None and total is not None and whole.get("median_ms"):
        ratio = total / whole["median_ms"]
    empty = {**{k: None for k in PROFILE_FIELDS}, **common, "float_fallback": [], "fallback": ""}
    out.append({**empty, "kind": "sum", "name": "sum of blocks", "params": params, "macs": macs,
                "median_ms": total, "share": _sum([r.get("share") for r in blocks]), "macs_per_us": _rate(macs, total),
                "status": "ok" if total is not None else "failed", "shape": ""})
    first, last = (blocks[0], blocks[-1]) if blocks else ({}, {})
    out.append({**empty, "kind": "whole", "name": "whole model",
                "block": f"sum of blocks / whole = {ratio:.2f}" if ratio is not None else "sum of blocks / whole: -",
                "in_shape": fmt_shape(first.get("in_shape")), "out_shape": fmt_shape(last.get("out_shape")),
                "shape": f"{fmt_shape(first.get('in_shape'))}→{fmt_shape(last.get('out_shape'))}" if blocks else "",
                "median_ms": whole.get("median_ms"), "p90_ms": whole.get("p90_ms"),
                "macs_per_us": _rate(macs, whole.get("median_ms")), "ratio": ratio,
                "status": whole.get("status"), "error": whole.get("error")})
    return out


def profile_columns(rows: Sequence[dict]) -> list[Column]:
    """:data:`PROFILE_COLUMNS` without what says nothing here: the int8 error columns of a float
    profile, the fallback column when nothing fell back, the error column when nothing failed."""
    hidden = {k for k in INT8_KEYS if all(r.get(k) is None for r in rows)}
    if not any(r.get("fallback") for r in rows):
        hidden.add("fallback")
    if not any(r.get("error") for r in rows):
        hidden.add("error")
    return [c for c in PROFILE_COLUMNS if c[0] not in hidden]


def profile_title(profile: dict, device: str | None = None, emulated: bool | None = None) -> str:
    """``profile of tinynet-e (tflite int8) on box: tflite, 1 thread, median of 200 runs, ...``;
    an emulated device says :data:`EMULATED_TIMINGS_MARK`. ``device``/``emulated`` override what
    the profile says (one not stored yet has no device name)."""
    name, is_emulated = _device_of(profile)
    name = device or name
    is_emulated = is_emulated if emulated is None else emulated
    threads = profile.get("threads") or 1
    parts = [str(profile.get("runtime") or "?"), f"{threads} thread{'s' if threads != 1 else ''}"]
    if profile.get("runs"):
        parts.append(f"median of {profile['runs']} runs")
    if profile.get("method"):
        parts.append(f"blocks timed as {profile['method']}")
    if profile.get("error_images"):
        parts.append(f"int8 error on {profile['error_images']} images")
    when = str(profile.get("created_at") or "")[:16].replace("T", " ")
    return (f"profile of {profile.get('model')} ({profile.get('format')} {profile.get('precision')}) on {name}"
            f"{EMULATED_TIMINGS_MARK if is_emulated else ''}: {', '.join(parts)}" + (f" ({when} UTC)" if when else ""))


def _stage_label(row: dict, after_blocks: bool) -> str:
    stage = row.get("stage")
    if stage is not None:
        return f"stage {stage}"
    return "head" if after_blocks or row.get("name") == "head" else str(row.get("name") or "stem")


def stage_rows(profile: dict) -> list[dict]:
    """Per-stage sums in network order: stem, stage 0..N-1, head, each with its ``blocks`` count,
    ``params``, ``macs``, ``median_ms`` and ``share`` (None where a block of it failed)."""
    groups: dict[str, list[dict]] = {}
    seen_stage = False
    for r in profile.get("rows") or []:
        groups.setdefault(_stage_label(r, seen_stage), []).append(r)
        seen_stage = seen_stage or r.get("stage") is not None
    return [{"stage": label, "blocks": len(rs), **{k: _sum([r.get(k) for r in rs])
                                                   for k in ("params", "macs", "median_ms", "share")}}
            for label, rs in groups.items()]


def _stage_order(label: str) -> float:
    if label == "stem":
        return -1.0
    if label.startswith("stage "):
        try:
            return float(label.split()[1])
        except ValueError:
            pass
    return float("inf")


def compare_stage_rows(a: dict, b: dict) -> list[dict]:
    """Profile ``b`` against ``a`` stage by stage (``stage``, ``a_ms``, ``b_ms``, ``delta_ms`` =
    B - A, ``a_macs``, ``b_macs``; None where a side has no such stage), then "sum of blocks" and
    "whole model"."""
    sa, sb = ({r["stage"]: r for r in stage_rows(p)} for p in (a, b))
    labels = sorted(dict.fromkeys([*sa, *sb]), key=_stage_order)  # stable: stem, stages, head

    def row(label: str, a_ms, b_ms, a_macs, b_macs) -> dict:
        return {"stage": label, "a_ms": a_ms, "b_ms": b_ms,
                "delta_ms": b_ms - a_ms if a_ms is not None and b_ms is not None else None,
                "a_macs": a_macs, "b_macs": b_macs}

    out = [row(lb, sa.get(lb, {}).get("median_ms"), sb.get(lb, {}).get("median_ms"),
               sa.get(lb, {}).get("macs"), sb.get(lb, {}).get("macs")) for lb in labels]
    ta, tb = profile_table_rows(a), profile_table_rows(b)
    out.append(row("sum of blocks", ta[-2]["median_ms"], tb[-2]["median_ms"], ta[-2]["macs"], tb[-2]["macs"]))
    out.append(row("whole model", ta[-1]["median_ms"], tb[-1]["median_ms"], ta[-2]["macs"], tb[-2]["macs"]))
    return out


def compare_title(a: dict, b: dict) -> str:
    """``A = tinynet-e (tflite int8) on box, B = ...``, each with its emulated mark."""
    def one(p: dict) -> str:
        device, emulated = _device_of(p)
        return (f"{p.get('model')} ({p.get('format')} {p.get('precision')}) on {device}"
                f"{EMULATED_TIMINGS_MARK if emulated else ''}")
    return f"A = {one(a)}, B = {one(b)}"


STAGE_GREY = "#9e9e9e"  # stem and head
STAGE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                 "#17becf", "#393b79")
COMPARE_COLORS = ("#1f77b4", "#ff7f0e")  # A, B


def stage_color(label: str) -> str:
    """Grey for stem and head, one palette colour per stage number."""
    order = _stage_order(label)
    return STAGE_GREY if order in (-1.0, float("inf")) else STAGE_PALETTE[int(order) % len(STAGE_PALETTE)]


@dataclass
class ProfileBar:
    label: str  # the y tick label
    group: str  # stem, stage N, head (profile plot); A or B (comparison)
    value: float  # bar length: share % (profile plot) or median ms (comparison)
    color: str
    text: str  # printed beside the bar: median ms, int8 SQNR, float fallback, failed


@dataclass
class ProfilePlotFacts:
    """What a profile plot shows, for callers and tests; ``drawn``: the bars matplotlib drew."""

    title: str
    xlabel: str
    bars: list[ProfileBar]
    drawn: int
    note: str = ""

    def __len__(self) -> int:
        return len(self.bars)


def _bar_figure(bars: Sequence[ProfileBar], title: str, xlabel: str, ticks: Sequence[str], positions,
                legend: Sequence[tuple[str, str]], note: str = "", height: float = 0.8):
    """Horizontal bars, first at the top, each with its text beside it; the legend under the axes."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, max(3.2, 0.3 * len(ticks) * max(1, len(bars) / max(len(ticks), 1)) ** 0.5 + 1.8)),
                 dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    container = ax.barh(list(positions), [b.value for b in bars], height=height, color=[b.color for b in bars],
                        edgecolor="black", linewidth=0.3)
    top = max([b.value for b in bars] + [1e-9])
    for y, b in zip(positions, bars, strict=True):
        ax.text(b.value + top * 0.01, y, b.text, va="center", ha="left", fontsize=7)
    ax.set_xlim(0, top * 1.45)  # room for the texts
    n_ticks = len(ticks)
    ax.set_yticks(range(n_ticks), list(ticks), fontsize=7, family="monospace")
    ax.set_ylim(n_ticks - 0.5, -0.5)  # network order from the top
    ax.set_xlabel(f"{xlabel}\n{note}" if note else xlabel, fontsize=8)  # the note below: it covers no bar
    ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=8, loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    if legend:
        ax.legend(handles=[Patch(color=c, label=lb) for lb, c in legend], loc="upper center",
                  bbox_to_anchor=(0.5, -0.12 if n_ticks > 8 else -0.2), ncol=min(len(legend), 9), fontsize=7,
                  frameon=False)
    return fig, len(container.patches)


def _block_text(r: dict) -> str:
    if r.get("median_ms") is None:
        return "failed" + (f": {str(r['error'])[:40]}" if r.get("error") else "")
    parts = [f"{fmt_ms(r['median_ms'])} ms"]
    if r.get("sqnr_db") is not None:
        parts.append(f"SQNR {r['sqnr_db']:.1f} dB")
    if r.get("float_fallback"):
        parts.append("float")
    return " · ".join(parts)


def plot_profile(profile: dict, path: str | Path, title: str | None = None) -> ProfilePlotFacts:
    """One horizontal bar per block in network order (stem at the top): its share of the summed
    block latency, coloured by stage (stem and head grey), with its median ms and int8 SQNR beside
    it; the sum/whole ratio in a corner. PNG or SVG by the suffix, written atomically."""
    path, fmt = _plot_path(path)
    rows = list(profile.get("rows") or [])
    if not rows:
        raise UserError("nothing to plot: the profile has no blocks")
    total = _sum([r.get("median_ms") for r in rows])
    bars, seen_stage = [], False
    for r in rows:
        group = _stage_label(r, seen_stage)
        seen_stage = seen_stage or r.get("stage") is not None
        share = r.get("share")
        if share is None and r.get("median_ms") is not None and total:
            share = r["median_ms"] / total
        bars.append(ProfileBar(f"{r.get('name')}  {r.get('block') or ''}".rstrip(), group,
                               100 * float(share or 0.0), stage_color(group), _block_text(r)))
    table = profile_table_rows(profile)
    whole, ratio = table[-1]["median_ms"], table[-1]["ratio"]
    note = (f"sum of blocks {fmt_ms(table[-2]['median_ms'])} ms = {ratio:.2f} × whole model {fmt_ms(whole)} ms"
            if ratio is not None else "sum of blocks / whole model: -")
    _device, emulated = _device_of(profile)
    xlabel = ("share of the summed block latency (%)" +
              (f", median of {profile['runs']} runs" if profile.get("runs") else "") +
              ("; emulated device: timings are not latency" if emulated else ""))
    groups = list(dict.fromkeys(b.group for b in bars))
    ends = [g for g in groups if stage_color(g) == STAGE_GREY]
    legend = [(", ".join(ends), STAGE_GREY)] if ends else []
    legend += [(g, stage_color(g)) for g in groups if g not in ends]
    fig, drawn = _bar_figure(bars, title or profile_title(profile), xlabel, [b.label for b in bars],
                             range(len(bars)), legend, note)
    _save_figure(fig, path, fmt)
    return ProfilePlotFacts(title or profile_title(profile), xlabel, bars, drawn, note)


def plot_profile_compare(a: dict, b: dict, path: str | Path, title: str | None = None) -> ProfilePlotFacts:
    """Median ms per stage of profile A and B side by side (two bars per stage, the difference
    beside B's), for ``edgeconv profile A --compare B``. PNG or SVG by the suffix."""
    path, fmt = _plot_path(path)
    stages = [r for r in compare_stage_rows(a, b) if r["stage"] not in ("sum of blocks", "whole model")]
    if not stages:
        raise UserError("nothing to plot: the profiles have no blocks")
    bars, positions = [], []
    for i, r in enumerate(stages):
        for j, (side, key) in enumerate((("A", "a_ms"), ("B", "b_ms"))):
            v = r[key]
            text = "-" if v is None else f"{fmt_ms(v)} ms"
            if side == "B" and r["delta_ms"] is not None:
                text += f" ({fmt_signed_ms(r['delta_ms'])})"
            bars.append(ProfileBar(r["stage"], side, float(v or 0.0), COMPARE_COLORS[j], text))
            positions.append(i - 0.2 + 0.4 * j)
    full = title or compare_title(a, b)
    emulated = any(_device_of(p)[1] for p in (a, b))
    xlabel = "median ms per stage (sum of its blocks)" + ("; emulated: timings are not latency" if emulated else "")
    legend = [(f"A: {a.get('model')} {a.get('precision')}", COMPARE_COLORS[0]),
              (f"B: {b.get('model')} {b.get('precision')}", COMPARE_COLORS[1])]
    fig, drawn = _bar_figure(bars, full, xlabel, [r["stage"] for r in stages], positions, legend, height=0.38)
    _save_figure(fig, path, fmt)
    return ProfilePlotFacts(full, xlabel, bars, drawn)
