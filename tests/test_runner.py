"""``python -m edgeconv.runner``, edgeconv's device-side stand-in for benchmark_model, run for real
on the tinynet-e TFLite build: its flags and semantics (num_runs is a minimum, max_secs truncates),
its report (parsed by the same parser as benchmark_model's), and the zip it travels in."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeconv.bench.android import build_runner_zip
from edgeconv.bench.parsers import parse_benchmark_model
from edgeconv.runner import TIMINGS_LABEL, ZIP_MEMBERS, Stat, parse_flags
from tests.test_android_bench import tinynet  # noqa: F401 - the session build of tinynet-e

REPO = Path(__file__).resolve().parents[1]


def run_runner(*flags: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeconv.runner", *flags], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def int8(tinynet: Path) -> str:  # noqa: F811
    return str(tinynet / "tflite" / "int8.tflite")


def test_report_parses_like_benchmark_model_and_timings_agree(int8: str) -> None:
    out = run_runner(f"--graph={int8}", "--num_threads=1", "--num_runs=200", "--warmup_runs=5",
                     "--warmup_min_secs=0", "--min_secs=0", "--max_secs=100", "--use_xnnpack=true",
                     "--report_run_timings=true")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # like benchmark_model, the report goes to stderr
    report = parse_benchmark_model(out.stderr)
    assert report.ok and report.failure is None
    assert report.timed.count == 200 and report.timed.min_iterations == 200
    assert report.warmup.count == 5 and report.warmup.min_iterations == 5
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith(f"INFO: {TIMINGS_LABEL}"))
    timings = [int(v) for v in line.split(":", 2)[2].split()]
    assert len(timings) == 200 and min(timings) > 0
    us = sorted(t // 1000 for t in timings)  # the report's numbers are integer microseconds
    assert (report.timed.min_us, report.timed.max_us) == (us[0], us[-1])
    assert report.timed.avg_us == pytest.approx(sum(us) / 200, rel=1e-5)
    assert report.timed.median_us == us[100] and report.timed.p95_us == us[190]
    assert report.inference_avg_us == report.timed.avg_us
    assert report.init_us > 0 and report.first_inference_us > 0
    assert report.model_size_mb == pytest.approx(os.path.getsize(int8) / 1e6, rel=1e-5)
    assert report.overall_memory_mb is not None and report.overall_memory_mb >= report.init_memory_mb
    assert "INFO: Runtime: [ai-edge-litert " in out.stderr


def test_num_runs_is_a_minimum_and_max_secs_truncates(int8: str) -> None:
    """benchmark_model's loop: more runs than --num_runs until --min_secs, none after --max_secs."""
    slow = run_runner(f"--graph={int8}", "--num_runs=10", "--min_secs=0.3", "--warmup_runs=1",
                      "--warmup_min_secs=0")
    timed = parse_benchmark_model(slow.stderr).timed
    assert timed.count > 10 and timed.count * timed.avg_us >= 0.3e6 * 0.9
    cut = run_runner(f"--graph={int8}", "--num_runs=100000", "--min_secs=0", "--max_secs=0.2",
                     "--warmup_runs=1", "--warmup_min_secs=0")
    report = parse_benchmark_model(cut.stderr)
    assert cut.returncode == 0 and report.ok  # truncated silently, exactly like benchmark_model
    assert 1 <= report.timed.count < 100000 and report.timed.min_iterations == 100000
    assert "terminate if exceeding 0.2 seconds" in cut.stderr


def test_unknown_flags_are_ignored_with_a_warning(int8: str) -> None:
    out = run_runner(f"--graph={int8}", "--num_runs=3", "--min_secs=0", "--warmup_min_secs=0",
                     "--enable_op_profiling=true", "--gpu", "stray")
    assert out.returncode == 0, out.stderr
    assert "WARN: Unconsumed cmdline flags: --enable_op_profiling=true --gpu stray\n" in out.stderr
    assert parse_benchmark_model(out.stderr).timed.count == 3


@pytest.mark.parametrize("flags, error", [
    (["--num_runs=many"], "ERROR: Failed to parse the value of flag --num_runs: 'many'"),
    (["--graph=/nonexistent/m.tflite"], "ERROR: Failed to mmap model /nonexistent/m.tflite"),
    (["--graph={bad}"], "ERROR: Failed to initialize the interpreter: {bad}: not a loadable .tflite model"),
    (["--graph={int8}", "--use_xnnpack=false"], "ERROR: --use_xnnpack=false is not supported"),
    ([], "ERROR: Please specify the name of your TF Lite input file with --graph"),
])
def test_failures_read_as_benchmark_model_failures(int8: str, tmp_path: Path, flags: list[str],
                                                   error: str) -> None:
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(b"not a flatbuffer" * 64)
    flags = [f.format(bad=bad, int8=int8) for f in flags]
    out = run_runner(*flags)
    assert out.returncode == 1
    assert error.format(bad=bad) in out.stderr
    assert out.stderr.rstrip().endswith("ERROR: Benchmarking failed.")
    report = parse_benchmark_model(out.stderr)
    assert not report.ok and report.failure.startswith("benchmarking failed: ")
    assert report.timed is None


def test_flag_parsing_follows_benchmark_model() -> None:
    values, rest = parse_flags(["--num_runs=7", "--use_xnnpack=0", "--min_secs=1.5", "--report_run_timings",
                                "--graph=/a b/c.tflite", "-v", "--x=1"])
    assert (values["num_runs"], values["use_xnnpack"], values["min_secs"]) == (7, False, 1.5)
    assert values["report_run_timings"] is True and values["graph"] == "/a b/c.tflite"
    assert values["max_secs"] == 150.0 and values["warmup_runs"] == 1  # benchmark_model's defaults
    assert rest == ["-v", "--x=1"]


def test_stat_lines_match_tsl_stat() -> None:
    """tsl::Stat output (count=1, all same, truncated integer std) read back by the parser."""
    cases = {(500,): "count=1 curr=500 p5=500 median=500 p95=500",
             (7, 7, 7): "count=3 curr=7(all same) p5=7 median=7 p95=7",
             (10, 20, 30, 41): "count=4 first=10 curr=41 min=10 max=41 avg=25.25 std=11 p5=10 median=30 p95=41"}
    for values, line in cases.items():
        stat = Stat(list(values))
        assert stat.line() == line
        parsed = parse_benchmark_model(f"INFO: {line}\nInference timings in us: Init: 1, First inference: "
                                       f"{values[0]}, Warmup (avg): 1, Inference (avg): {stat.avg():g}\n").timed
        assert parsed.count == len(values) and parsed.avg_us == pytest.approx(stat.avg())
    population = math.sqrt(sum((v - 25.25) ** 2 for v in (10, 20, 30, 41)) / 4)
    assert Stat([10, 20, 30, 41]).std() == int(population)


def test_the_zip_holds_only_the_runner_and_runs_on_its_own(int8: str, tmp_path: Path) -> None:
    """Pushed to devices as PYTHONPATH=edgeconv-runner.zip: nothing else of edgeconv, no torch/TF."""
    first = build_runner_zip(tmp_path)
    again = (tmp_path / "again").mkdir() or build_runner_zip(tmp_path / "again")
    assert first.read_bytes() == again.read_bytes()  # deterministic: an unchanged runner is not re-pushed
    names = zipfile.ZipFile(first).namelist()
    runtimes = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "edgeconv" / "runtimes").glob("*.py"))
    assert sorted(names) == sorted(["edgeconv/__init__.py", "edgeconv/errors.py", "edgeconv/runner.py", *runtimes])
    assert ZIP_MEMBERS[2] == "edgeconv/runtimes/"
    probe = ("import json, runpy, sys\n"
             f"sys.argv = ['runner', '--graph={int8}', '--num_runs=5', '--min_secs=0', '--warmup_min_secs=0']\n"
             "try:\n    runpy.run_module('edgeconv.runner', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "mods = {n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}\n"
             "print(json.dumps({'code': code, 'edgeconv': {n: f for n, f in mods.items() if n.startswith('edgeconv')},"
             " 'heavy': sorted({'torch', 'tensorflow', 'keras', 'openvino'} & set(mods))}))\n")
    env = {**os.environ, "PYTHONPATH": str(first)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    result = json.loads(out.stdout)
    assert result["code"] == 0, out.stderr
    assert result["heavy"] == []
    assert result["edgeconv"] and all(f.startswith(str(first)) for f in result["edgeconv"].values())
    assert set(result["edgeconv"]) <= {"edgeconv", "edgeconv.errors", "edgeconv.runner", "edgeconv.runtimes",
                                       "edgeconv.runtimes.tflite"}
    assert parse_benchmark_model(out.stderr).timed.count == 5
