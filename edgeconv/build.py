"""``edgeconv build``: one recipe (+ weights) -> every deployable artifact, each proven against the
PyTorch model, recorded in ``build/NAME/manifest.json``.

Artifacts are cached by a hash of everything that shapes them (recipe, weights, precision,
calibration set, options, tool versions); re-running reuses them. Every file is written atomically
and the manifest is rewritten after each artifact, so an interrupted build loses only the artifact
in flight and never leaves a half-written file behind.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ArtifactError, UserError
from .export import ALL_PRECISIONS, FORMATS, PRECISIONS
from .recipe import load_recipe
from .util import atomic_write_bytes, atomic_write_text, sha256_file, sha256_text

MANIFEST = "manifest.json"
SCHEMA = 1
PARITY_IMAGES = 16
FP32_TOLERANCE = 1e-3  # max |diff| relative to the reference logit range
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "tensorflow-cpu", "ai-edge-litert", "openvino", "nncf")

Progress = Callable[..., None]
# what shapes an int8 artifact beyond its calibration images (part of its cache key)
INT8_SCHEME = {"tflite": "histogram-mse ranges, sampled; bias correction",
               "openvino": "mixed, per-tensor activations, mean min/max of 8-image batches; 7-bit weights"}


def _quiet(event: str, **kw: Any) -> None:
    pass


def tool_versions() -> dict[str, str]:
    out = {"edgeconv": __version__}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            pass
    return out


def artifact_relpath(model: str, fmt: str, precision: str) -> str:
    if fmt == "onnx":
        return f"{model}.onnx"
    if fmt == "tflite":
        return f"tflite/{precision}.tflite"
    return f"openvino/{precision}.xml"


def runtime_of(fmt: str) -> str:
    return {"onnx": "onnxruntime", "tflite": "tflite", "openvino": "openvino"}[fmt]


def parse_list(value: str | list[str] | tuple[str, ...] | None, allowed: tuple[str, ...],
               option: str) -> list[str]:
    if value is None:
        return list(allowed)
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise UserError(f"{option} {','.join(bad) or '(empty)'}: choose from {','.join(allowed)}")
    return items


def load_manifest(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / MANIFEST
    if not p.exists():
        raise ArtifactError(f"{folder}: no {MANIFEST} (run 'edgeconv build' first)")
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{p}: unreadable manifest ({e})") from None
    if m.get("schema") != SCHEMA:
        raise ArtifactError(f"{p}: manifest schema {m.get('schema')} is not {SCHEMA}; rebuild with --force")
    return m


def parity(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    ref, out = reference.astype(np.float64), outputs.astype(np.float64)
    diff = float(np.abs(ref - out).max())
    rng = float(ref.max() - ref.min()) or 1.0
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.sum(ref * out, 1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return {"n": int(len(ref)), "max_abs_diff": diff, "rel_diff": diff / rng, "cosine": float(cos.min()),
            "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean())}


@dataclass
class _State:
    folder: Path
    manifest: dict[str, Any]
    steps: dict[str, float] = field(default_factory=dict)

    def save(self) -> None:
        self.manifest["steps"] = self.steps
        self.manifest["artifacts"].sort(key=lambda a: (FORMATS.index(a["format"]),
                                                       ALL_PRECISIONS.index(a["precision"])))
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=2))


def build(name: str, weights: str | None = None, formats=None, precisions=None, out: str | Path = "build",
          calib: str | None = None, calib_size: int = 200, int8_io: bool = False, force: bool = False,
          progress: Progress | None = None) -> dict[str, Any]:
    """Build the artifacts of ``name`` (zoo name or recipe path) and return the manifest."""
    progress = progress or _quiet
    formats = parse_list(formats, FORMATS, "--formats")
    precisions = parse_list(precisions, ALL_PRECISIONS, "--precisions")
    wanted = [(f, p) for f in FORMATS if f in formats for p in PRECISIONS[f] if p in precisions]
    if not wanted:
        raise UserError(f"--formats {','.join(formats)} with --precisions {','.join(precisions)} "
                        "selects no artifact (onnx is fp32 only; dynamic is tflite only)")
    recipe = load_recipe(name)
    # TFLite converts in a child process while this one does ONNX and OpenVINO; it starts now, so
    # that TensorFlow's import overlaps the model's loading
    job = None
    if any(f == "tflite" for f, _ in wanted) and any(f != "tflite" for f, _ in wanted):
        from .export.tflite_job import TFLiteProcess

        job = TFLiteProcess()
    try:
        return _build(recipe, wanted, weights, out, calib, calib_size, int8_io, force, progress, job)
    finally:
        if job is not None:
            job.close()


def _build(recipe, wanted: list[tuple[str, str]], weights: str | None, out: str | Path, calib: str | None,
           calib_size: int, int8_io: bool, force: bool, progress: Progress, job) -> dict[str, Any]:
    t0 = time.perf_counter()
    steps: dict[str, float] = {}

    @contextmanager
    def step(label: str):
        progress("start", step=label)
        t = time.perf_counter()
        yield
        steps[label] = round(time.perf_counter() - t, 3)
        progress("done", step=label, seconds=steps[label])

    with step("load model"):
        from .models.counting import count_macs, count_params
        from .models.weights import load_model

        model, winfo = load_model(recipe, weights)
        recipe = recipe.with_classes(winfo.num_classes)
    if winfo.random:
        progress("warn", message=f"no --weights given: {recipe.name} is RANDOMLY INITIALISED; latency is "
                                 "meaningful, accuracy is not")
    folder = Path(out) / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    old: dict[str, Any] = {}
    old_entries: list[dict[str, Any]] = []
    if not force and (folder / MANIFEST).exists():
        try:
            old_entries = load_manifest(folder).get("artifacts", [])
        except ArtifactError:
            old_entries = []
        old = {a["key"]: a for a in old_entries if "key" in a}
    tools = tool_versions()
    # the tensors themselves (not just the file): random init and code changes show up too
    fingerprint = hashlib.sha256()
    for k, v in model.state_dict().items():
        fingerprint.update(k.encode())
        fingerprint.update(v.detach().contiguous().numpy().tobytes())
    base_key = {"recipe": recipe.digest(), "weights": fingerprint.hexdigest(), "tools": tools,
                "schema": SCHEMA}
    base_hash = sha256_text(json.dumps(base_key, sort_keys=True))
    manifest: dict[str, Any] = {
        "schema": SCHEMA, "model": recipe.name, "recipe": recipe.to_dict(), "recipe_sha256": recipe.digest(),
        "recipe_path": recipe.path, "weights": winfo.to_dict(), "tools": tools,
        "params": count_params(model), "macs": count_macs(model, recipe.resolution),
        "resolution": recipe.resolution, "num_classes": recipe.num_classes,
        "input": {"layout": "NCHW (onnx, openvino) / NHWC (tflite)", "shape": list(recipe.input_shape),
                  "preprocess": recipe.to_dict()["preprocess"]},
        "calibration": None, "artifacts": [], "steps": steps, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    state = _State(folder, manifest, steps)
    # Artifacts of the same model and weights that this run does not touch stay listed (a build of
    # one precision must not hide the others), as long as their files are intact.
    for a in old_entries:
        if (a.get("format"), a.get("precision")) not in wanted and a.get("base") == base_hash \
                and (folder / a["path"]).exists() and sha256_file(folder / a["path"]) == a.get("sha256"):
            manifest["artifacts"].append(dict(a, cached=True))

    from .data import calibration_set

    with step("parity inputs"):
        # The same real photos for every build: deterministic parity across artifacts and runs.
        par = calibration_set(None, recipe.resolution, recipe.preprocess, size=PARITY_IMAGES, seed=1)
        from .runtimes.pytorch import TorchRunner

        reference = TorchRunner(model).run(par.inputs)

    calib_set = None
    calib_key = None
    if any(p == "int8" for _, p in wanted):
        with step("calibration"):
            calib_set = calibration_set(calib, recipe.resolution, recipe.preprocess, size=calib_size)
        if calib_set.warning:
            progress("warn", message=calib_set.warning)
        # the preprocessed tensors themselves: any change of images, sampling or preprocessing shows
        calib_key = hashlib.sha256(calib_set.inputs.tobytes()).hexdigest()
        manifest["calibration"] = {"source": calib_set.source, "images": int(len(calib_set.inputs)),
                                   "skipped_undecodable": calib_set.skipped, "requested": calib_size}
        if calib_set.skipped:
            progress("warn", message=f"calibration: skipped {calib_set.skipped} undecodable image(s)")

    def key_for(fmt: str, prec: str) -> str:
        k = dict(base_key, format=fmt, precision=prec)
        if prec == "int8":
            k["calib"] = calib_key
            k["int8_scheme"] = INT8_SCHEME[fmt]  # a new range estimator must not reuse old artifacts
            if fmt == "tflite":
                k["int8_io"] = int8_io
        return sha256_text(json.dumps(k, sort_keys=True))

    def cached(fmt: str, prec: str) -> dict | None:
        a = old.get(key_for(fmt, prec))
        if not a or not a.get("parity_ok", False):
            return None
        p = folder / a["path"]
        if not p.exists() or sha256_file(p) != a["sha256"]:
            return None
        if fmt == "openvino" and not p.with_suffix(".bin").exists():
            return None
        return a

    lock = threading.RLock()  # record() runs in two threads when TFLite converts in a child process
    recorded: set[tuple[str, str]] = set()

    @contextmanager
    def producing(fmt: str, prec: str):
        """An artifact whose files are in place but not yet in the manifest when the build stops
        (Ctrl-C between the rename and the manifest write) is removed: every file left is listed."""
        try:
            yield
        except BaseException:
            if (fmt, prec) not in recorded:
                path = folder / artifact_relpath(recipe.name, fmt, prec)
                for f in (path, path.with_suffix(".bin")) if fmt == "openvino" else (path,):
                    f.unlink(missing_ok=True)
            raise

    def record(fmt: str, prec: str, info: dict, seconds: float) -> dict:
        with lock:
            return _record(fmt, prec, info, seconds)

    def _record(fmt: str, prec: str, info: dict, seconds: float) -> dict:
        rel = artifact_relpath(recipe.name, fmt, prec)
        path = folder / rel
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
        with step(f"{fmt}/{prec} parity"):
            from .runtimes import open_runner
            from .util import captured_output

            with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" goes to fd 2
                runner = open_runner(path, runtime_of(fmt), threads=2)
            par_result = parity(reference, runner.run(par.inputs))
        ok = prec != "fp32" or par_result["rel_diff"] <= FP32_TOLERANCE
        entry = {"format": fmt, "precision": prec, "runtime": runtime_of(fmt), "path": rel,
                 "size_bytes": size, "sha256": sha256_file(path), "key": key_for(fmt, prec), "base": base_hash,
                 "ops": info.get("ops", {}), "parity": par_result, "parity_ok": ok,
                 "seconds": round(seconds, 3), "cached": False}
        for extra in ("float_islands", "transpose_ops", "int8_io", "ranges", "bias_correction"):
            if extra in info:
                entry[extra] = info[extra]
        if prec == "int8":  # each int8 artifact remembers what it was calibrated on
            entry["calibration"] = manifest["calibration"]
        manifest["artifacts"] = [a for a in manifest["artifacts"]
                                 if (a["format"], a["precision"]) != (fmt, prec)] + [entry]
        state.save()
        recorded.add((fmt, prec))
        if not ok:
            raise ArtifactError(f"{rel}: fp32 artifact does not match PyTorch (max abs diff "
                                f"{par_result['max_abs_diff']:.3g} = {par_result['rel_diff']:.2e} of the "
                                f"logit range > {FP32_TOLERANCE:g})")
        return entry

    def reuse(fmt: str, prec: str) -> bool:
        a = cached(fmt, prec)
        if a is None:
            return False
        with lock:
            manifest["artifacts"].append(dict(a, cached=True))
            state.save()
        progress("cached", step=f"{fmt}/{prec}", path=str(folder / a["path"]))
        return True

    # ---- TFLite from the NHWC Keras twin: in the child process (if any) while this one does ONNX/OpenVINO ----
    need_onnx = any(f in ("onnx", "openvino") for f, _ in wanted)
    onnx_path = folder / artifact_relpath(recipe.name, "onnx", "fp32")
    ov_todo = [p for f, p in wanted if f == "openvino" and cached(f, p) is None]
    tfl_todo = [p for f, p in wanted if f == "tflite" and not reuse("tflite", p)]
    calib_nhwc = np.ascontiguousarray(calib_set.inputs.transpose(0, 2, 3, 1)) if "int8" in tfl_todo else None

    def on_tflite(event: tuple) -> None:
        if event[0] == "start":
            progress("start", step=event[1])
        elif event[0] == "done":
            steps[event[1]] = event[2]
            progress("done", step=event[1], seconds=event[2])
        else:  # ("artifact", precision, flatbuffer, info, seconds)
            _, prec, data, info, seconds = event
            with lock, producing("tflite", prec):
                atomic_write_bytes(folder / artifact_relpath(recipe.name, "tflite", prec), data)
                record("tflite", prec, info, seconds)

    thread = None
    failures: list[BaseException] = []
    if tfl_todo and job is not None:
        job.submit(model, tfl_todo, calib_nhwc, int8_io)

        def drain() -> None:
            try:
                for event in job:
                    on_tflite(event)
            except BaseException as e:  # noqa: BLE001 - raised in the main thread
                failures.append(e)

        thread = threading.Thread(target=drain, name="edgeconv-tflite-events", daemon=True)
        thread.start()
    elif tfl_todo:  # TFLite only: nothing to overlap with, no child process
        from .export.tflite_job import tflite_events

        for event in tflite_events(model, tfl_todo, calib_nhwc, int8_io):
            on_tflite(event)

    def child_failed() -> None:
        """The TFLite child's error (it died, its conversion failed) stops the build at the next
        step here, not after the whole ONNX/OpenVINO chain."""
        if failures:
            raise failures[0]

    try:
        # ---- ONNX (also the input of OpenVINO) ----
        if need_onnx and not reuse("onnx", "fp32"):
            with producing("onnx", "fp32"):
                with step("onnx/fp32"):
                    from .export.onnx import export_onnx

                    t = time.perf_counter()
                    info = export_onnx(model, recipe.resolution, onnx_path)
                record("onnx", "fp32", info, time.perf_counter() - t)
        elif need_onnx and ov_todo and not onnx_path.exists():
            raise ArtifactError(f"{onnx_path}: missing; rebuild with --force")

        # ---- OpenVINO IR from the ONNX file ----
        ov_source = None
        for prec in [p for f, p in wanted if f == "openvino"]:
            child_failed()
            if reuse("openvino", prec):
                continue
            from .export.openvino import convert_openvino, read_onnx

            with producing("openvino", prec):
                with step(f"openvino/{prec}"):
                    t = time.perf_counter()
                    if ov_source is None:
                        ov_source = read_onnx(onnx_path)  # once for the three IRs
                    info = convert_openvino(ov_source, folder / artifact_relpath(recipe.name, "openvino", prec),
                                            prec, calib_set.inputs if prec == "int8" else None)
                record("openvino", prec, info, time.perf_counter() - t)
        if thread is not None:
            thread.join()
            child_failed()
    finally:
        if thread is not None:
            job.close()  # stops the child if this build is failing or interrupted
            thread.join()

    steps["total"] = round(time.perf_counter() - t0, 3)
    state.save()
    return manifest


def replace_artifact(out: str | Path, fmt: str, precision: str, src: str | Path, model,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """Put ``src`` (e.g. an int8 model with some ops kept in float, see ``edgeconv.quant``) in place
    of the manifest's ``fmt/precision`` artifact in ``out`` (the model's build folder): the file is
    moved over the old one, hashed, parity-checked against ``model`` (the PyTorch reference) and its
    manifest entry updated with ``extra``. The entry keeps its cache key (same recipe, weights and
    calibration), so later builds reuse the replacement; ``build --force`` rebuilds the plain one."""
    import os

    from .data import calibration_set
    from .recipe import Preprocess
    from .runtimes import open_runner
    from .runtimes.pytorch import TorchRunner

    folder, src = Path(out), Path(src)
    manifest = load_manifest(folder)
    entry = next((a for a in manifest["artifacts"] if (a["format"], a["precision"]) == (fmt, precision)), None)
    if entry is None:
        raise ArtifactError(f"{folder / MANIFEST}: no {fmt}/{precision} artifact to replace")
    dest = folder / entry["path"]
    if fmt == "openvino":  # the .bin first: an .xml must never point at a missing or foreign .bin
        os.replace(src.with_suffix(".bin"), dest.with_suffix(".bin"))
    os.replace(src, dest)
    par = calibration_set(None, manifest["resolution"], Preprocess(**manifest["input"]["preprocess"]),
                          size=PARITY_IMAGES, seed=1)
    runner = open_runner(dest, runtime_of(fmt), threads=2)
    size = dest.stat().st_size + (dest.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
    if fmt == "tflite":
        from .export.tflite import float_islands, tflite_op_counts

        ops, extra = tflite_op_counts(dest), dict(extra, float_islands=float_islands(dest))
    else:
        from .export.openvino import openvino_op_counts

        ops = openvino_op_counts(dest)
    new = dict(entry, **extra, sha256=sha256_file(dest), size_bytes=size, ops=ops, cached=False,
               parity=parity(TorchRunner(model).run(par.inputs), runner.run(par.inputs)), parity_ok=True)
    manifest["artifacts"] = [new if a is entry else a for a in manifest["artifacts"]]
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return new
