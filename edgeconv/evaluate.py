"""Accuracy of every artifact on labelled images (``edgeconv eval``) and the quantization gate
(``edgeconv check``).

Images go through :mod:`edgeconv.data` — the one preprocessing path that calibration and parity
use — and every artifact of the build (PyTorch fp32 as the reference, ONNX, TFLite fp32/fp16/
dynamic/int8, OpenVINO fp32/fp16/int8) classifies the same preprocessed tensors. Top-1 and top-5
are fractions of the decodable images; *agreement* is the fraction whose top-1 class equals
PyTorch fp32's. A *drop* is ``100 * (top1_pytorch - top1_artifact)`` in percentage points.

Decoded inputs are kept in memory when they fit in :data:`CACHE_BYTES` (1000 ImageNet images at
224 px take 0.6 GB) and decoded again per artifact otherwise, so the dataset size is not bounded
by memory. PyTorch runs batched; the other runtimes run their batch-1 artifacts image by image.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, LabelledSet, decode_image, labelled_set, skipped_summary
from .errors import UserError
from .recipe import Preprocess

REFERENCE = ("pytorch", "fp32")
CACHE_BYTES = 1 << 30
CHUNK = 64

Progress = Callable[..., None]


def _quiet(event: str, **kw: Any) -> None:
    pass


class CheckFailed(UserError):
    """At least one artifact's top-1 dropped more than the allowed limit (exit code 1)."""


class CheckError(UserError):
    """``check`` could not reach a verdict: bad data, a missing or corrupt artifact or checkpoint
    (exit code 3, like a tool failure; a gate that fails is 1, a bad command line 2)."""

    exit_code = 3


# ----------------------------------------------------------------------------------------------
# Labelled inputs
# ----------------------------------------------------------------------------------------------
class EvalData:
    """A labelled set, preprocessed for one recipe, iterated in chunks of (inputs, labels).

    Undecodable files are found on the first pass and skipped from then on (``skipped``)."""

    def __init__(self, ds: LabelledSet, resolution: int, pp: Preprocess, threads: int = 2):
        self.ds, self.resolution, self.pp, self.threads = ds, resolution, pp, max(1, threads)
        self.skipped: list[str] = []
        self.skip_reasons: dict[str, str] = {}  # path -> why it was skipped
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._cacheable = len(ds.files) * 3 * resolution * resolution * 4 <= CACHE_BYTES
        self._ok: np.ndarray | None = None  # per file: decodable

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.ds.labels, np.int64)[self.scan()]

    @property
    def n(self) -> int:
        return int(self.scan().sum())

    def scan(self) -> np.ndarray:
        """Which files decode (one pass over the data the first time)."""
        if self._ok is None:
            for _ in self.chunks():
                pass
        return self._ok

    def _decode(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        files, labels = self.ds.files, np.asarray(self.ds.labels, np.int64)
        ok = np.ones(len(files), bool)
        with ThreadPoolExecutor(self.threads) as pool:  # PIL releases the GIL while decoding
            for start in range(0, len(files), CHUNK):
                part = files[start:start + CHUNK]
                decoded = list(pool.map(lambda f: decode_image(f, self.resolution, self.pp), part))
                arrays = [a for a, _ in decoded]
                keep = [a is not None for a in arrays]
                if self._ok is None:
                    self.skip_reasons.update({str(f): why for f, (a, why) in zip(part, decoded, strict=True)
                                              if a is None})
                ok[start:start + len(part)] = keep
                if any(keep):
                    yield (np.stack([a for a in arrays if a is not None]),
                           labels[start:start + len(part)][keep])
        if self._ok is None:
            self._ok = ok
            self.skipped = [str(f) for f, good in zip(files, ok, strict=True) if not good]
            if not ok.any():
                raise DataError(f"--data {self.ds.root}: none of the {len(files)} images can be used; "
                                + self.skipped_summary())

    def skipped_summary(self) -> str:
        return skipped_summary([(p, self.skip_reasons.get(p, "?")) for p in self.skipped])

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._cache is not None:
            yield from self._cache
            return
        cache = [] if self._cacheable else None
        for chunk in self._decode():
            if cache is not None:
                cache.append(chunk)
            yield chunk
        self._cache = cache

    def inputs(self) -> Iterator[np.ndarray]:
        for x, _ in self.chunks():
            yield x


def load_eval_data(data: str | Path, resolution: int, pp: Preprocess, limit: int | None = None,
                   num_classes: int | None = None, threads: int = 2) -> EvalData:
    """The labelled set at ``data`` (see :func:`edgeconv.data.labelled_set`), checked against the
    model's number of classes."""
    if limit is not None and limit < 1:
        raise DataError("--limit must be at least 1")
    ds = labelled_set(data, limit)
    if num_classes is not None:
        top = max(ds.labels)
        if top >= num_classes:
            name = ds.class_names[top] if top < len(ds.class_names) else "?"
            raise DataError(f"--data {data}: class index {top} ({name}) does not exist in a model with "
                            f"{num_classes} classes")
    return EvalData(ds, resolution, pp, threads)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits. Ties (common in int8 outputs)
    go to the lower class index, as ``argmax`` does: top-1 is exactly ``argmax == label``."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(1).mean())


@dataclass
class Result:
    """One artifact's accuracy on the evaluation set."""

    format: str  # "pytorch" for the reference
    precision: str
    runtime: str
    path: str | None
    sha256: str | None
    n: int
    top1: float
    top5: float | None
    agreement: float  # top-1 agreement with PyTorch fp32
    seconds: float
    float_fallback: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.format}/{self.precision}"

    @property
    def is_reference(self) -> bool:
        return (self.format, self.precision) == REFERENCE


def score(fmt: str, precision: str, runtime: str, logits: np.ndarray, labels: np.ndarray,
          reference: np.ndarray | None, seconds: float, path: str | None = None,
          sha256: str | None = None, float_fallback: list[str] | None = None) -> Result:
    ref_top = reference.argmax(1) if reference is not None else logits.argmax(1)
    return Result(fmt, precision, runtime, path, sha256, int(len(labels)),
                  topk_accuracy(logits, labels, 1),
                  topk_accuracy(logits, labels, 5) if logits.shape[1] > 5 else None,
                  float((logits.argmax(1) == ref_top).mean()), round(seconds, 3), list(float_fallback or []))


def run_logits(run: Callable[[np.ndarray], np.ndarray], data: EvalData) -> tuple[np.ndarray, float]:
    """(logits of every decodable image, seconds spent inside ``run``)."""
    out, spent = [], 0.0
    for x in data.inputs():
        t = time.perf_counter()
        out.append(np.asarray(run(x), np.float32))
        spent += time.perf_counter() - t
    return np.concatenate(out), spent


def artifact_logits(path: str | Path, runtime: str, data: EvalData, threads: int = 2,
                    precision: str | None = None) -> tuple[np.ndarray, float]:
    from .export.tflite import _captured_output
    from .runtimes import open_runner

    with _captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" goes to fd 2, not to users
        runner = open_runner(path, runtime, threads=threads, precision=precision)
    try:
        return run_logits(runner.run, data)
    finally:
        runner.close()


def torch_logits(model, data: EvalData, threads: int = 2, batch: int = 8) -> tuple[np.ndarray, float]:
    """PyTorch fp32 logits, batched, channels-last (faster on CPU than NCHW; the arithmetic is the
    same float32 convolution)."""
    import copy

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    fast = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xs = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            return np.concatenate([fast(xs[i:i + batch]).numpy() for i in range(0, len(xs), batch)])

    try:
        return run_logits(run, data)
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# Evaluation of a build
# ----------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    model: str
    dataset: str
    data_root: str
    layout: str
    n: int
    skipped: list[str]
    limit: int | None
    weights: dict
    results: list[Result]
    folder: str
    # for the float fallback: the decoded inputs, the PyTorch model and its recipe
    data: EvalData | None = field(default=None, repr=False, compare=False)
    torch_model: Any = field(default=None, repr=False, compare=False)
    recipe: Any = field(default=None, repr=False, compare=False)
    reference_logits: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def reference(self) -> Result:
        return next(r for r in self.results if r.is_reference)

    def drop(self, r: Result) -> float:
        """Top-1 drop of ``r`` vs PyTorch fp32, percentage points (negative: better)."""
        return 100.0 * (self.reference.top1 - r.top1)

    def result(self, fmt: str, precision: str) -> Result | None:
        return next((r for r in self.results if (r.format, r.precision) == (fmt, precision)), None)

    def replace(self, new: Result) -> None:
        self.results = [new if (r.format, r.precision) == (new.format, new.precision) else r
                        for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        rows = [dict(asdict(r), label=r.label, drop_pt=None if r.is_reference else round(self.drop(r), 3))
                for r in self.results]
        return {"model": self.model, "dataset": self.dataset, "data": self.data_root, "layout": self.layout,
                "n": self.n, "skipped": self.skipped, "limit": self.limit, "weights": self.weights,
                "folder": self.folder, "results": rows}


def dataset_label(root: str | Path) -> str:
    """How a dataset is named in the results store: relative to the working folder when below it."""
    p = Path(root).resolve()
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else str(p)


def record_result(r: Result, model: str, dataset: str, data_root: str, limit: int | None, skipped: int,
                  weights: dict, db: str | Path | None = None, tag: str | None = None) -> None:
    """Write one accuracy row to the results store (each row as soon as it is measured: Ctrl-C
    after an artifact keeps it), labelled ``tag``."""
    from .store import record_accuracy

    extra = {"runtime": r.runtime, "path": r.path, "limit": limit, "data": data_root,
             "skipped": skipped, "weights": weights.get("spec"), "seconds": r.seconds}
    if r.float_fallback:
        extra["float_fallback"] = r.float_fallback
    record_accuracy(model, r.format, r.precision, dataset, r.n, r.top1, r.top5, r.agreement,
                    db=db, artifact_sha256=r.sha256, extra=extra, tag=tag)


def record(ev: Evaluation, results: list[Result] | None = None, db: str | Path | None = None,
           tag: str | None = None) -> None:
    """Write ``results`` (default: all) of ``ev`` to the results store."""
    for r in results if results is not None else ev.results:
        record_result(r, ev.model, ev.dataset, ev.data_root, ev.limit, len(ev.skipped), ev.weights, db, tag)


def evaluate(name: str, data: str | Path, *, weights: str | None = None, out: str | Path = "build",
             limit: int | None = None, calib: str | None = None, calib_size: int = 200,
             formats=None, precisions=None, threads: int = 2, db: str | Path | None = None,
             store: bool = True, progress: Progress | None = None, tag: str | None = None) -> Evaluation:
    """Build NAME's artifacts if missing (cached otherwise), then measure each on ``data``."""
    from .build import build
    from .formats import FORMATS, PRECISIONS, parse_choices, runtime_of
    from .models.weights import load_model
    from .recipe import load_recipe

    progress = progress or _quiet
    recipe = load_recipe(name)
    model, winfo = load_model(recipe, weights)
    recipe = recipe.with_classes(winfo.num_classes)
    if winfo.random:
        progress("warn", message=f"no --weights given: {recipe.name} is RANDOMLY INITIALISED; its accuracy "
                                 "is chance level")
    evdata = load_eval_data(data, recipe.resolution, recipe.preprocess, limit, recipe.num_classes, threads)
    evdata.scan()  # decode (and check) every image before spending minutes on a build
    if len(evdata.ds.class_names) != recipe.num_classes:
        progress("warn", message=f"--data {data}: {len(evdata.ds.class_names)} classes for a model with "
                                 f"{recipe.num_classes}: class folders are numbered in name order, are the "
                                 "labels right?")
    manifest = build(name, weights=weights, formats=formats, precisions=precisions, out=out, calib=calib,
                     calib_size=calib_size, progress=progress)
    folder = Path(out) / manifest["model"]

    progress("start", step="pytorch/fp32 accuracy")
    ref_logits, spent = torch_logits(model, evdata, threads)
    labels = evdata.labels
    if evdata.skipped:
        progress("warn", message=f"--data {data}: {evdata.skipped_summary()}")

    def save(r: Result) -> Result:
        if store:
            record_result(r, manifest["model"], dataset_label(data), str(data), limit, len(evdata.skipped),
                          manifest["weights"], db, tag)
        return r

    results = [save(score("pytorch", "fp32", "torch", ref_logits, labels, None, spent))]
    progress("done", step="pytorch/fp32 accuracy", seconds=spent)
    want_f, want_p = parse_choices(formats, FORMATS, "--formats"), parse_choices(precisions, PRECISIONS, "--precisions")
    for a in [a for a in manifest["artifacts"] if a["format"] in want_f and a["precision"] in want_p]:
        label = f"{a['format']}/{a['precision']}"
        progress("start", step=f"{label} accuracy")
        logits, spent = artifact_logits(folder / a["path"], runtime_of(a["format"]), evdata, threads)
        results.append(save(score(a["format"], a["precision"], runtime_of(a["format"]), logits, labels,
                                  ref_logits, spent, str(folder / a["path"]), a["sha256"],
                                  a.get("float_fallback"))))
        progress("done", step=f"{label} accuracy", seconds=spent)
    ev = Evaluation(manifest["model"], dataset_label(data), str(data), evdata.ds.layout, evdata.n,
                    evdata.skipped, limit, manifest["weights"], results, str(folder), evdata, model, recipe,
                    ref_logits)
    return ev


# ----------------------------------------------------------------------------------------------
# The gate
# ----------------------------------------------------------------------------------------------
@dataclass
class GateRow:
    label: str
    top1: float
    drop_pt: float
    limit: float
    float_fallback: list[str]

    @property
    def ok(self) -> bool:
        return self.drop_pt <= self.limit + 1e-9

    @property
    def message(self) -> str:
        return f"{self.label} top-1 dropped {self.drop_pt:.1f} pt > {self.limit:g}"


@dataclass
class Gate:
    max_drop: float
    reference_top1: float
    rows: list[GateRow]

    @property
    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if not r.ok]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.passed:
            return f"check passed: {len(self.rows)} artifacts within {self.max_drop:g} pt of PyTorch fp32"
        return "check failed: " + "; ".join(r.message for r in self.failures)

    def raise_for_failures(self) -> None:
        if not self.passed:
            raise CheckFailed(self.summary())


def gate(ev: Evaluation, max_drop: float) -> Gate:
    """Every artifact's top-1 drop vs PyTorch fp32 against ``max_drop`` (percentage points)."""
    if max_drop < 0:
        raise UserError(f"--max-drop {max_drop:g}: must be >= 0 (percentage points of top-1)")
    rows = [GateRow(r.label, r.top1, ev.drop(r), max_drop, r.float_fallback)
            for r in ev.results if not r.is_reference]
    return Gate(max_drop, ev.reference.top1, rows)


def junit_xml(ev: Evaluation, g: Gate, seconds: dict[str, float] | None = None) -> str:
    """JUnit XML: one <testcase> per artifact, a <failure> where the drop exceeds the limit."""
    import xml.etree.ElementTree as ET

    by_label = {r.label: r for r in ev.results}
    suites = ET.Element("testsuites", name="edgeconv check")
    total = sum(by_label[row.label].seconds for row in g.rows)
    suite = ET.SubElement(suites, "testsuite", name=f"edgeconv check {ev.model}", tests=str(len(g.rows)),
                          failures=str(len(g.failures)), errors="0", skipped="0", time=f"{total:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("model", ev.model), ("dataset", ev.dataset), ("images", ev.n),
                 ("max_drop_pt", f"{g.max_drop:g}"), ("pytorch_fp32_top1", f"{100 * g.reference_top1:.2f}"),
                 ("weights", ev.weights.get("spec") or "random init")):
        ET.SubElement(props, "property", name=k, value=str(v))
    for row in g.rows:
        r = by_label[row.label]
        case = ET.SubElement(suite, "testcase", classname=f"edgeconv.check.{ev.model}", name=row.label,
                             time=f"{r.seconds:.3f}")
        detail = (f"top-1 {100 * r.top1:.2f} % vs PyTorch fp32 {100 * g.reference_top1:.2f} % "
                  f"(drop {row.drop_pt:.2f} pt, limit {g.max_drop:g}); agreement {100 * r.agreement:.1f} %; "
                  f"n={r.n}" + (f"; float fallback: {', '.join(r.float_fallback)}" if r.float_fallback else ""))
        if not row.ok:
            failure = ET.SubElement(case, "failure", message=row.message, type="AccuracyDrop")
            failure.text = detail
        ET.SubElement(case, "system-out").text = detail
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def junit_error_xml(model: str, message: str, kind: str) -> str:
    """JUnit XML for a check that could not reach a verdict: one <testcase> with an <error> saying
    why (CI shows it instead of a missing report)."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="edgeconv check")
    suite = ET.SubElement(suites, "testsuite", name=f"edgeconv check {model}", tests="1", failures="0",
                          errors="1", skipped="0", time="0.000")
    case = ET.SubElement(suite, "testcase", classname=f"edgeconv.check.{model}", name="check", time="0.000")
    ET.SubElement(case, "error", message=message, type=kind).text = message
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# ----------------------------------------------------------------------------------------------
# edgeconv check: evaluate, fall back to float where int8 hurts, gate
# ----------------------------------------------------------------------------------------------
FALLBACK_FORMATS = ("tflite", "openvino")
WORK_FILE = {"tflite": "tflite/.int8-fallback.tflite", "openvino": "openvino/.int8-fallback.xml"}


@dataclass
class CheckResult:
    evaluation: Evaluation
    gate: Gate
    fallbacks: list = field(default_factory=list)  # edgeconv.quant.Fallback

    def to_dict(self) -> dict[str, Any]:
        g = self.gate
        return {**self.evaluation.to_dict(), "max_drop": g.max_drop, "passed": g.passed, "summary": g.summary(),
                "gate": [dict(asdict(r), ok=r.ok) for r in g.rows],
                "fallbacks": [fb.to_dict() for fb in self.fallbacks]}


def _remove_work_files(path: Path) -> None:
    for p in (path, path.with_suffix(".bin")):
        p.unlink(missing_ok=True)


def float_fallback(ev: Evaluation, fmt: str, max_drop: float, calib: str | None, calib_size: int,
                   threads: int = 2, latency_runs: int = 200, progress: Progress | None = None):
    """Run the sensitivity pass of :mod:`edgeconv.quant` on ``ev``'s ``fmt/int8`` artifact. The
    mixed artifact is left in a work file beside the build's (``Fallback.path``); latency of both
    is measured when ``latency_runs``."""
    from . import quant
    from .build import load_manifest
    from .data import calibration_set
    from .formats import runtime_of
    from .recipe import resolve

    progress = progress or _quiet
    folder = Path(ev.folder)
    entry = next(a for a in load_manifest(folder)["artifacts"] if (a["format"], a["precision"]) == (fmt, "int8"))
    calib_inputs = calibration_set(calib, ev.recipe.resolution, ev.recipe.preprocess, size=calib_size).inputs
    work = folder / WORK_FILE[fmt]
    labels = ev.data.labels

    def judge(path: Path) -> tuple[float, float]:
        logits, _ = artifact_logits(path, runtime_of(fmt), ev.data, threads)
        r = score(fmt, "int8", runtime_of(fmt), logits, labels, ev.reference_logits, 0.0)
        return ev.drop(r), r.agreement

    try:
        drop_before = ev.drop(ev.result(fmt, "int8"))
        if fmt == "tflite":
            fb = quant.tflite_fallback(ev.torch_model, calib_inputs, judge, max_drop, drop_before, work,
                                       int8_io=bool(entry.get("int8_io")), progress=progress)
        else:
            items = [(x[i:i + 1], int(y[i])) for x, y in ev.data.chunks() for i in range(len(x))]
            plain = None if entry.get("float_fallback") else folder / entry["path"]
            fb = quant.openvino_fallback(folder / f"{ev.model}.onnx", calib_inputs, items, judge, max_drop,
                                         drop_before, work, resolve(ev.recipe), plain)
        if latency_runs:
            fb.latency_ms = {"int8": quant.host_latency_ms(folder / entry["path"], runtime_of(fmt), "int8",
                                                           latency_runs),
                             "mixed": quant.host_latency_ms(work, runtime_of(fmt), "int8", latency_runs)}
    except BaseException:
        _remove_work_files(work)
        raise
    return fb


def check(name: str, data: str | Path, *, weights: str | None = None, out: str | Path = "build",
          limit: int | None = None, calib: str | None = None, calib_size: int = 200, formats=None,
          precisions=None, max_drop: float | None = None, fallback: bool = True, threads: int = 2,
          latency_runs: int = 200,
          db: str | Path | None = None, store: bool = True, progress: Progress | None = None,
          tag: str | None = None) -> CheckResult:
    """Evaluate NAME's artifacts on ``data`` and gate each one's top-1 drop vs PyTorch fp32 at
    ``max_drop`` points (default: the recipe's ``quantization.max_drop``). With ``fallback``, an
    int8 artifact over the limit gets a sensitivity pass (:func:`float_fallback`); if that brings it
    within the limit, the mixed artifact replaces it in the build (manifest entry: precision int8,
    ``float_fallback`` = the PyTorch modules kept in float, ``fallback`` = the details)."""
    from .build import replace_artifact
    from .formats import runtime_of
    from .recipe import load_recipe

    progress = progress or _quiet
    if max_drop is None:
        max_drop = load_recipe(name).max_drop
    if max_drop < 0:
        raise UserError(f"--max-drop {max_drop:g}: must be >= 0 (percentage points of top-1)")
    ev = evaluate(name, data, weights=weights, out=out, limit=limit, calib=calib, calib_size=calib_size,
                  formats=formats, precisions=precisions, threads=threads, db=db, store=store,
                  progress=progress)
    g = gate(ev, max_drop)
    fallbacks = []
    for row in g.failures if fallback else []:
        fmt, prec = row.label.split("/")
        if prec != "int8" or fmt not in FALLBACK_FORMATS:
            continue
        step = f"{fmt}/int8 float fallback"
        progress("start", step=step)
        t = time.perf_counter()
        try:
            fb = float_fallback(ev, fmt, max_drop, calib, calib_size, threads, latency_runs, progress)
        except Exception as e:  # a converter/NNCF failure must not hide the verdict
            first = (str(e).strip().splitlines() or [""])[0][:200]
            progress("warn", message=f"{fmt}/int8 float fallback failed ({type(e).__name__}: {first}); "
                                     "the int8 artifact is unchanged")
            continue
        fallbacks.append(fb)
        progress("done", step=step, seconds=time.perf_counter() - t)
        if not fb.reached:
            _remove_work_files(fb.path)
            progress("warn", message=f"{fmt}/int8: keeping {len(fb.float_ops)} op(s) in float reached a drop of "
                                     f"{fb.drop_after:.1f} pt, not {max_drop:g}; the int8 artifact is unchanged")
            continue
        details = {k: v for k, v in fb.to_dict().items() if k not in ("path", "format", "nodes")}
        details["calibration"] = {k: v for k, v in fb.calibration.items() if k != "ranking"}
        details.update(dataset=ev.dataset, n=ev.n)
        entry = replace_artifact(ev.folder, fmt, "int8", fb.path, ev.torch_model,
                                 {"float_fallback": fb.float_ops, "fallback": details})
        logits, spent = artifact_logits(Path(ev.folder) / entry["path"], runtime_of(fmt), ev.data, threads)
        mixed = score(fmt, "int8", runtime_of(fmt), logits, ev.data.labels, ev.reference_logits, spent,
                      str(Path(ev.folder) / entry["path"]), entry["sha256"], fb.float_ops)
        ev.replace(mixed)
        if store:  # the artifact that now ships; the all-int8 row stays as what was measured before
            record(ev, [mixed], db=db, tag=tag)
    g = gate(ev, max_drop)
    return CheckResult(ev, g, fallbacks)
