"""Train tinynet-e (swish + squeeze-excite, the zoo recipe with a 10-class head) on scikit-learn's
bundled digits, the real trained model edgeconv's accuracy tests and CI gate run on (no TinyNet
ImageNet weights can be downloaded).

Writes, below ``--out`` (default ``build/fixtures``):

- ``digits-tinynet-e.pth``: the checkpoint (timm layout; ``--weights`` loads it with 10 classes);
- ``digits/test/<class>/*.png``: the held-out split (30 %, stratified), ImageFolder layout;
- ``digits/calib/<class>/*.png``: a calibration split (20 training images per class);
- ``digits-tinynet-e.json``: the stamp: hash of this script + seed, checkpoint hash, accuracy.

The 8x8 digits (0..16) become 128 x 128 RGB PNGs (grey replicated, bicubic upsampling). The network
trains on exactly what ``edgeconv.data.preprocess_image`` makes of those PNGs (crop 0.875, resize
to 106, ImageNet mean/std), so evaluation through the normal image path sees the training inputs.

Deterministic (fixed seed, fixed thread count); about a minute on 2 cores. Re-running is a no-op
when the outputs exist and the stamp matches this script and seed (``--force`` retrains).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CHECKPOINT = "digits-tinynet-e.pth"
STAMP = "digits-tinynet-e.json"
IMAGE_SIZE = 128
TEST_FRACTION = 0.3
CALIB_PER_CLASS = 20
THREADS = 2


def script_key(seed: int, epochs: int) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"seed={seed} epochs={epochs}".encode())
    return h.hexdigest()


def digit_png(img8: np.ndarray) -> bytes:
    """An 8x8 digit (0..16) -> 128x128 RGB PNG bytes."""
    from PIL import Image

    grey = np.clip(np.round(img8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    im = Image.fromarray(grey, "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, test, calib) indices; calib is a subset of train."""
    rng = np.random.default_rng(seed)
    train, test, calib = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * TEST_FRACTION))
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
        calib += idx[n_test:n_test + CALIB_PER_CLASS].tolist()
    return np.array(sorted(train)), np.array(sorted(test)), np.array(sorted(calib))


def up_to_date(out: Path, key: str) -> dict | None:
    from edgeconv.util import sha256_file

    stamp = out / STAMP
    if not stamp.is_file():
        return None
    try:
        info = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ckpt = out / CHECKPOINT
    if info.get("key") != key or not ckpt.is_file() or sha256_file(ckpt) != info.get("checkpoint_sha256"):
        return None
    for part in ("test", "calib"):
        if len(list((out / "digits" / part).rglob("*.png"))) != info.get(f"n_{part}"):
            return None
    return info


def write_split(folder: Path, pngs: list[bytes], labels: np.ndarray, idx: np.ndarray) -> None:
    """ImageFolder layout, written to a temp folder and renamed into place."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in idx:
        d = tmp / str(int(labels[i]))
        d.mkdir(parents=True, exist_ok=True)
        (d / f"digit{i:04d}.png").write_bytes(pngs[i])
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train(seed: int, epochs: int, out: Path, log=print) -> dict:
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    from edgeconv.data import preprocess_image
    from edgeconv.models.torch_model import build_model
    from edgeconv.recipe import load_recipe
    from edgeconv.util import atomic_write_bytes, atomic_write_text, sha256_file

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    recipe = load_recipe("tinynet-e").with_classes(10)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    pngs = [digit_png(im) for im in digits.images]
    # the training inputs ARE the recipe's preprocessing of the saved PNGs
    x = np.stack([preprocess_image(Image.open(io.BytesIO(p)), recipe.resolution, recipe.preprocess)
                  for p in pngs])
    train_idx, test_idx, calib_idx = split(labels, seed)
    xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(labels[train_idx])
    xv, yv = torch.from_numpy(x[test_idx]), torch.from_numpy(labels[test_idx])

    model = build_model(recipe, seed=seed)
    batch, lr = 64, 1e-2
    steps = epochs * ((len(xt) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch):
            j = perm[i:i + batch]
            xb = xt[j]
            # light augmentation: shifts of up to 8 px (digits are not centred identically)
            dx, dy = (int(v) for v in torch.randint(-8, 9, (2,), generator=gen))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), yt[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(j)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(xt):.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    with torch.inference_mode():
        acc = float((model(xv).argmax(1) == yv).float().mean())
    log(f"held-out top-1 {100 * acc:.2f} % on {len(test_idx)} images")

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # not torch.save(path): the zip records the file name, and ours is a temp name
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())
    write_split(out / "digits" / "test", pngs, labels, test_idx)
    write_split(out / "digits" / "calib", pngs, labels, calib_idx)
    info = {"key": script_key(seed, epochs), "seed": seed, "epochs": epochs,
            "checkpoint_sha256": sha256_file(out / CHECKPOINT), "n_train": len(train_idx),
            "n_test": len(test_idx), "n_calib": len(calib_idx), "test_top1": acc,
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    atomic_write_text(out / STAMP, json.dumps(info, indent=2))
    return info


def ensure(out: str | Path = ROOT / "build" / "fixtures", seed: int = 0, epochs: int = 8,
           force: bool = False, log=print) -> dict:
    """The fixture's stamp info, training first unless the outputs are up to date."""
    out = Path(out)
    info = None if force else up_to_date(out, script_key(seed, epochs))
    if info is not None:
        log(f"{out / CHECKPOINT}: up to date (held-out top-1 {100 * info['test_top1']:.2f} %)")
        return info
    return train(seed, epochs, out, log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "build" / "fixtures"), help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--force", action="store_true", help="retrain even if up to date")
    args = ap.parse_args(argv)
    ensure(args.out, args.seed, args.epochs, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
