"""Bad inputs a new user gives, each provoked for real (issue 13, items 9, 13 and 16): decompression
bombs among the images, read-only commands on a database that does not exist, files where folders
are expected, an OpenVINO .xml without its .bin, an unknown family or model, NaN in --json."""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgeconv.build import build, load_manifest
from edgeconv.cli import cli
from edgeconv.data import bundled_calibration_dir, calibration_set
from edgeconv.recipe import load_recipe

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


# ---- 9. decompression bombs are skipped like undecodable images, and named ----
def bomb_png(path: Path, w: int, h: int) -> Path:
    """A valid 1-bit grayscale PNG of w x h black pixels: a few kB on disk, w * h pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


BOMBS = {"bomb.png": (20000, 20000),  # 400 Mpx: Pillow raises DecompressionBombError
         "big.png": (10000, 10000)}  # 100 Mpx: Pillow only warns (DecompressionBombWarning)


def bomb_folder(folder: Path, good: int) -> Path:
    folder.mkdir(parents=True)
    for f in sorted(bundled_calibration_dir().glob("*.jpg"))[:good]:
        shutil.copy(f, folder / f.name)
    for name, (w, h) in BOMBS.items():
        bomb_png(folder / name, w, h)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def test_the_bombs_are_valid_pngs_that_pillow_refuses(tmp_path):
    import warnings

    from PIL import Image

    with Image.open(bomb_png(tmp_path / "small.png", 70, 30)) as img:  # the same writer, decodable size
        assert img.size == (70, 30) and img.mode == "1" and img.getextrema() == (0, 0)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb_png(tmp_path / "bomb.png", *BOMBS["bomb.png"]))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with Image.open(bomb_png(tmp_path / "big.png", *BOMBS["big.png"])) as img:
            assert img.size == BOMBS["big.png"]
    assert [w.category for w in seen] == [Image.DecompressionBombWarning]
    assert (tmp_path / "bomb.png").stat().st_size < 100_000  # tiny on disk


def test_calibration_skips_bombs_and_still_uses_the_requested_number(tmp_path):
    folder = bomb_folder(tmp_path / "calib", good=8)
    recipe = load_recipe("tinynet-e")
    cs = calibration_set(str(folder), recipe.resolution, recipe.preprocess, size=8)
    assert cs.inputs.shape == (8, 3, recipe.resolution, recipe.resolution)  # all 8 good ones
    why = dict(cs.skipped_files)
    assert cs.skipped == len(why) > 0 and set(why) <= {str(folder / n) for n in (*BOMBS, "broken.jpg")}
    for name in BOMBS:
        if str(folder / name) in why:
            assert why[str(folder / name)].startswith("decompression bomb? Image size (")
    cs = calibration_set(str(folder), recipe.resolution, recipe.preprocess, size=20)  # more than there are
    assert len(cs.inputs) == 8 and {Path(p).name for p, _ in cs.skipped_files} == {*BOMBS, "broken.jpg"}


def test_a_build_names_the_skipped_calibration_images(tmp_path):
    folder = bomb_folder(tmp_path / "calib", good=6)
    r = run("build", "tinynet-e", "--formats", "tflite", "--precisions", "int8", "--calib", folder,
            "--calib-size", "100", "--out", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    (warning,) = [ln for ln in r.stderr.splitlines() if "calibration: skipped" in ln]
    assert "skipped 3 image(s) that cannot be used: " in warning and "and 0 more" not in warning
    for name, (w, h) in BOMBS.items():
        assert f"{folder / name} (decompression bomb? Image size ({w * h} pixels) exceeds limit" in warning
    assert f"{folder / 'broken.jpg'} (" in warning and "Traceback" not in r.stderr
    cal = load_manifest(tmp_path / "out" / "tinynet-e")["calibration"]
    assert cal["images"] == 6 and cal["skipped_undecodable"] == 3


def test_only_bombs_is_one_line(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(5):
        bomb_png(folder / f"b{i}.png", 20000, 20000)
    r = run("build", "tinynet-e", "--formats", "tflite", "--precisions", "int8", "--calib", folder,
            "--out", tmp_path / "out", "-q")
    line = one_line(r, 1, f"--calib {folder}: none of the 5 images can be used; skipped 5 image(s)")
    assert line.endswith("and 2 more") and "decompression bomb?" in line


def photo_folders(root: Path, per_class: int = 3) -> Path:
    """A two-class ImageFolder of edgeconv's bundled photos (labels do not matter here)."""
    photos = sorted(bundled_calibration_dir().glob("*.jpg"))
    for i, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for f in photos[i * per_class:(i + 1) * per_class]:
            shutil.copy(f, root / c / f.name)
    return root


def test_eval_skips_a_bomb_in_the_data(tmp_path):
    data = photo_folders(tmp_path / "data")
    bomb_png(data / "b" / "bomb.png", 20000, 20000)
    r = run("eval", "tinynet-e", "--data", data, "--out", tmp_path / "out", "--formats", "onnx", "--precisions",
            "fp32", "--json", "-q", "--db", tmp_path / "r.db")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n"] == 6 and m["skipped"] == [str(data / "b" / "bomb.png")]
    assert all(x["n"] == 6 for x in m["results"])
    assert (f"--data {data}: skipped 1 image(s) that cannot be used: {data / 'b' / 'bomb.png'} (decompression "
            "bomb? Image size (400000000 pixels)") in r.stderr and "Traceback" not in r.stderr


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


@pytest.mark.parametrize("args, option, code", [
    (["eval", "tinynet-e", "--data", "{f}"], "--data", 1),
    (["check", "tinynet-e", "--data", "{f}"], "--data", 3),  # check: a data error is 3 (see test_check_ci)
    (["build", "tinynet-e", "--formats", "tflite", "--precisions", "int8", "--calib", "{f}", "--calib-size", "4"],
     "--calib", 1),
])
def test_a_file_where_an_image_folder_is_expected(tmp_path, args, option, code):
    f = tmp_path / "images.txt"
    f.write_text("a.jpg\nb.jpg\n")
    args = [a.format(f=f) for a in args] + ["--out", tmp_path / "out"]
    one_line(run(*args), code, f"{option} {f}: is a file, not a folder")


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


@pytest.mark.parametrize("command, code", [(["bench", *RUNS], 1), (["eval", "--data", "."], 1),
                                           (["check", "--data", "."], 2)])  # check: a usage error
def test_an_unknown_model_is_named_before_any_build(tmp_path, command, code):
    r = run(command[0], "tinynet-q", *command[1:], "--out", tmp_path, "--db", tmp_path / "r.db")
    one_line(r, code, "unknown model 'tinynet-q'")
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
