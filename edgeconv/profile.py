"""``edgeconv profile``: where a model's time and its int8 error go, block by block of the recipe.

One row per recipe block (stem, every ``stage.block``, head with pool and classifier) in the
recipe's own words (``ir_k5_s2_e6_c40_se0.25``): input and output shape, params and MACs (counted
on the PyTorch model, the rows add up exactly to the model's totals), latency on the device, share
of the total, MACs per µs; for int8, how far each block's output is from the fp32 model's.

How block latencies are measured: the built .tflite artifact is cut at the block boundaries
(:mod:`edgeconv.export.tflite_slice`), one small model per block holding exactly the whole
model's ops, weights and - for int8 - scales and zero points, and every slice is timed with the
normal benchmark protocol of that device (a fresh worker per slice on the host, the device's runner
over ADB), together with the whole artifact in the same run. The timed region is ``invoke()``
alone, as benchmark_model's: a slice's output is an int8 feature map whose conversion for the
caller (dequantizing 400 K values after Lite0's stem: 1.5 ms on this host, more than the stem's
own 1.2 ms) is not the block's cost. Slices are used rather than per-op
timings (``benchmark_model --enable_op_profiling``) because they work with every runner edgeconv
has (our Python runner on boards has no op profiler) and they measure a block the way it runs
(one invoke, XNNPACK's partitioning of that block); the price is one invoke's overhead per block
and a cache that holds only that block's weights and activations, which the last row shows: the
sum of the blocks against the whole model's median, measured in the same run (their ratio is
reported, not hidden; below 1 when the warm cache of a lone block wins, above 1 when per-invoke
overhead does).

int8 error (int8 profiles): on a deterministic sample of the build's calibration images (its
``--calib`` folder while it exists, else the bundled photos; preprocessed as the recipe says),
every block boundary is read out of one invoke of the whole int8 model and of the whole fp32
model of the same build (the models with their boundary tensors as extra outputs):
``sqnr_db`` = 10 log10(Σ f² / Σ (q - f)²) and the cosine of the dequantized int8 output ``q``
against the fp32 one ``f`` - the error accumulated up to that block. ``local_sqnr_db`` is the block
alone: its int8 slice fed the fp32 model's input of that block (quantized with the slice's own
input scale), against the fp32 slice's output - which block's int8 hurts, not just where the
damage shows. Blocks that ``edgeconv check``'s float fallback keeps in float (an int8 artifact that
``check`` replaced) carry the modules kept in ``float_fallback``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .util import atomic_write_bytes

PROFILE_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_RUNS = 200
DEFAULT_WARMUP = 20
ERROR_IMAGES = 32  # calibration images the int8 error columns are computed on


# ------------------------------------------------------------------------------------------------
# what each row is: names, recipe strings, params and MACs
# ------------------------------------------------------------------------------------------------
def _num(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def block_string(spec, se_ratio: float) -> str:
    """The recipe's words for one resolved block: ``ir_k5_s2_e6_c40_se0.25`` (``ds`` blocks have
    no expansion; ``_noskip`` when a block that could skip does not)."""
    s = f"{spec.block}_k{spec.kernel}_s{spec.stride}"
    if spec.block == "ir":
        s += f"_e{_num(spec.expansion)}"
    s += f"_c{spec.out_chs}"
    if spec.se_chs:
        s += f"_se{se_ratio:g}"
    return s


def row_names(arch) -> list[tuple[str, int | None, str]]:
    """(name, stage, recipe string) of every row, in network order."""
    rows: list[tuple[str, int | None, str]] = [("stem", None, f"conv_k3_s2_c{arch.stem_chs}")]
    for s, stage in enumerate(arch.stages):
        for b, spec in enumerate(stage.blocks):
            rows.append((f"blocks.{s}.{b}", s, block_string(spec, stage.se_ratio)))
    rows.append(("head", None, f"conv_k1_c{arch.head_chs}+pool+fc{arch.num_classes}"))
    return rows


def row_of_module(path: str) -> str:
    """``blocks.3.1.conv_dw`` -> ``blocks.3.1``; ``conv_stem``/``bn1`` -> ``stem``; the rest -> head."""
    parts = path.split(".")
    if parts[0] == "blocks" and len(parts) >= 3:
        return ".".join(parts[:3])
    if parts[0] in ("conv_stem", "bn1", "act1"):
        return "stem"
    return "head"


def count_rows(recipe) -> dict[str, dict[str, int]]:
    """{row: {"params", "macs"}} counted on the PyTorch model (the same counting as the build's
    totals: :mod:`edgeconv.models.counting`), so the rows add up to the model's params and MACs."""
    import torch
    from torch import nn

    from .models.torch_model import build_model

    model = build_model(recipe).eval()
    counts: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        counts.setdefault(row_of_module(name), {"params": 0, "macs": 0})["params"] += p.numel()
    handles = []

    def hook(name: str):
        def count(m, inp, out):
            per = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] \
                if isinstance(m, nn.Conv2d) else m.in_features
            counts.setdefault(row_of_module(name), {"params": 0, "macs": 0})["macs"] += out.numel() * per
        return count

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            res = model.arch.resolution
            model(torch.zeros(1, 3, res, res))
    finally:
        for h in handles:
            h.remove()
    return counts


# ------------------------------------------------------------------------------------------------
# slices
# ------------------------------------------------------------------------------------------------
@dataclass
class Sliced:
    """An artifact cut into its blocks: the object-API model, the segments, the slice files."""

    artifact: Path
    model: Any
    segments: list
    files: list[Path]

    def boundaries(self) -> list[int]:
        """The tensors between blocks: the model input, then every block's output."""
        return [self.segments[0].input, *[s.output for s in self.segments]]


def slice_artifact(path: Path, folder: Path, expected: Sequence[str]) -> Sliced:
    """Cut ``path`` into one .tflite per block in ``folder`` (written atomically; an existing copy
    with the same bytes is kept). ``expected``: the row names the recipe says the model has."""
    from .export import tflite_slice as ts

    data = path.read_bytes()
    try:
        model = ts.load(data)
        segs = ts.segments(model)
    except ts.SliceError as e:
        raise UserError(f"{path}: cannot be profiled block by block: {e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged flatbuffer
        raise UserError(f"{path}: not a readable .tflite model ({type(e).__name__})") from None
    names = [s.name for s in segs]
    if names != list(expected):
        raise UserError(f"{path}: its blocks ({len(names)}: {', '.join(names[:4])}, ...) are not the "
                        f"recipe's ({len(expected)}); rebuild it")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, seg in enumerate(segs):
        file = folder / f"{i:02d}-{seg.name}.tflite"
        blob = ts.slice_bytes(model, seg)
        if not file.is_file() or file.read_bytes() != blob:
            atomic_write_bytes(file, blob)
        files.append(file)
    return Sliced(path, model, segs, files)


# ------------------------------------------------------------------------------------------------
# int8 error per block
# ------------------------------------------------------------------------------------------------
def _interpreter(content: bytes):
    from .runtimes.tflite import load_interpreter_class

    cls, _, _ = load_interpreter_class()
    it = cls(model_content=content, num_threads=1)
    it.allocate_tensors()
    return it


def _boundary_values(sliced: Sliced, images_nhwc: np.ndarray) -> list[np.ndarray]:
    """Every boundary tensor of every image (float, dequantized), from the whole model."""
    from .export import tflite_slice as ts

    bounds = sliced.boundaries()
    it = _interpreter(ts.with_outputs(sliced.model, bounds))
    inp = it.get_input_details()[0]
    outs = it.get_output_details()
    values: list[list[np.ndarray]] = [[] for _ in bounds]
    for x in images_nhwc:
        it.set_tensor(inp["index"], _quantize(x[None], inp))
        it.invoke()
        for k, d in enumerate(outs):
            values[k].append(_dequantize(it.get_tensor(d["index"]), d))
    return [np.concatenate(v) for v in values]


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(detail["dtype"], np.integer):
        return x.astype(detail["dtype"])
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(detail["dtype"], np.integer):
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def sqnr_db(reference: np.ndarray, value: np.ndarray) -> float | None:
    """10 log10(signal / noise) of ``value`` against ``reference``; inf-safe (None: no signal)."""
    f = np.asarray(reference, np.float64)
    e = np.asarray(value, np.float64) - f
    signal, noise = float((f ** 2).sum()), float((e ** 2).sum())
    if signal <= 0:
        return None
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


def cosine(reference: np.ndarray, value: np.ndarray) -> float | None:
    """Mean over images of the cosine similarity of each image's flattened tensors."""
    f = np.asarray(reference, np.float64).reshape(len(reference), -1)
    q = np.asarray(value, np.float64).reshape(len(value), -1)
    den = np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1)
    ok = den > 0
    if not ok.any():
        return None
    return float(((f * q).sum(1)[ok] / den[ok]).mean())


def block_errors(int8: Sliced, fp32: Sliced, images_nhwc: np.ndarray) -> list[dict[str, float | None]]:
    """Per block: ``sqnr_db`` and ``cosine`` of the whole int8 model's block output against the
    fp32 model's (accumulated error), and ``local_sqnr_db`` of the block alone (its int8 slice fed
    the fp32 input of that block)."""
    q_vals = _boundary_values(int8, images_nhwc)
    f_vals = _boundary_values(fp32, images_nhwc)
    out = []
    for k, file in enumerate(int8.files):
        it = _interpreter(file.read_bytes())
        inp, outp = it.get_input_details()[0], it.get_output_details()[0]
        local = []
        for x in f_vals[k]:
            it.set_tensor(inp["index"], _quantize(x[None], inp))
            it.invoke()
            local.append(_dequantize(it.get_tensor(outp["index"]), outp))
        ref = f_vals[k + 1]
        out.append({"sqnr_db": _round(sqnr_db(ref, q_vals[k + 1]), 2), "cosine": _round(cosine(ref, q_vals[k + 1]), 5),
                    "local_sqnr_db": _round(sqnr_db(ref, np.concatenate(local)), 2)})
    return out


def _round(v: float | None, nd: int) -> float | None:
    if v is None or not math.isfinite(v):
        return v
    return round(v, nd)


def error_images(manifest: dict, k: int = ERROR_IMAGES) -> tuple[np.ndarray, str]:
    """(``k`` images NHWC, where from): a deterministic sample of the build's own calibration
    folder when it is still there, else of the bundled photos; preprocessed like the build."""
    from .data import calibration_set
    from .recipe import Preprocess

    source = (manifest.get("calibration") or {}).get("source")
    folder = source if source not in (None, "bundled", "synthetic") and Path(source).is_dir() else None
    pp = Preprocess(**manifest["input"]["preprocess"])
    cs = calibration_set(folder, int(manifest["input"]["shape"][-1]), pp, size=k)
    return np.ascontiguousarray(cs.inputs.transpose(0, 2, 3, 1)), cs.source


# ------------------------------------------------------------------------------------------------
# the profile
# ------------------------------------------------------------------------------------------------
@dataclass
class ProfileRequest:
    name: str
    device: str = "host"
    precision: str = "int8"
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    out: str | Path = "build"
    weights: str | None = None
    serials: Sequence[str] = ()
    runner: str | None = None
    cooldown: float | None = None
    core: int | None = None
    tag: str | None = None
    error_images: int = ERROR_IMAGES


Progress = Callable[..., None]


def _quiet(event: str, **kw: Any) -> None:
    pass


def _stats(rec) -> dict[str, Any]:
    """Median and p90 (ms) of one slice's run: from its raw timings, or from what a runner that
    prints only aggregates printed (benchmark_model: a median, no p90)."""
    from .bench.stability import assess_run

    if rec.status != "ok":
        return {"median_ms": None, "p90_ms": None, "status": "failed", "error": rec.error, "verdict": None}
    verdict = assess_run(rec).status
    if rec.timings_ns:
        t = np.asarray(rec.timings_ns, np.float64) / 1e6
        return {"median_ms": round(float(np.median(t)), 5), "p90_ms": round(float(np.percentile(t, 90)), 5),
                "status": "ok", "error": None, "verdict": verdict}
    summary = (rec.extra or {}).get("summary") or {}
    median = summary.get("median_ms") if summary.get("median_ms") is not None else summary.get("mean_ms")
    return {"median_ms": median, "p90_ms": None, "status": "ok", "error": None, "verdict": verdict}


def assemble(request: ProfileRequest, manifest: dict, names, counts, sliced: Sliced,
             timings: dict[str, dict], whole: dict, errors: list[dict] | None,
             fallback: Sequence[str], images: int, source: str | None = None) -> dict[str, Any]:
    """The profile record (the shape ``Store.record_profile`` keeps) from its measured parts."""
    from .export import tflite_slice as ts

    rows = []
    for i, ((name, stage, block), seg) in enumerate(zip(names, sliced.segments, strict=True)):
        t = timings.get(name) or {"median_ms": None, "p90_ms": None, "status": "failed", "error": "not measured"}
        c = counts.get(name, {"params": 0, "macs": 0})
        rows.append({
            "index": i, "name": name, "stage": stage, "block": block,
            "in_shape": ts.tensor_info(sliced.model, seg.input)["shape"],
            "out_shape": ts.tensor_info(sliced.model, seg.output)["shape"],
            "params": int(c["params"]), "macs": int(c["macs"]),
            "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "share": None,
            "macs_per_us": round(c["macs"] / (t["median_ms"] * 1e3), 2) if t["median_ms"] else None,
            "sqnr_db": None, "cosine": None, "local_sqnr_db": None,
            "float_fallback": [m for m in fallback if row_of_module(m) == name],
            "status": t["status"], "error": t["error"], "verdict": t.get("verdict"),
            **(errors[i] if errors else {}),
        })
    medians = [r["median_ms"] for r in rows]
    total = round(sum(medians), 5) if all(m is not None for m in medians) else None
    if total:
        for r in rows:
            r["share"] = round(r["median_ms"] / total, 5)
    ratio = round(total / whole["median_ms"], 4) if total and whole.get("median_ms") else None
    return {"model": manifest.get("model", request.name), "format": "tflite", "precision": request.precision,
            "runtime": "tflite", "resolution": manifest.get("resolution"), "method": "slices",
            "runs": request.runs, "warmup": request.warmup, "threads": 1, "whole": whole,
            "sum_median_ms": total, "ratio": ratio, "error_images": images, "error_source": source, "rows": rows,
            "params": manifest.get("params"), "macs": manifest.get("macs")}


def _slice_targets(sliced: Sliced, names, artifact, manifest: dict | None):
    """bench Targets for every slice (then the whole artifact), each slice its own artifact record."""
    from .bench.run import Target
    from .store import ArtifactRecord
    from .util import sha256_file

    targets = []
    for file, (name, _, _) in zip(sliced.files, names, strict=True):
        art = ArtifactRecord(model=f"{artifact.model}.{name}", format="tflite", precision=artifact.precision,
                             path=str(file.resolve()), sha256=sha256_file(file), size_bytes=file.stat().st_size)
        targets.append(Target(art, "tflite", file, None))
    targets.append(Target(artifact, "tflite", Path(artifact.path), None))  # the whole model, same run
    return targets


def run_profile(request: ProfileRequest, store=None, progress: Progress = _quiet) -> list[dict[str, Any]]:
    """Profile ``request.name`` on its device(s): one profile per device, each stored in ``store``
    (with its device and artifact) as soon as it is complete. Returns the profiles."""
    from .bench import run as runmod
    from .recipe import load_recipe, resolve

    if request.precision not in PROFILE_PRECISIONS:
        raise UserError(f"--precision {request.precision}: choose from {', '.join(PROFILE_PRECISIONS)}")
    if request.runs < 1 or request.warmup < 0:
        raise UserError("--runs must be at least 1 and --warmup at least 0")
    recipe = load_recipe(request.name)
    remote = None
    if request.device == "host":
        if request.serials or request.runner or request.cooldown is not None:
            raise UserError("--serial, --runner and --cooldown are for ADB devices "
                            "(--device android, board or a profile)")
        runmod.check_host_cores(1, request.core)
    else:
        remote = runmod._remote_request(request.device, ("tflite",), request.core, None, request.serials, None)
    precisions = sorted({request.precision, "fp32"}) if request.precision == "int8" else [request.precision]
    manifest, folder, sha = runmod.ensure_artifacts(request.name, request.out, request.weights, ("tflite",),
                                                    precisions, lambda m: progress("warn", message=m))
    targets = runmod.select_targets(manifest, folder, sha, ("tflite",), precisions)
    by_prec = {t.artifact.precision: t for t in targets}
    target = by_prec[request.precision]
    arch = resolve(recipe)
    names = row_names(arch)
    progress("step", message=f"cutting {target.file.name} into {len(names)} blocks")
    sliced = slice_artifact(target.file, folder / "profile" / request.precision, [n for n, _, _ in names])
    counts = count_rows(recipe)
    fallback = next((a.get("float_fallback") or [] for a in manifest["artifacts"]
                     if a.get("format") == "tflite" and a.get("precision") == request.precision), [])
    errors, images, source = None, 0, None
    if request.precision == "int8" and request.error_images > 0:
        fp32 = slice_artifact(by_prec["fp32"].file, folder / "profile" / "fp32", [n for n, _, _ in names])
        imgs, source = error_images(manifest, request.error_images)
        progress("step", message=f"int8 error of every block on {len(imgs)} calibration images ({source})")
        errors, images = block_errors(sliced, fp32, imgs), len(imgs)
    jobs = _slice_targets(sliced, names, target.artifact, manifest)
    labels = {id(t): n for t, n in zip(jobs, [n for n, _, _ in names] + ["whole"], strict=True)}
    results: dict[str, dict[str, dict]] = {}  # device key -> row name -> stats
    devices: dict[str, dict] = {}

    def on_progress(t, phase: str, done: int, total: int) -> None:
        progress("progress", block=labels.get(id(t), "?"), phase=phase, done=done, total=total)

    profiles = []
    if remote is None:
        info = runmod.device_info("host")
        key = "host"
        devices[key] = info

        def on_result(t, rec) -> None:
            results.setdefault(key, {})[labels[id(t)]] = _stats(rec)
            progress("measured", block=labels[id(t)], **results[key][labels[id(t)]])

        runmod._bench_host(jobs, runs=request.runs, warmup=request.warmup, threads=1, core=request.core,
                           on_result=on_result, on_progress=on_progress, invoke_only=True)
    else:
        from .bench.android import RemoteOptions

        opts = RemoteOptions(runs=request.runs, warmup=request.warmup, threads=1, cores=None,
                             cooldown=request.cooldown if request.cooldown is not None else 0.0,
                             runner=request.runner, invoke_only=True)

        def on_outcome(o) -> None:
            serial = (o.device or {}).get("serial", "?")
            devices[serial] = o.device or {}
            results.setdefault(serial, {})[labels[id(o.target)]] = _stats(o.run)
            progress("measured", block=labels[id(o.target)], serial=serial, **results[serial][labels[id(o.target)]])

        runmod._bench_remote(remote, jobs, None, opts, on_result=on_outcome, on_progress=on_progress,
                             warn=lambda m: progress("warn", message=m))
    for key, rows in results.items():
        whole = rows.get("whole") or {"median_ms": None, "p90_ms": None, "status": "failed", "error": "not measured"}
        prof = assemble(request, manifest, names, counts, sliced, rows, whole, errors, fallback, images, source)
        info = devices[key]
        # the keys Store.profiles() gives a stored profile
        prof.update(device=info.get("name"), device_kind=info.get("kind"), device_serial=info.get("serial"),
                    device_emulated=bool(info.get("emulated")))
        prof["tag"] = request.tag
        if store is not None:
            device_id = store.upsert_device(info)
            prof["id"] = store.record_profile(device_id, target.artifact, prof)
        profiles.append(prof)
    return profiles


def stage_totals(profile: dict) -> list[dict[str, Any]]:
    """Per stage (stem, stage 0..N-1, head): params, MACs and the sum of the blocks' medians."""
    out: dict[str, dict[str, Any]] = {}
    for r in profile["rows"]:
        key = r["name"] if r["stage"] is None else f"stage {r['stage']}"
        s = out.setdefault(key, {"stage": key, "blocks": 0, "params": 0, "macs": 0, "median_ms": 0.0})
        s["blocks"] += 1
        s["params"] += r["params"]
        s["macs"] += r["macs"]
        s["median_ms"] = None if s["median_ms"] is None or r["median_ms"] is None else s["median_ms"] + r["median_ms"]
    return list(out.values())
