"""Images in, model inputs out: the one preprocessing path used by calibration, parity and
evaluation, and the loaders for calibration folders and labelled datasets. numpy + Pillow only."""
from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .recipe import Preprocess

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SAMPLE_ENV = "EDGECONV_SAMPLE"


class DataError(UserError):
    pass


def _pil_filter(name: str):
    from PIL import Image

    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[name]


def preprocess_image(img, resolution: int, pp: Preprocess) -> np.ndarray:
    """PIL image -> float32 CHW array: center crop ``crop_fraction`` of the short side, resize to
    ``resolution`` with the recipe's interpolation, then (x - mean) / std in pixel units."""
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h) * pp.crop_fraction
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize((resolution, resolution), _pil_filter(pp.interpolation),
                     box=(left, top, left + side, top + side))
    x = np.asarray(img, dtype=np.float32)
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def decode_image(path: str | Path, resolution: int, pp: Preprocess) -> tuple[np.ndarray | None, str | None]:
    """(preprocessed image, None), or (None, why the file was skipped): it cannot be decoded, or it
    has more pixels than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; Pillow
    only warns between 1x and 2x the limit, edgeconv skips those too rather than decode them)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    # idempotent (an identical filter replaces itself); the pytest/user filters stay below it
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    try:
        with Image.open(path) as img:
            return preprocess_image(img, resolution, pp), None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, f"decompression bomb? {str(e).split(', could be')[0]}"
    except UnidentifiedImageError:
        return None, "not an image Pillow can decode"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return None, f"cannot be decoded ({(str(e).strip() or type(e).__name__).splitlines()[0][:120]})"


def load_image(path: str | Path, resolution: int, pp: Preprocess) -> np.ndarray | None:
    """Preprocessed image, or None when the file cannot be used (see :func:`decode_image`)."""
    return decode_image(path, resolution, pp)[0]


def skipped_summary(skipped: list[tuple[str, str]], first: int = 3) -> str:
    """'N image(s) skipped: a.png (why), b.jpg (why), ... and K more'."""
    shown = ", ".join(f"{p} ({why})" for p, why in skipped[:first])
    more = f" and {len(skipped) - first} more" if len(skipped) > first else ""
    return f"skipped {len(skipped)} image(s) that cannot be used: {shown}{more}"


def _check_folder(option: str, folder: Path) -> None:
    if folder.is_dir():
        return
    if folder.exists():
        raise DataError(f"{option} {folder}: is a file, not a folder ({option} takes a folder of images)")
    raise DataError(f"{option} {folder}: no such folder")


def find_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive; jpg/jpeg/png, any case), sorted for determinism."""
    folder = Path(folder)
    out = []
    for root, _dirs, files in os.walk(folder):
        for f in files:
            if f.lower().endswith(IMAGE_EXTS):
                out.append(Path(root) / f)
    return sorted(out)


# ----------------------------------------------------------------------------------------------
# Calibration sets
# ----------------------------------------------------------------------------------------------
def bundled_calibration_dir() -> Path:
    return Path(__file__).resolve().parent / "data" / "calib"


@dataclass
class CalibrationSet:
    source: str  # folder path, "bundled" or "synthetic"
    inputs: np.ndarray  # N x 3 x H x W float32
    skipped: int = 0
    warning: str | None = None
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def calibration_set(spec: str | None, resolution: int, pp: Preprocess, size: int = 200,
                    seed: int = 0) -> CalibrationSet:
    """``spec``: an image folder, ``synthetic`` (random inputs, debugging only) or None (the public
    domain photos bundled with edgeconv). ``size`` images are sampled deterministically."""
    if size < 1:
        raise DataError("--calib-size must be at least 1")
    if spec == "synthetic":
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((size, 3, resolution, resolution)).astype(np.float32)
        return CalibrationSet("synthetic", x, 0, "calibrating on random inputs (--calib synthetic): "
                              "int8 accuracy is meaningless; use it only for debugging")
    warning = None
    if spec is None:
        folder = bundled_calibration_dir()
        warning = ("calibrating int8 on edgeconv's bundled sample photos; a calibration set from your "
                   "target domain (--calib DIR) gives better int8 accuracy")
        source = "bundled"
    else:
        folder = Path(spec)
        source = str(folder)
        _check_folder("--calib", folder)
    files = find_images(folder)
    if not files:
        raise DataError(f"--calib {spec}: no .jpg/.jpeg/.png images found")
    chosen, spare = files, []
    if len(files) > size:
        chosen = sorted(random.Random(seed).sample(files, size))
        picked = set(chosen)
        spare = [f for f in files if f not in picked]
        random.Random(seed + 1).shuffle(spare)  # replacements for skipped files, also deterministic
    arrays, skipped = [], []
    for f in chosen:
        a, why = decode_image(f, resolution, pp)
        if a is None:
            skipped.append((str(f), why))
        else:
            arrays.append(a)
    while len(arrays) < size and spare:  # still `size` images while usable ones remain
        f = spare.pop()
        a, why = decode_image(f, resolution, pp)
        if a is None:
            skipped.append((str(f), why))
        else:
            arrays.append(a)
    if not arrays:
        raise DataError(f"--calib {spec}: none of the {len(skipped)} images can be used; "
                        + skipped_summary(skipped))
    return CalibrationSet(source, np.stack(arrays), len(skipped), warning, skipped)


# ----------------------------------------------------------------------------------------------
# Labelled datasets
# ----------------------------------------------------------------------------------------------
@dataclass
class LabelledSet:
    root: str
    files: list[Path]
    labels: list[int]
    class_names: list[str]
    layout: str  # "imagefolder" or "wnid-files"


def read_labels_tsv(path: Path) -> list[tuple[int, str, str]]:
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["index", "wnid"]:
                raise DataError(f"{path}: expected a header 'index<TAB>wnid<TAB>name'")
            for n, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < 2 or not row[0].strip().isdigit():
                    raise DataError(f"{path}:{n}: expected 'index<TAB>wnid<TAB>name'")
                rows.append((int(row[0]), row[1].strip(), row[2].strip() if len(row) > 2 else row[1]))
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    return rows


def labelled_set(root: str | Path, limit: int | None = None) -> LabelledSet:
    """ImageFolder (one subfolder per class, classes sorted by name, or ordered by a labels.tsv when
    the subfolders are wnids) or flat ``<wnid>_*.JPEG`` files with a ``labels.tsv``."""
    root = Path(root)
    _check_folder("--data", root)
    labels_tsv = root / "labels.tsv"
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    flat_images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if subdirs and not flat_images:
        if labels_tsv.exists():
            table = {wnid: idx for idx, wnid, _ in read_labels_tsv(labels_tsv)}
            names = {idx: name for idx, _, name in read_labels_tsv(labels_tsv)}
            unknown = [d.name for d in subdirs if d.name not in table]
            if unknown:
                raise DataError(f"--data {root}: class folder {unknown[0]!r} is not in labels.tsv")
            class_of = {d.name: table[d.name] for d in subdirs}
            class_names = [names[i] for i in range(max(names) + 1)] if names else []
        else:
            class_of = {d.name: i for i, d in enumerate(subdirs)}
            class_names = [d.name for d in subdirs]
        files, labels = [], []
        for d in subdirs:
            for f in find_images(d):
                files.append(f)
                labels.append(class_of[d.name])
        layout = "imagefolder"
    else:
        if not flat_images:
            raise DataError(f"--data {root}: no images found")
        if not labels_tsv.exists():
            raise DataError(f"--data {root}: flat image files need a labels.tsv (index, wnid, name)")
        rows = read_labels_tsv(labels_tsv)
        table = {wnid: idx for idx, wnid, _ in rows}
        class_names = [name for _, _, name in sorted(rows)]
        files, labels = [], []
        for f in flat_images:
            wnid = f.name.split("_", 1)[0]
            if wnid not in table:
                raise DataError(f"--data {root}: {f.name}: wnid {wnid!r} is not in labels.tsv")
            files.append(f)
            labels.append(table[wnid])
        layout = "wnid-files"
    if not files:
        raise DataError(f"--data {root}: no images found")
    if limit is not None and limit < len(files):
        idx = sorted(random.Random(0).sample(range(len(files)), limit))
        files, labels = [files[i] for i in idx], [labels[i] for i in idx]
    return LabelledSet(str(root), files, labels, class_names, layout)


def default_sample_dir() -> Path | None:
    """The shared ImageNet sample: $EDGECONV_SAMPLE, else ../shared/data/imagenet-sample."""
    env = os.environ.get(SAMPLE_ENV)
    if env:
        return Path(env)
    p = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenet-sample"
    return p if p.is_dir() else None
