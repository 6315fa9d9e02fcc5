"""edgeconv: small image classifiers from recipe to phone.

edgeconv never phones home, and neither do the libraries it loads. Every edgeconv process (the CLI,
the TFLite child, the benchmark workers, the device-side runner) imports this package first, so
the switches below are in place before any of those libraries is imported:

- ``openvino_telemetry`` (used by OpenVINO's converter and by NNCF to send usage events) cannot be
  imported: both then fall back to their built-in no-op stubs;
- ONNX Runtime's telemetry (its Linux wheels send usage events) is off: ``ORT_DISABLE_TELEMETRY=1``;
- Ray's usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``), also for the Ray processes a farm
  command starts, which inherit the environment.
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# None in sys.modules: "import openvino_telemetry" raises ImportError (a module already loaded by a
# program that imported OpenVINO before edgeconv is left alone)
_sys.modules.setdefault("openvino_telemetry", None)
_sys.modules.setdefault("openvino_telemetry.backend", None)
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"
_os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
