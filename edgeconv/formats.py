"""The one table of artifact formats: which precisions each format is built in, which runtime runs
it, and where its file goes in a build folder. Build, bench, eval/check and the CLI's option
parsing all read it; nothing else lists formats, precisions or runtimes.

=========  ===========  ===========================  =====================================
format     runtime      precisions                   file in OUT/NAME/
=========  ===========  ===========================  =====================================
onnx       onnxruntime  fp32                         NAME.onnx
tflite     tflite       fp32, fp16, dynamic, int8    tflite/PRECISION.tflite
openvino   openvino     fp32, fp16, int8             openvino/PRECISION.xml (+ .bin)
=========  ===========  ===========================  =====================================

Light (no numpy): ``edgeconv --help`` and option parsing read it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Format:
    name: str
    runtime: str  # the runtime that runs this format (edgeconv.runtimes, edgeconv.bench)
    precisions: tuple[str, ...]  # what `edgeconv build` makes of it, in build order
    remote: bool  # runnable on ADB devices (phones, boards)

    def relpath(self, model: str, precision: str) -> str:
        """The artifact's path inside the model's build folder."""
        if self.name == "onnx":
            return f"{model}.onnx"
        return f"{self.name}/{precision}.{'xml' if self.name == 'openvino' else self.name}"


TABLE: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "onnxruntime", ("fp32",), remote=False),
    Format("tflite", "tflite", ("fp32", "fp16", "dynamic", "int8"), remote=True),
    Format("openvino", "openvino", ("fp32", "fp16", "int8"), remote=True),
)}

FORMATS: tuple[str, ...] = tuple(TABLE)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "dynamic", "int8")
# what `edgeconv bench` runs on the host, in its order: the runtimes of phones and boards first
RUNTIMES: tuple[str, ...] = tuple(f.runtime for f in sorted(TABLE.values(), key=lambda f: not f.remote))
REMOTE_RUNTIMES: tuple[str, ...] = tuple(f.runtime for f in TABLE.values() if f.remote)
FORMAT_OF_RUNTIME: dict[str, str] = {f.runtime: f.name for f in TABLE.values()}
BUILD_MATRIX: dict[str, tuple[str, ...]] = {f.name: f.precisions for f in TABLE.values()}


def runtime_of(fmt: str) -> str:
    return TABLE[fmt].runtime


def format_of(runtime: str) -> str:
    return FORMAT_OF_RUNTIME[runtime]


def artifact_relpath(model: str, fmt: str, precision: str) -> str:
    return TABLE[fmt].relpath(model, precision)


def buildable(formats: Sequence[str], precisions: Sequence[str]) -> list[tuple[str, str]]:
    """The (format, precision) pairs a build makes for these choices, in build order."""
    return [(f, p) for f in FORMATS if f in formats for p in TABLE[f].precisions if p in precisions]


def parse_choices(value: str | Sequence[str] | None, allowed: Sequence[str], option: str) -> list[str]:
    """``--option a,b`` (or a sequence) -> ['a', 'b'] in the user's order, duplicates dropped; None ->
    all of ``allowed``. An unknown or empty choice is one line: ``--formats coreml: choose from
    onnx,tflite,openvino``."""
    if value is None:
        return list(allowed)
    items = value.split(",") if isinstance(value, str) else list(value)
    out = list(dict.fromkeys(i for i in (str(v).strip().lower() for v in items) if i))
    bad = [i for i in out if i not in allowed]
    if bad or not out:
        raise UserError(f"{option} {','.join(bad) or '(empty)'}: choose from {','.join(allowed)}")
    return out
