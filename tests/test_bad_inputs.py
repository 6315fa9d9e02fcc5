"""Bad inputs a new user gives, each provoked for real (issue 13, items 9, 13 and 16): decompression
bombs among the images, read-only commands on a database that does not exist, files where folders
are expected, an OpenVINO .xml without its .bin, an unknown family or model, NaN in --json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgeconv.build import build
from edgeconv.cli import cli

REPO = Path(__file__).resolve().parents[1]
RUNS = ["--runs", "3", "--warmup", "1"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(r, code: int, text: str) -> str:
    """The result failed with ``code`` and its last stderr line, an edgeconv error, holds ``text``."""
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, r.output
    assert lines and lines[-1].startswith("edgeconv: error: ") and text in lines[-1], r.output
    assert "Traceback" not in r.output, r.output
    return lines[-1]


# ---- 13. read-only commands never create a database ----
@pytest.mark.parametrize("command", [["results"], ["results", "--json"], ["report"], ["report", "--csv"]])
def test_read_only_commands_do_not_create_a_database(tmp_path, command):
    db = tmp_path / "nowhere" / "results.db"
    r = run(*command, "--db", db)
    one_line(r, 1, f"results database {db}: no such file")
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert list(tmp_path.iterdir()) == []  # neither the file nor its folder


def test_the_default_database_is_not_created_by_results(tmp_path, monkeypatch):
    db = tmp_path / "default.db"
    monkeypatch.setenv("EDGECONV_DB", str(db))
    one_line(run("report"), 1, f"results database {db}: no such file")
    assert not db.exists()


# ---- 16. messages naming the real cause ----
def test_models_family_must_exist():
    line = one_line(run("models", "--family", "foo"), 1, "--family 'foo': no such family")
    assert "efficientnet" in line and "tinynet" in line  # the families are listed
    r = run("models", "--family", "tinynet", "--json")
    assert r.exit_code == 0 and {m["family"] for m in json.loads(r.stdout)} == {"tinynet"}


@pytest.mark.parametrize("args, option", [
    (["eval", "tinynet-e", "--data", "{f}"], "--data"),
    (["check", "tinynet-e", "--data", "{f}"], "--data"),
    (["build", "tinynet-e", "--formats", "tflite", "--precisions", "int8", "--calib", "{f}", "--calib-size", "4"],
     "--calib"),
])
def test_a_file_where_an_image_folder_is_expected(tmp_path, args, option):
    f = tmp_path / "images.txt"
    f.write_text("a.jpg\nb.jpg\n")
    args = [a.format(f=f) for a in args] + ["--out", tmp_path / "out"]
    one_line(run(*args), 1, f"{option} {f}: is a file, not a folder")


def test_bench_artifacts_given_a_file(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"\x08\x01")
    one_line(run("bench", "--artifacts", f, *RUNS), 1, f"{f}: is a file, not a build folder")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    line = one_line(run("bench", "--artifacts", tmp_path / "b" / "manifest.json", *RUNS), 1, "is a file")
    assert line.endswith(f"give its folder, {tmp_path / 'b'}")


@pytest.fixture(scope="module")
def openvino_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ov")
    build("tinynet-e", out=out, formats="openvino", precisions="fp32")
    return out


def test_an_openvino_xml_without_its_bin(openvino_build, tmp_path):
    folder = tmp_path / "tinynet-e"
    shutil.copytree(openvino_build / "tinynet-e", folder)
    (folder / "openvino" / "fp32.bin").unlink()
    r = run("bench", "--artifacts", folder, "--runtime", "openvino", *RUNS, "--db", tmp_path / "r.db")
    one_line(r, 1, f"{folder}/openvino/fp32.xml: its weights file fp32.bin is missing")


@pytest.mark.parametrize("command", [["bench", *RUNS], ["eval", "--data", "."], ["check", "--data", "."]])
def test_an_unknown_model_is_named_before_any_build(tmp_path, command):
    r = run(command[0], "tinynet-q", *command[1:], "--out", tmp_path, "--db", tmp_path / "r.db")
    one_line(r, 1, "unknown model 'tinynet-q'")
    assert "building" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tinynet-q").exists() and not list(tmp_path.glob(".*lock"))


def test_json_output_never_holds_nan(tmp_path):
    data = yaml.safe_load((REPO / "recipes" / "tinynet-e.yaml").read_text())
    data["published"]["top1"] = float("nan")
    data["published"]["extra"] = [float("inf"), 1.5, True, 3]
    p = tmp_path / "nan.yaml"
    p.write_text(yaml.safe_dump(data))
    assert ".nan" in p.read_text()
    r = run("models", "show", p, "--json")
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    pub = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))["published"]
    assert pub["top1"] is None and pub["extra"] == [None, 1.5, True, 3]
