"""`edgeconv results` / `edgeconv report`: which run represents a row, the table/Markdown/CSV/JSON
outputs, and the Pareto plot (file written, pixels of each family's colour, which points are
published or on the front, label boxes that do not overlap)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeconv.cli.results import report, results
from edgeconv.errors import UserError
from edgeconv.report import (
    FAMILY_STYLE,
    REPORT_COLUMNS,
    REPORT_FIELDS,
    pareto_front,
    plot_pareto,
    report_rows,
    to_csv,
    to_markdown,
    visible_columns,
)
from edgeconv.store import RUN_FIELDS, ArtifactRecord, RunRecord, Store

# (model, top-1 % or None, median ms, MMACs): TinyNet-paper-like numbers
ZOO = [("tinynet-a", 77.7, 6.2, 339), ("tinynet-c", 71.2, 2.6, 100), ("tinynet-e", 59.9, 0.9, 24),
       ("efficientnet-b0", 77.1, 7.5, 390), ("efficientnet-bm3", 65.4, 2.0, 70),
       ("efficientnet-lite0", 75.1, 5.0, 400), ("efficientnet-lite1", None, 7.9, 630)]


def fill(db: Path, zoo=ZOO, accuracy: bool = True, device: str = "box") -> None:
    with Store(db) as s:
        dev = s.upsert_device({"kind": "host", "name": device})
        for model, top1, ms, mmacs in zoo:
            art = ArtifactRecord(model, "tflite", "int8", f"/b/{model}/int8.tflite", f"sha-{model}",
                                 int(mmacs * 10_000), macs=int(mmacs * 1e6))
            s.record_run(dev, art, RunRecord("tflite", "ok", 3, 1, timings_ns=[int(ms * 1e6)] * 3))
            if accuracy and top1 is not None:
                s.record_accuracy(model, "tflite", "int8", "imagenet-val", 50000, top1 / 100)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "r.db"
    fill(path)
    return path


def test_report_uses_latest_ok_run_and_accuracy(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    fill(path, [("tinynet-e", 59.9, 9.0, 24)])
    fill(path, [("tinynet-e", None, 1.0, 24)])  # a newer ok run
    with Store(path) as s:
        dev = s.upsert_device({"kind": "host", "name": "box"})
        art = ArtifactRecord("tinynet-e", "tflite", "int8", "/x", "sha-tinynet-e", 1)
        s.record_run(dev, art, RunRecord("tflite", "failed", 3, 1, error="boom"))  # newest: failed
        s.record_run(dev, art, RunRecord("tflite", "ok", 3, 1, threads=2, timings_ns=[5] * 3))
        (row,) = report_rows(s)
    assert tuple(row) == REPORT_FIELDS
    assert row["median_ms"] == pytest.approx(1.0) and row["runs"] == 3 and row["threads"] == 1
    assert row["top1_pct"] == pytest.approx(59.9) and row["dataset"] == "imagenet-val"
    assert row["size_mb"] == pytest.approx(0.24)


def test_markdown_and_csv(db: Path) -> None:
    with Store(db) as s:
        rows = report_rows(s, models=["tinynet-e", "efficientnet-lite1"])
    md = to_markdown(rows, visible_columns(rows, REPORT_COLUMNS)).splitlines()
    assert md[0] == ("| model | format | precision | size MB | top-1 % | median ms | p90 ms | runs | mem MB | "
                     "verdict |")
    assert md[2:] == ["| efficientnet-lite1 | tflite | int8 | 6.30 | - | 7.90 | 7.90 | 3 | - | stable |",
                      "| tinynet-e | tflite | int8 | 0.240 | 59.9 | 0.900 | 0.900 | 3 | - | stable |"]
    lines = to_csv(rows, ["model", "top1_pct", "median_ms"]).splitlines()
    assert lines == ["model,top1_pct,median_ms", "efficientnet-lite1,,7.9", "tinynet-e,59.9,0.9"]


def test_device_column_only_with_several_devices(db: Path) -> None:
    with Store(db) as s:
        assert "device" not in [c[0] for c in visible_columns(report_rows(s), REPORT_COLUMNS)]
    fill(db, ZOO[:1], device="phone")
    with Store(db) as s:
        assert "device" in [c[0] for c in visible_columns(report_rows(s), REPORT_COLUMNS)]
        assert len(report_rows(s, device="phone")) == 1


def test_pareto_front() -> None:
    pts = [(1.0, 60.0), (2.0, 58.0), (2.5, 70.0), (3.0, 70.0), (6.0, 77.0), (7.0, 76.0), (1.0, 55.0)]
    assert pareto_front(pts) == [0, 2, 4]


def _family_pixels(png: Path, family: str) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    want = np.array([int(FAMILY_STYLE[family][0][i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).sum(axis=2) < 30).sum())


def test_plot_png_latency_vs_accuracy(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        rows = report_rows(s)
    png = tmp_path / "pareto.png"
    facts = plot_pareto(rows, png)
    assert len(facts) == 7  # lite1 has no accuracy result: plotted at its published top-1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size == (1200, 825)
    for fam in ("TinyNet", "EfficientNet", "EfficientNet-Lite"):
        assert _family_pixels(png, fam) > 50, fam
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_plot_facts_measured_published_front_labels(tmp_path: Path) -> None:
    """Measured top-1 where eval stored one, the recipe's published top-1 otherwise (hollow); the
    front over latency and top-1; labels that overlap nothing; texts naming device, threads and
    precision."""
    path = tmp_path / "r.db"
    fill(path, [z for z in ZOO if z[0] != "tinynet-a"])
    fill(path, [("tinynet-a", None, 6.2, 339), ("tinynet-b", None, 4.1, 200), ("tinynet-d", None, 1.6, 52),
                ("efficientnet-bm1", None, 4.0, 193), ("efficientnet-bm4", None, 1.2, 25)])
    with Store(path) as s:
        rows = report_rows(s)
    facts = plot_pareto(rows, tmp_path / "p.png")
    by_model = {p.model: p for p in facts.points}
    assert "efficientnet-bm1" not in by_model  # no eval result and nothing published: not plotted
    assert {m for m, p in by_model.items() if p.published} == {
        "tinynet-a", "tinynet-b", "tinynet-d", "efficientnet-bm4", "efficientnet-lite1"}
    assert (by_model["tinynet-a"].y, by_model["efficientnet-bm4"].y, by_model["efficientnet-lite1"].y) == \
        (76.8, 56.7, 76.7)  # the papers' figures
    assert by_model["tinynet-e"].y == pytest.approx(59.9) and not by_model["tinynet-e"].published
    # nothing both faster and more accurate than a front point; lite1 (7.9 ms, 76.7) loses to tinynet-a
    assert facts.front == ["efficientnet-b0", "efficientnet-lite0", "tinynet-a", "tinynet-b", "tinynet-c",
                           "tinynet-d", "tinynet-e"]
    boxes = facts.label_boxes
    assert len(boxes) == len(facts.points)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    assert facts.title == "Latency vs ImageNet top-1 on box: 1 thread, batch 1, tflite int8"
    assert facts.xlabel == "latency on box, median ms (1 thread, batch 1)"
    assert facts.ylabel == "ImageNet top-1 (%): measured (filled) or published (hollow)"


def test_plot_svg_latency_vs_macs_without_any_top1(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    fill(path, [(f"my-net-{i}", None, ms, mmacs) for i, (_m, _t, ms, mmacs) in enumerate(ZOO)], accuracy=False)
    with Store(path) as s:
        rows = report_rows(s)
    svg = tmp_path / "p.svg"
    svg.write_text("old")
    facts = plot_pareto(rows, svg)
    assert len(facts) == 7 and not facts.by_accuracy and facts.front == []  # no front over MACs
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text and "MACs (millions)" in text
    assert "my-net-0" in text and "my-net-6" in text and "Pareto" not in text


def test_plot_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        plot_pareto([], tmp_path / "p.gif")
    assert str(e.value) == f"--plot {tmp_path}/p.gif: use a .png or .svg file name"
    with pytest.raises(UserError) as e:
        plot_pareto([], tmp_path / "p.png")
    assert str(e.value) == "nothing to plot: no benchmark results with latency and accuracy or MACs"
    with pytest.raises(UserError) as e:
        plot_pareto([{"model": "m", "median_ms": 1.0, "macs": 5}], tmp_path / "no" / "p.png")
    assert str(e.value) == f"--plot {tmp_path}/no/p.png: folder {tmp_path}/no does not exist"


def test_report_cli(db: Path, tmp_path: Path) -> None:
    run = CliRunner()
    r = run.invoke(report, ["--db", str(db), "--json", "--models", "tinynet-e,tinynet-a"])
    assert r.exit_code == 0, r.stderr
    assert [x["model"] for x in json.loads(r.stdout)] == ["tinynet-a", "tinynet-e"]
    r = run.invoke(report, ["--db", str(db), "--markdown", "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("\n") == 2 + len(ZOO)
    assert r.stderr == f"plotted 7 points to {tmp_path}/p.png\n"
    r = run.invoke(report, ["--db", str(db), "--csv"])
    assert r.stdout.splitlines()[0] == ",".join(REPORT_FIELDS)
    r = run.invoke(report, ["--db", str(db), "--plot", str(tmp_path / "p.jpg")])
    assert (r.exit_code, r.stderr) == (1, f"edgeconv: error: --plot {tmp_path}/p.jpg: use a .png or .svg "
                                          "file name\n")
    Store(tmp_path / "empty.db").close()  # an existing database without runs
    r = run.invoke(report, ["--db", str(tmp_path / "empty.db")])
    assert (r.exit_code, r.stderr) == (0, f"no successful 1-thread benchmark results in "
                                          f"{tmp_path}/empty.db\n")


def test_results_cli(db: Path, tmp_path: Path) -> None:
    run = CliRunner()
    r = run.invoke(results, ["--db", str(db), "--json", "--model", "tinynet-c"])
    (row,) = json.loads(r.stdout)
    assert tuple(row) == RUN_FIELDS
    assert (row["model"], row["status"], row["median_ms"]) == ("tinynet-c", "ok", pytest.approx(2.6))
    r = run.invoke(results, ["--db", str(db), "--csv", "--device", "nowhere"])
    assert (r.exit_code, r.stdout) == (0, ",".join(RUN_FIELDS) + "\n")  # header only, same fields
    r = run.invoke(results, ["--db", str(db), "--limit", "2"])
    assert r.exit_code == 0 and "tinynet-a" not in r.stdout and "efficientnet-lite1" in r.stdout
    (tmp_path / "f").write_text("")
    r = run.invoke(results, ["--db", str(tmp_path / "f" / "x.db")])
    assert (r.exit_code, r.stderr) == (
        1, f"edgeconv: error: results database {tmp_path}/f/x.db: {tmp_path}/f is not a folder\n")
