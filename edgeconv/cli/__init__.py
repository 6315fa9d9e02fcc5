"""The ``edgeconv`` command line: one Click group, thin commands that parse options and call the
library. One module per command group; shared options and the error handler are in
:mod:`edgeconv.cli.common`. Heavy libraries (torch, TensorFlow, OpenVINO) load inside commands only.
"""
from __future__ import annotations

import os

import click

from .. import __version__
from .accuracy import check_cmd, eval_cmd
from .bench import bench, devices
from .build import build_cmd
from .common import CONTEXT, Group
from .compare import compare_cmd
from .farm import farm_cmd
from .models import models_cmd
from .profile import profile_cmd
from .recipe import recipe_cmd
from .results import report, results


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="edgeconv")
def cli() -> None:
    """Small image classifiers from recipe to phone.

    \b
    Typical session:
      edgeconv models                         # the zoo: TinyNet-A..E, EfficientNet B0..B7, B-1..B-4, Lite0..4
      edgeconv build tinynet-e                # ONNX, TFLite, OpenVINO; fp32/fp16/dynamic/int8; parity checked
      edgeconv bench tinynet-e --device host  # 1-thread, 1000-run latency
      edgeconv compare --baseline main --candidate pr  # CI gate between two bench/eval --tag runs
    """


for command in (models_cmd, recipe_cmd, build_cmd, eval_cmd, check_cmd, devices, bench, profile_cmd, farm_cmd, results,
                report, compare_cmd):
    cli.add_command(command)


def main() -> None:
    # TensorFlow's C++ start-up chatter (oneDNN notices, absl pre-init warnings) is not for users
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli(prog_name="edgeconv")
