"""What CI sees from `edgeconv check` when there is no verdict (issue 13, items 11 and 12): exit
code 2 for a bad command line, 3 for a data, artifact or tool error (1 stays "a gate failed", see
test_check.py), a JUnit file with an <error> saying why, --junit checked before the evaluation,
and accuracy rows stored as they are measured (a real SIGINT after the first one keeps it)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeconv.build import build
from edgeconv.cli import cli
from tests.test_bad_inputs import one_line, photo_folders

EVAL_ONLY = ["--formats", "onnx,openvino", "--precisions", "fp32,fp16"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def fp_build(tmp_path_factory) -> Path:
    """tinynet-e (random init) as ONNX and OpenVINO fp32/fp16: three artifacts, no calibration."""
    out = tmp_path_factory.mktemp("fp")
    build("tinynet-e", out=out, formats="onnx,openvino", precisions="fp32,fp16")
    return out


def junit_error(path: Path) -> ET.Element:
    """The single <error> of a JUnit file written for a check without a verdict."""
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.get("failures") == "0" and suite.get("tests") == "1"
    (case,) = suite.findall("testcase")
    error = case.find("error")
    assert error is not None and error.text == error.get("message")
    return error


# ---- 11. exit codes and the JUnit <error> ----
@pytest.mark.parametrize("args, message", [
    (["tinynet-q", "--data", "{data}"], "unknown model 'tinynet-q'"),
    (["tinynet-e", "--data", "{data}", "--formats", "coreml"], "--formats coreml: choose from"),
    (["tinynet-e", "--data", "{data}", "--precisions", "int4"], "--precisions int4: choose from"),
])
def test_a_bad_command_line_is_exit_2_with_a_junit_error(tmp_path, args, message):
    data = photo_folders(tmp_path / "data")
    r = run("check", *[a.format(data=data) for a in args], "--out", tmp_path / "out", "--junit", tmp_path / "ci.xml",
            "--db", tmp_path / "r.db", "-q")
    one_line(r, 2, message)
    error = junit_error(tmp_path / "ci.xml")
    assert message in error.get("message") and error.get("type") == "UsageError"
    assert not (tmp_path / "out").exists()  # nothing was built


def test_data_errors_are_exit_3_with_a_junit_error(tmp_path, fp_build):
    missing = tmp_path / "no-such-data"
    r = run("check", "tinynet-e", "--data", missing, "--out", fp_build, *EVAL_ONLY, "--junit", tmp_path / "a.xml",
            "--db", tmp_path / "r.db", "-q")
    one_line(r, 3, f"--data {missing}: no such folder")
    error = junit_error(tmp_path / "a.xml")
    assert error.get("message") == f"--data {missing}: no such folder" and error.get("type") == "DataError"

    junk = tmp_path / "junk" / "0"
    junk.mkdir(parents=True)
    for i in range(2):
        (junk / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r = run("check", "tinynet-e", "--data", junk.parent, "--out", fp_build, *EVAL_ONLY, "--junit",
            tmp_path / "b.xml", "--db", tmp_path / "r.db", "-q")
    one_line(r, 3, "none of the 2 images can be used")
    assert "none of the 2 images can be used" in junit_error(tmp_path / "b.xml").get("message")

    (tmp_path / "notes.pth").write_text("not weights\n")
    r = run("check", "tinynet-e", "--weights", tmp_path / "notes.pth", "--data", photo_folders(tmp_path / "d"),
            "--out", tmp_path / "out", *EVAL_ONLY, "--junit", tmp_path / "c.xml", "--db", tmp_path / "r.db", "-q")
    one_line(r, 3, "a text file, not a checkpoint")
    assert "a text file, not a checkpoint" in junit_error(tmp_path / "c.xml").get("message")


@pytest.mark.parametrize("junit, reason", [
    ("{tmp}/" + "x" * 300 + ".xml", "File name too long"),
    ("{tmp}/afile/ci.xml", "Not a directory"),
])
def test_junit_is_checked_writable_before_the_evaluation(tmp_path, junit, reason):
    (tmp_path / "afile").write_text("")
    junit = junit.format(tmp=tmp_path)
    r = run("check", "tinynet-e", "--data", photo_folders(tmp_path / "data"), "--out", tmp_path / "out",
            "--junit", junit, "--db", tmp_path / "r.db")  # not -q: any progress line would show
    one_line(r, 3, f"{junit}: {reason}")
    assert r.stderr.strip().splitlines() == [f"edgeconv: error: {junit}: {reason}"]  # nothing ran before it
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "data"]  # no temp file left


# ---- 12. each accuracy row is stored as it is measured ----
def accuracy_rows(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as c:
        try:
            return c.execute("SELECT format, precision FROM accuracy ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # the schema is being created
            return []


@pytest.mark.parametrize("command", ["eval", "check"])
def test_ctrl_c_after_the_first_row_keeps_it(tmp_path, fp_build, imagenet_sample, command):
    db = tmp_path / "r.db"
    junit = ["--junit", tmp_path / "ci.xml"] if command == "check" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeconv.cli", command, "tinynet-e", "--data", imagenet_sample, "--limit", "400",
         "--out", fp_build, *EVAL_ONLY, "--db", db, "-q", *map(str, junit)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for _ in range(3000):  # at most 10 minutes
            if accuracy_rows(db) or proc.poll() is not None:
                break
            time.sleep(0.2)
        stored = accuracy_rows(db)
        assert stored[:1] == [("pytorch", "fp32")], (stored, proc.poll())  # the reference row comes first
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "edgeconv: interrupted (the accuracy rows measured so far are saved)"
    assert "Traceback" not in err
    rows = accuracy_rows(db)
    assert rows[0] == ("pytorch", "fp32") and len(rows) < 4  # kept, and the run really was cut short
    if junit:
        error = junit_error(tmp_path / "ci.xml")
        assert error.get("message") == "interrupted before a verdict" and error.get("type") == "KeyboardInterrupt"
