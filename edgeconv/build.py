"""``edgeconv build``: one recipe (+ weights) -> every deployable artifact, each proven against the
PyTorch model, recorded in ``build/NAME/manifest.json``.

Artifacts are cached by a hash of everything that shapes them (recipe, weights, precision,
calibration set, options, tool versions); re-running reuses them. Every file is written atomically
and the manifest is rewritten after each artifact, so an interrupted build loses only the artifact
in flight and never leaves a half-written file behind.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .errors import ArtifactError, UserError
from .formats import FORMATS, PRECISIONS, artifact_relpath, buildable, parse_choices, runtime_of
from .recipe import Recipe, load_recipe
from .util import atomic_write_bytes, atomic_write_text, sha256_file, sha256_text

MANIFEST = "manifest.json"
SCHEMA = 1
PARITY_IMAGES = 16
FP32_TOLERANCE = 1e-3  # max |diff| relative to the reference logit range
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "tensorflow-cpu", "ai-edge-litert", "openvino", "nncf")

if TYPE_CHECKING:
    from .export.tflite_job import Event, TFLiteProcess

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


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """A build folder's manifest, checked: a JSON object of this schema whose every artifact path
    stays inside the folder (a manifest is data from disk: ``../../etc/passwd`` is refused)."""
    folder = Path(folder)
    p = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder}: is a file, not a build folder")
    if not p.exists():
        raise ArtifactError(f"{folder}: no {MANIFEST} (run 'edgeconv build' first)")
    try:
        m = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{p}: unreadable manifest ({e})") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{p}: not a manifest (a JSON object), but a JSON {type(m).__name__}")
    if m.get("schema") != SCHEMA:
        raise ArtifactError(f"{p}: manifest schema {m.get('schema')} is not {SCHEMA}; rebuild with --force")
    artifacts = m.get("artifacts", [])
    if not isinstance(artifacts, list) or not all(isinstance(a, dict) for a in artifacts):
        raise ArtifactError(f"{p}: 'artifacts' must be a list of objects")
    for a in artifacts:
        inside_folder(folder, a.get("path"), p)
    return m


def inside_folder(folder: Path, rel: Any, where: str | Path) -> Path:
    """``folder / rel`` if ``rel`` is a relative path that resolves inside ``folder``; else an
    ArtifactError naming ``where``."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise ArtifactError(f"{where}: artifact path {rel!r} must be a relative path inside {folder}")
    root = folder.resolve()
    target = (folder / rel).resolve()
    if target != root and root not in target.parents:
        raise ArtifactError(f"{where}: artifact path {rel!r} is outside the build folder {folder}")
    return folder / rel


def parity(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    ref, out = reference.astype(np.float64), outputs.astype(np.float64)
    diff = float(np.abs(ref - out).max())
    rng = float(ref.max() - ref.min()) or 1.0
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.sum(ref * out, 1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return {"n": int(len(ref)), "max_abs_diff": diff, "rel_diff": diff / rng, "cosine": float(cos.min()),
            "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean())}


def build(name: str, weights: str | None = None, formats=None, precisions=None, out: str | Path = "build",
          calib: str | None = None, calib_size: int = 200, int8_io: bool = False, force: bool = False,
          progress: Progress | None = None) -> dict[str, Any]:
    """Build the artifacts of ``name`` (zoo name or recipe path) and return the manifest."""
    formats = parse_choices(formats, FORMATS, "--formats")
    precisions = parse_choices(precisions, PRECISIONS, "--precisions")
    wanted = buildable(formats, precisions)
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
    progress = progress or _quiet
    try:
        with model_lock(Path(out), recipe.name, progress):
            return Builder(recipe, wanted, out=out, weights=weights, calib=calib, calib_size=calib_size,
                           int8_io=int8_io, force=force, progress=progress, job=job).run()
    finally:
        if job is not None:
            job.close()


@contextmanager
def model_lock(out: Path, name: str, progress: Progress):
    """One build of ``name`` into ``out`` at a time (an exclusive ``flock`` on ``OUT/.NAME.lock``,
    released when the process ends however it ends). A second build says whom it waits for, then
    waits: the two never write one manifest at once, so it always lists every file."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            progress("warn", message=f"waiting for another build of {name} in {out} (pid {holder}) to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class Builder:
    """One build: the model, its build folder and manifest, and the artifacts in flight.

    :meth:`run` loads the model, fixes the parity and calibration inputs, then makes each wanted
    ``(format, precision)``: reused from the old manifest when its cache key and file still match,
    else exported, parity-checked against PyTorch and recorded. TFLite comes from ``job`` (the child
    process, if any) on a thread of its own while this thread does ONNX and OpenVINO; :meth:`record`
    is what both threads call, under :attr:`lock`."""

    def __init__(self, recipe: Recipe, wanted: list[tuple[str, str]], *, out: str | Path, weights: str | None,
                 calib: str | None, calib_size: int, int8_io: bool, force: bool, progress: Progress,
                 job: TFLiteProcess | None = None) -> None:
        self.recipe, self.wanted, self.out, self.weights = recipe, wanted, Path(out), weights
        self.calib, self.calib_size, self.int8_io, self.force = calib, calib_size, int8_io, force
        self.progress, self.job = progress, job
        self.steps: dict[str, float] = {}
        self.lock = threading.RLock()  # record() runs in two threads when TFLite converts in a child
        self.recorded: set[tuple[str, str]] = set()  # this run's artifacts already in the manifest
        self.old: dict[str, dict[str, Any]] = {}  # the previous manifest's artifacts, by cache key
        self.child_errors: list[BaseException] = []
        # set by run(): the model, where it goes, and what every artifact is checked against
        self.model = self.folder = self.manifest = None
        self.base_key: dict[str, Any] = {}
        self.base_hash = ""
        self.parity_inputs = self.reference = self.calib_set = None
        self.calib_key: str | None = None

    # ---- small helpers ----
    @contextmanager
    def step(self, label: str):
        self.progress("start", step=label)
        t = time.perf_counter()
        yield
        self.steps[label] = round(time.perf_counter() - t, 3)
        self.progress("done", step=label, seconds=self.steps[label])

    def path(self, fmt: str, prec: str) -> Path:
        return self.folder / artifact_relpath(self.recipe.name, fmt, prec)

    def save(self) -> None:
        self.manifest["steps"] = self.steps
        self.manifest["artifacts"].sort(key=lambda a: (FORMATS.index(a["format"]),
                                                       PRECISIONS.index(a["precision"])))
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=2))

    def key_for(self, fmt: str, prec: str) -> str:
        k = dict(self.base_key, format=fmt, precision=prec)
        if prec == "int8":
            k["calib"] = self.calib_key
            k["int8_scheme"] = INT8_SCHEME[fmt]  # a new range estimator must not reuse old artifacts
            if fmt == "tflite":
                k["int8_io"] = self.int8_io
        return sha256_text(json.dumps(k, sort_keys=True))

    def cached(self, fmt: str, prec: str) -> dict | None:
        """The old manifest's entry for this artifact, if its key matches and its files are intact."""
        a = self.old.get(self.key_for(fmt, prec))
        if not a or not a.get("parity_ok", False):
            return None
        p = self.folder / a["path"]
        if not p.exists() or sha256_file(p) != a["sha256"]:
            return None
        if fmt == "openvino" and not p.with_suffix(".bin").exists():
            return None
        return a

    def reuse(self, fmt: str, prec: str) -> bool:
        a = self.cached(fmt, prec)
        if a is None:
            return False
        with self.lock:
            self.list_entry(dict(a, cached=True))
            self.save()
        self.progress("cached", step=f"{fmt}/{prec}", path=str(self.folder / a["path"]))
        return True

    def list_entry(self, entry: dict[str, Any]) -> None:
        """Put ``entry`` in the manifest in place of any entry of the same format and precision."""
        key = (entry["format"], entry["precision"])
        self.manifest["artifacts"] = [a for a in self.manifest["artifacts"]
                                      if (a["format"], a["precision"]) != key] + [entry]

    def files_of(self, fmt: str, prec: str) -> list[Path]:
        path = self.path(fmt, prec)
        return [path, path.with_suffix(".bin")] if fmt == "openvino" else [path]

    @contextmanager
    def producing(self, fmt: str, prec: str):
        """Until the new artifact is recorded, the previous one (if any) stays in place and listed.
        If the build stops after a new file replaced an old one but before the manifest says so
        (Ctrl-C between the rename and the manifest write), the artifact's files are removed and
        its entry dropped: every file left is complete and listed, every listed file is its own."""
        def signature(f: Path):
            try:
                st = f.stat()
            except FileNotFoundError:
                return None
            return st.st_ino, st.st_mtime_ns, st.st_size

        before = {f: signature(f) for f in self.files_of(fmt, prec)}
        try:
            yield
        except BaseException:
            if (fmt, prec) not in self.recorded and any(signature(f) != sig for f, sig in before.items()):
                with self.lock:
                    for f in before:
                        f.unlink(missing_ok=True)
                    self.manifest["artifacts"] = [a for a in self.manifest["artifacts"]
                                                  if (a["format"], a["precision"]) != (fmt, prec)]
                    self.save()
            raise

    def record(self, fmt: str, prec: str, info: dict, seconds: float) -> dict:
        """Parity-check the artifact now in place and list it in the manifest (saved at once)."""
        with self.lock:
            return self._record(fmt, prec, info, seconds)

    def _record(self, fmt: str, prec: str, info: dict, seconds: float) -> dict:
        rel = artifact_relpath(self.recipe.name, fmt, prec)
        path = self.folder / rel
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
        with self.step(f"{fmt}/{prec} parity"):
            from .runtimes import open_runner
            from .util import captured_output

            with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" goes to fd 2
                runner = open_runner(path, runtime_of(fmt), threads=2)
            par_result = parity(self.reference, runner.run(self.parity_inputs))
        ok = prec != "fp32" or par_result["rel_diff"] <= FP32_TOLERANCE
        entry = {"format": fmt, "precision": prec, "runtime": runtime_of(fmt), "path": rel,
                 "size_bytes": size, "sha256": sha256_file(path), "key": self.key_for(fmt, prec),
                 "base": self.base_hash, "ops": info.get("ops", {}), "parity": par_result, "parity_ok": ok,
                 "seconds": round(seconds, 3), "cached": False}
        for extra in ("float_islands", "transpose_ops", "int8_io", "ranges", "bias_correction"):
            if extra in info:
                entry[extra] = info[extra]
        if prec == "int8":  # each int8 artifact remembers what it was calibrated on
            entry["calibration"] = self.manifest["calibration"]
        self.list_entry(entry)
        self.save()
        self.recorded.add((fmt, prec))
        if not ok:
            raise ArtifactError(f"{rel}: fp32 artifact does not match PyTorch (max abs diff "
                                f"{par_result['max_abs_diff']:.3g} = {par_result['rel_diff']:.2e} of the "
                                f"logit range > {FP32_TOLERANCE:g})")
        return entry

    # ---- the build ----
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.load_model()
        self.start_manifest()
        self.prepare_inputs()
        tfl_todo = [p for f, p in self.wanted if f == "tflite" and not self.reuse("tflite", p)]
        thread = self.start_tflite(tfl_todo)
        try:
            self.make_onnx_and_openvino()
            if thread is not None:
                thread.join()
                self.raise_child_error()
        finally:
            if thread is not None:
                self.job.close()  # stops the child if this build is failing or interrupted
                thread.join()
        self.steps["total"] = round(time.perf_counter() - t0, 3)
        self.save()
        return self.manifest

    def load_model(self) -> None:
        with self.step("load model"):
            from .models.weights import load_model

            self.model, self.winfo = load_model(self.recipe, self.weights)
            self.recipe = self.recipe.with_classes(self.winfo.num_classes)
        if self.winfo.random:
            self.progress("warn", message=f"no --weights given: {self.recipe.name} is RANDOMLY INITIALISED; "
                                          "latency is meaningful, accuracy is not")

    def start_manifest(self) -> None:
        """The new manifest, keeping the old one's entries for what this run does not touch."""
        from .models.counting import count_macs, count_params

        recipe, model = self.recipe, self.model
        self.folder = self.out / recipe.name
        self.folder.mkdir(parents=True, exist_ok=True)
        old_entries: list[dict[str, Any]] = []
        if (self.folder / MANIFEST).exists():
            try:
                old_entries = load_manifest(self.folder).get("artifacts", [])
            except ArtifactError:
                old_entries = []
        if not self.force:  # --force: nothing is reused, but what is not rebuilt (yet) stays listed
            self.old = {a["key"]: a for a in old_entries if "key" in a}
        tools = tool_versions()
        # the tensors themselves (not just the file): random init and code changes show up too
        fingerprint = hashlib.sha256()
        for k, v in model.state_dict().items():
            fingerprint.update(k.encode())
            fingerprint.update(v.detach().contiguous().numpy().tobytes())
        self.base_key = {"recipe": recipe.digest(), "weights": fingerprint.hexdigest(), "tools": tools,
                         "schema": SCHEMA}
        self.base_hash = sha256_text(json.dumps(self.base_key, sort_keys=True))
        self.manifest = {
            "schema": SCHEMA, "model": recipe.name, "recipe": recipe.to_dict(), "recipe_sha256": recipe.digest(),
            "recipe_path": recipe.path, "weights": self.winfo.to_dict(), "tools": tools,
            "params": count_params(model), "macs": count_macs(model, recipe.resolution),
            "resolution": recipe.resolution, "num_classes": recipe.num_classes,
            "input": {"layout": "NCHW (onnx, openvino) / NHWC (tflite)", "shape": list(recipe.input_shape),
                      "preprocess": recipe.to_dict()["preprocess"]},
            "calibration": None, "artifacts": [], "steps": self.steps,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Artifacts of the same model and weights stay listed (a build of one precision must not hide
        # the others; --force neither), as long as their files are intact.
        # The ones this run rebuilds stay listed (their previous good files in place) until replaced.
        for a in old_entries:
            if a.get("base") == self.base_hash and (self.folder / a["path"]).exists() \
                    and sha256_file(self.folder / a["path"]) == a.get("sha256"):
                self.list_entry(dict(a, cached=True))

    def prepare_inputs(self) -> None:
        """The parity images and the PyTorch reference logits; the calibration set if int8 is wanted."""
        from .data import calibration_set

        recipe = self.recipe
        with self.step("parity inputs"):
            # The same real photos for every build: deterministic parity across artifacts and runs.
            par = calibration_set(None, recipe.resolution, recipe.preprocess, size=PARITY_IMAGES, seed=1)
            from .runtimes.pytorch import TorchRunner

            self.parity_inputs = par.inputs
            self.reference = TorchRunner(self.model).run(par.inputs)
        if not any(p == "int8" for _, p in self.wanted):
            return
        with self.step("calibration"):
            cs = calibration_set(self.calib, recipe.resolution, recipe.preprocess, size=self.calib_size)
        self.calib_set = cs
        if cs.warning:
            self.progress("warn", message=cs.warning)
        # the preprocessed tensors themselves: any change of images, sampling or preprocessing shows
        self.calib_key = hashlib.sha256(cs.inputs.tobytes()).hexdigest()
        self.manifest["calibration"] = {"source": cs.source, "images": int(len(cs.inputs)),
                                        "skipped_undecodable": cs.skipped, "requested": self.calib_size}
        if cs.skipped:
            from .data import skipped_summary

            self.progress("warn", message=f"calibration: {skipped_summary(cs.skipped_files)}")

    # ---- TFLite, from the NHWC Keras twin ----
    def on_tflite(self, event: Event) -> None:
        from .export.tflite_job import ArtifactReady, StepDone, StepStarted

        if isinstance(event, StepStarted):
            self.progress("start", step=event.step)
        elif isinstance(event, StepDone):
            self.steps[event.step] = event.seconds
            self.progress("done", step=event.step, seconds=event.seconds)
        elif isinstance(event, ArtifactReady):
            with self.lock, self.producing("tflite", event.precision):
                atomic_write_bytes(self.path("tflite", event.precision), event.data)
                self.record("tflite", event.precision, event.info, event.seconds)

    def start_tflite(self, precisions: list[str]) -> threading.Thread | None:
        """Convert ``precisions``: in the child process (events drained by the returned thread) if
        there is one, else right here."""
        if not precisions:
            return None
        calib = None
        if "int8" in precisions:
            calib = np.ascontiguousarray(self.calib_set.inputs.transpose(0, 2, 3, 1))
        if self.job is None:  # TFLite only: nothing to overlap with, no child process
            from .export.tflite_job import tflite_events

            for event in tflite_events(self.model, precisions, calib, self.int8_io):
                self.on_tflite(event)
            return None
        self.job.submit(self.model, precisions, calib, self.int8_io)

        def drain() -> None:
            try:
                for event in self.job:
                    self.on_tflite(event)
            except BaseException as e:  # noqa: BLE001 - raised in the main thread
                self.child_errors.append(e)

        thread = threading.Thread(target=drain, name="edgeconv-tflite-events", daemon=True)
        thread.start()
        return thread

    def raise_child_error(self) -> None:
        """The TFLite child's error (it died, its conversion failed) stops the build at the next
        step here, not after the whole ONNX/OpenVINO chain."""
        if self.child_errors:
            raise self.child_errors[0]

    # ---- ONNX, and OpenVINO IR from the ONNX file ----
    def make_onnx_and_openvino(self) -> None:
        need_onnx = any(f in ("onnx", "openvino") for f, _ in self.wanted)
        onnx_path = self.path("onnx", "fp32")
        ov_wanted = [p for f, p in self.wanted if f == "openvino"]
        ov_todo = [p for p in ov_wanted if self.cached("openvino", p) is None]
        if need_onnx and not self.reuse("onnx", "fp32"):
            with self.producing("onnx", "fp32"):
                with self.step("onnx/fp32"):
                    from .export.onnx import export_onnx

                    t = time.perf_counter()
                    info = export_onnx(self.model, self.recipe.resolution, onnx_path)
                self.record("onnx", "fp32", info, time.perf_counter() - t)
        elif need_onnx and ov_todo and not onnx_path.exists():
            raise ArtifactError(f"{onnx_path}: missing; rebuild with --force")

        ov_source = None
        for prec in ov_wanted:
            self.raise_child_error()
            if self.reuse("openvino", prec):
                continue
            from .export.openvino import convert_openvino, read_onnx

            with self.producing("openvino", prec):
                with self.step(f"openvino/{prec}"):
                    t = time.perf_counter()
                    if ov_source is None:
                        ov_source = read_onnx(onnx_path)  # once for the three IRs
                    info = convert_openvino(ov_source, self.path("openvino", prec), prec,
                                            self.calib_set.inputs if prec == "int8" else None)
                self.record("openvino", prec, info, time.perf_counter() - t)


def replace_artifact(out: str | Path, fmt: str, precision: str, src: str | Path, model,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """Put ``src`` (e.g. an int8 model with some ops kept in float, see ``edgeconv.quant``) in place
    of the manifest's ``fmt/precision`` artifact in ``out`` (the model's build folder): the file is
    moved over the old one, hashed, parity-checked against ``model`` (the PyTorch reference) and its
    manifest entry updated with ``extra``. The entry keeps its cache key (same recipe, weights and
    calibration), so later builds reuse the replacement; ``build --force`` rebuilds the plain one."""

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
