"""`edgeconv compare`, the CI regression gate, on real builds and real measurements: two builds of
one toy recipe name (the candidate's resolution 4x larger: 16x the MACs), benchmarked with ONNX
Runtime and tagged. The same artifact measured twice is no regression (also across two databases,
as in CI); the larger resolution fails the gate with exit 1 and a JUnit failure when the runs are
stable, and is 'inconclusive' when measured with a busy process on the bench's core. Accuracy rows
(as eval stores them) are gated too."""
from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgeconv.cli import cli
from edgeconv.compare import bootstrap_ratio_ci, environment_changes, latency_verdict
from edgeconv.store import Store
from tests.test_stability import busy_on, stop

REPO = Path(__file__).resolve().parents[1]
CORE = max(os.sched_getaffinity(0))
RUNS = ["--runs", "400", "--warmup", "20", "--runtime", "onnxruntime", "--core", str(CORE)]


def toy_recipe(folder: Path, resolution: int) -> Path:
    """A three-stage MBConv net named toycmp (the same name on both sides) at ``resolution``."""
    d = yaml.safe_load((REPO / "recipes" / "tinynet-e.yaml").read_text())
    d["name"] = "toycmp"
    a = d["arch"]
    a.update(stages=["ds_r1_k3_s1_e1_c16_se0.25", "ir_r1_k3_s2_e6_c24_se0.25", "ir_r1_k5_s2_e6_c40_se0.25"],
             width=1.0, depth=1.0, resolution=resolution, num_classes=10)
    a.pop("resolution_multiplier", None)
    a["head"]["channels"] = 256
    d.pop("published", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toycmp.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeconv.build import build

    root = tmp_path_factory.mktemp("cmp")
    out = {}
    for name, res in (("small", 64), ("large", 256)):
        m = build(str(toy_recipe(root / name, res)), formats="onnx", out=str(root / name / "build"))
        assert m["resolution"] == res and m["model"] == "toycmp"
        out[name] = root / name / "build" / "toycmp"
    return out


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def bench(folder: Path, tag: str, db: Path, *extra: str):
    r = run("bench", "--artifacts", str(folder), *RUNS, "--tag", tag, "--db", str(db), "--json", *extra)
    assert r.exit_code == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    return res


def test_the_statistics() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    a = 1e6 + rng.normal(0, 2e4, 1000)
    lo, hi = bootstrap_ratio_ci(a, 1.5 * a)
    assert lo < 1.5 < hi and hi - lo < 0.05
    assert bootstrap_ratio_ci(a, 1.5 * a) == (lo, hi)  # seeded: the same data, the same interval
    assert latency_verdict(1.5, (1.45, 1.55), 5, stable=True) == "regression"
    assert latency_verdict(1.5, (1.45, 1.55), 5, stable=False) == "inconclusive"
    assert latency_verdict(1.06, (1.01, 1.11), 5, stable=True) == "inconclusive"  # the CI reaches below +5 %
    assert latency_verdict(1.01, (0.99, 1.03), 5, stable=True) == "no regression"
    assert latency_verdict(0.5, (0.45, 0.55), 5, stable=True) == "faster"
    assert latency_verdict(0.5, (0.45, 0.55), 5, stable=False) == "inconclusive"  # a busy baseline is no speed-up
    assert environment_changes({"kernel": "6.1", "onnxruntime runtime": "1.19"},
                               {"kernel": "6.1", "onnxruntime runtime": "1.20", "python": "3.11"}) == [
        "onnxruntime runtime: 1.19 -> 1.20", "python: (none) -> 3.11"]


def test_same_artifact_twice_is_no_regression(builds: dict[str, Path], tmp_path: Path) -> None:
    """Measured twice, into two databases: the baseline's is main's artifact in CI (--baseline-db).
    The same artifact is never a regression nor a speed-up; a shared machine may leave a run noisy,
    and then the verdict says inconclusive, never faster (as CI once did before the rule).

    The limit is 20 %, not the default 5: two processes of this 0.5 ms toy differ by more than the
    default absorbs on a shared 2-core VM even when both runs are stable (ratios 0.940, 0.973,
    0.990 and one over 1.10 in pairs on the idle machine, intervals about 1.5 % wide; six processes
    in a row: medians 0.493-0.535 ms): docs/ci.md's advice for tight limits.

    Even 20 % is not a bound on two processes of a shared VM: one CI run measured the same
    artifact more than 20 % slower, both runs stable. A slowdown of the same artifact does not
    persist, a real one does (``test_larger_resolution_is_caught``): as docs/ci.md advises, a
    regression is measured again (the candidate, up to twice more) before it is believed."""
    main_db, pr_db = tmp_path / "main.db", tmp_path / "pr.db"
    quiet = ["--until-stable", "3", "--core", str(quietest_core())]  # the last --core wins over RUNS'
    bench(builds["small"], "main", main_db, *quiet)
    junit = tmp_path / "cmp.xml"
    limit = ["--max-slowdown", "20"]
    seen = []
    for _ in range(3):
        bench(builds["small"], "pr", pr_db, *quiet)  # compare takes the latest run of the tag
        r = run("compare", "--baseline", "main", "--candidate", "pr", "--baseline-db", str(main_db), "--db",
                str(pr_db), "--junit", str(junit), "--json", *limit)
        out = json.loads(r.stdout)
        (row,) = out["latency"]
        seen.append((row["verdict"], round(row["ratio"], 3), r.exit_code))
        assert row["verdict"] != "faster", seen
        if row["verdict"] != "regression":
            break
    assert r.exit_code == 0, (seen, r.stderr)
    assert (row["model"], row["format"], row["precision"], row["runtime"]) == ("toycmp", "onnx", "fp32", "onnxruntime")
    unstable = [n for n in row["notes"] if n.endswith((" is noisy", " is throttled"))]
    assert row["notes"] == unstable  # same artifact: no other note
    allowed = {"no regression", "inconclusive"} if unstable else {"no regression"}
    assert row["verdict"] in allowed, row
    assert row["ci"][0] <= row["ratio"] <= row["ci"][1]
    assert out["environment"] == [] and out["regressions"] == 0 and out["exit_code"] == 0
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("tests") == "1"
    table = run("compare", "--baseline", "main", "--candidate", "pr", "--baseline-db", str(main_db), "--db", str(pr_db),
                *limit)
    assert table.exit_code == 0 and "environment: no differences" in table.stdout
    assert row["verdict"] in table.stdout


def quietest_core() -> int:
    """The usable core other processes used least over half a second (other jobs share the machine)."""
    from edgeconv.bench.context import task_snapshot

    before = task_snapshot()
    time.sleep(0.5)
    used = dict.fromkeys(os.sched_getaffinity(0), 0)
    for tid, (_pid, _comm, core, ticks) in task_snapshot().items():
        if core in used and tid in before:
            used[core] += ticks - before[tid][3]
    return min(used, key=lambda c: (used[c], -c))


def _stable_pair(builds: dict[str, Path], db: Path) -> tuple[dict, dict]:
    core = ["--core", str(quietest_core())]  # the last --core wins over RUNS'
    base = bench(builds["small"], "base", db, "--until-stable", "5", *core)
    cand = bench(builds["large"], "cand", db, "--until-stable", "5", *core)
    return base, cand


def test_larger_resolution_is_caught(builds: dict[str, Path], tmp_path: Path) -> None:
    db, junit = tmp_path / "r.db", tmp_path / "cmp.xml"
    base, cand = _stable_pair(builds, db)
    r = run("compare", "--baseline", "base", "--candidate", "cand", "--db", str(db), "--junit", str(junit), "--json")
    (row,) = json.loads(r.stdout)["latency"]
    assert row["ratio"] > 2 and row["ci"][0] > 1.05 and "resolution 64 -> 256" in row["notes"]
    if (base["verdict"], cand["verdict"]) != ("stable", "stable"):  # this machine gave no stable run in 5
        assert (r.exit_code, row["verdict"]) == (0, "inconclusive")
        pytest.skip(f"no stable runs on this machine (base {base['verdict']}, candidate {cand['verdict']}: "
                    f"{'; '.join(base['verdict_reasons'] + cand['verdict_reasons'])})")
    assert r.exit_code == 1 and row["verdict"] == "regression"
    assert "edgeconv: 1 regression beyond the limits (+5 % latency, -1 pt top-1)" in r.stderr
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and case.get("name") == "toycmp onnx/fp32 onnxruntime on " + row["device"] + ", 1 thread"
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "LatencyRegression"
    assert failure.get("message", "").endswith(f"ratio {row['ratio']:.3f} (95 % CI {row['ci'][0]:.3f}-"
                                               f"{row['ci'][1]:.3f})")


def test_regression_measured_while_noisy_is_inconclusive(builds: dict[str, Path], tmp_path: Path) -> None:
    db, junit = tmp_path / "r.db", tmp_path / "cmp.xml"
    bench(builds["small"], "base", db)
    proc = busy_on(CORE)
    try:
        time.sleep(0.3)
        cand = bench(builds["large"], "cand", db)
    finally:
        stop(proc)
    assert cand["verdict"] == "noisy"
    r = run("compare", "--baseline", "base", "--candidate", "cand", "--db", str(db), "--junit", str(junit))
    assert r.exit_code == 0, r.stderr  # neither a pass nor a failure: said so
    assert "inconclusive" in r.stdout and f"candidate run {cand['run_id']} is noisy" in r.stdout
    assert "edgeconv: warning: toycmp onnx/fp32 onnxruntime on " in r.stderr and ": inconclusive (" in r.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and (suite.get("failures"), suite.get("skipped")) == ("0", "1")
    skipped = suite.find("testcase/skipped")
    assert skipped is not None and skipped.get("message", "").startswith("inconclusive: median ")


def test_accuracy_rows_are_gated(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with Store(db) as s:  # what `edgeconv eval --tag` stores
        for tag, int8 in (("base", 0.700), ("cand", 0.640)):
            s.record_accuracy("toycmp", "tflite", "fp32", "sample", 500, 0.71, tag=tag)
            s.record_accuracy("toycmp", "tflite", "int8", "sample", 500, int8, tag=tag)
        s.record_accuracy("toycmp", "tflite", "fp16", "sample", 500, 0.71, tag="cand")
    junit = tmp_path / "acc.xml"
    r = run("compare", "--baseline", "base", "--candidate", "cand", "--db", str(db), "--max-drop", "2",
            "--junit", str(junit), "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    got = {(a["precision"], a["verdict"], round(a["drop_pt"], 2)) for a in out["accuracy"]}
    assert got == {("fp32", "no regression", 0.0), ("int8", "regression", 6.0)}
    assert out["latency"] == [] and out["unmatched"]["candidate"] == ["toycmp/tflite/fp16 top-1"]
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and failure.get("type") == "AccuracyDrop"
    assert "--tag NAME" in run("eval", "--help").stdout and "--tag NAME" in run("check", "--help").stdout


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    r = run("compare", "--baseline", "nope", "--candidate", "pr", "--db", str(db))
    assert (r.exit_code, r.stderr) == (1, f"edgeconv: error: no results tagged 'nope' in {db} (bench --tag nope)\n")
    r = run("compare", "--baseline", "a", "--db", str(db))
    assert r.exit_code == 2 and r.stderr.startswith("edgeconv: error: Missing option '--candidate'")


def test_piped_tables_are_never_wrapped_inside_cells(capsys: pytest.CaptureFixture[str]) -> None:
    """A CI run's compare table had both runs noisy: the notes cell was wrapped over two lines at
    the piped width of 200, and "candidate run 2 is noisy" was no longer in the output."""
    from edgeconv.cli.common import console
    from edgeconv.report import rich_table

    notes = "baseline run 1 is noisy; candidate run 2 is noisy; " + "window medians vary by 23 % " * 6
    console().print(rich_table([{"label": "toycmp onnx/fp32 onnxruntime on vm, 1 thread " * 2, "notes": notes}],
                               [("label", "latency", str), ("notes", "notes", str)]))
    out = capsys.readouterr().out
    assert notes.strip() in out and len(out.splitlines()) == 5  # top, header, rule, one row, bottom
