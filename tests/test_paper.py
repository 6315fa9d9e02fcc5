"""benchmarks/paper.py's table (`make paper`): pairs in the paper's order, each side's counts,
published top-1 and mean/median latency, the TinyNet / EfficientNet ratio and the paper's P40
ratios, computed from report rows (the measuring itself is edgeconv.bench, tested elsewhere)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgeconv.recipe import load_recipe

_spec = importlib.util.spec_from_file_location("paper", Path(__file__).resolve().parents[1] / "benchmarks" / "paper.py")
paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper)


def _row(model: str, precision: str, mean: float, median: float) -> dict:
    return {"model": model, "format": "tflite", "precision": precision, "runtime": "tflite", "params": 1_000_000,
            "macs": 24_000_000, "mean_ms": mean, "median_ms": median, "runs": 1000}


def test_pairs_follow_the_paper():
    assert paper.PAIRS == [("efficientnet-b0", "tinynet-a"), ("efficientnet-bm1", "tinynet-b"),
                           ("efficientnet-bm2", "tinynet-c"), ("efficientnet-bm3", "tinynet-d"),
                           ("efficientnet-bm4", "tinynet-e")]
    assert paper.P40_RATIO == {("efficientnet-b0", "tinynet-a"): 0.81, ("efficientnet-bm4", "tinynet-e"): 0.80}
    # the paper's ratios are its latencies' ratios
    assert round(paper.P40_MS["tinynet-a"] / paper.P40_MS["efficientnet-b0"], 2) == 0.81
    assert round(paper.P40_MS["tinynet-e"] / paper.P40_MS["efficientnet-bm4"], 2) == 0.80


def test_table_ratios_and_published_top1():
    report = [_row("efficientnet-bm4", "fp32", 2.0, 1.8), _row("tinynet-e", "fp32", 1.5, 1.2),
              _row("efficientnet-bm4", "int8", 1.0, 0.9), _row("tinynet-e", "int8", 0.9, 0.9),
              _row("tinynet-d", "fp32", 3.0, 2.9), _row("tinynet-e", "fp32", 99.0, 99.0) | {"runtime": "openvino"}]
    published = {m: load_recipe(m).published.get("top1") for m in paper.MODELS}
    table = paper.paper_table(report, "tflite", ["fp32", "int8"], published)
    assert [(r["precision"], r["tinynet"]) for r in table] == [("fp32", "tinynet-d"), ("fp32", "tinynet-e"),
                                                               ("int8", "tinynet-e")]
    d, e32, e8 = table
    assert (e32["ratio"], e32["median_ratio"], e32["paper_ratio"]) == (pytest.approx(0.75), pytest.approx(1.2 / 1.8),
                                                                        0.80)
    assert e32["t_latency"] == "1.50 (1.20)" and e32["e_latency"] == "2.00 (1.80)"
    assert (e32["e_top1"], e32["t_top1"], e32["e_p40_ms"], e32["t_p40_ms"]) == (56.7, 59.9, 11.54, 9.18)
    assert e8["ratio"] == pytest.approx(0.9)
    assert d["ratio"] is None and d["paper_ratio"] is None and d["e_latency"] == "-"  # B^-3 not measured
    assert published["tinynet-a"] == 76.8 and published["efficientnet-bm1"] is None
