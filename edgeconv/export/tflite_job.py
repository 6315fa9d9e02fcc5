"""The TFLite half of a build as a stream of events, run here or in a child process.

A build has two independent chains: PyTorch -> ONNX -> OpenVINO, and PyTorch -> Keras twin ->
TFLite. Both are mostly single-threaded work that holds the GIL (``torch.export``, TensorFlow's
import, tracing the Keras twin, the MLIR converter), so threads do not overlap them; a second process
does (``edgeconv build`` on 2 cores, see ``benchmarks/build.py``).

:func:`tflite_events` yields typed events (:data:`Event`), in order: ``StepStarted("keras twin")``,
``StepDone("keras twin", seconds)``, then per precision ``StepStarted("tflite/fp32")``,
``StepDone(...)`` and ``ArtifactReady("fp32", data, info, seconds)``, where ``data`` is the .tflite
flatbuffer and ``info`` what :func:`edgeconv.export.tflite.tflite_bytes` says of it.
:class:`TFLiteProcess` yields the same events from a child process (over the pipe also go
``StepDone`` for the child's TensorFlow import, and the control messages ``JobEnded`` and
``JobFailed``, which it turns into the end of the iteration and a raised exception). The child never
writes into the build folder: the flatbuffers come back over a pipe and the build writes and records
them, so stopping the child at any moment (Ctrl-C, a failed parity check in the other chain) leaves
nothing half-written behind.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolError


@dataclass(frozen=True)
class StepStarted:
    step: str


@dataclass(frozen=True)
class StepDone:
    step: str
    seconds: float


@dataclass(frozen=True)
class ArtifactReady:
    precision: str
    data: bytes  # the .tflite flatbuffer
    info: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class JobEnded:
    """The child converted everything it was given."""


@dataclass(frozen=True)
class JobFailed:
    error: BaseException


Event = StepStarted | StepDone | ArtifactReady


def tflite_events(model, precisions: list[str], calib_nhwc: np.ndarray | None = None,
                  int8_io: bool = False) -> Iterator[Event]:
    """Convert the PyTorch ``model`` (an :class:`~edgeconv.models.torch_model.EfficientNet`) to
    TFLite in each of ``precisions``, from one Keras twin traced and frozen once. ``calib_nhwc``
    (N x H x W x 3) calibrates int8; ``int8_io`` gives the int8 model int8 input and output."""
    start = time.perf_counter()
    yield StepStarted("keras twin")  # the twin, traced and frozen: once for all precisions
    from ..models.keras_model import keras_from_torch
    from .tflite import FrozenTwin, tflite_bytes

    twin = FrozenTwin(keras_from_torch(model))
    yield StepDone("keras twin", round(time.perf_counter() - start, 3))
    with twin:
        for prec in precisions:
            label = f"tflite/{prec}"
            yield StepStarted(label)
            t = time.perf_counter()
            data, info = tflite_bytes(twin, prec, calib_nhwc if prec == "int8" else None,
                                      int8_io=int8_io and prec == "int8")
            seconds = round(time.perf_counter() - t, 3)
            yield StepDone(label, seconds)
            yield ArtifactReady(prec, data, info, seconds)


class TFLiteProcessError(ToolError):
    """The TFLite child process failed in a way its own exceptions do not describe (it died, or
    raised an exception that cannot be sent: then :attr:`detail` is its traceback)."""


def model_state(model) -> tuple[Any, dict[str, np.ndarray]]:
    """What the child needs of a PyTorch ``model``: its architecture and its tensors as NumPy
    arrays (the child builds the twin from them without importing torch)."""
    return model.arch, {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _receive(inbox, received: list) -> None:
    try:
        received.append(inbox.recv())
    except BaseException as e:  # noqa: BLE001 - EOFError (the parent went away) is handled by _child
        received.append(e)


def _child(inbox, conn) -> None:
    """Entry point of the child: import TensorFlow, receive the job (or None: nothing to do), send
    its events, then :class:`JobEnded` or :class:`JobFailed`."""
    def stop(*_):
        raise SystemExit(143)  # unwinds (finally blocks run)

    signal.signal(signal.SIGTERM, stop)
    # The job is read while TensorFlow imports: it is bigger than a pipe's buffer (the calibration
    # tensors), and the parent's submit() would otherwise wait for the import to end.
    received: list = []
    reader = threading.Thread(target=_receive, args=(inbox, received), name="edgeconv-job-reader", daemon=True)
    reader.start()
    try:
        conn.send(StepStarted("tensorflow import"))
        t = time.perf_counter()
        from ..models.keras_model import StateView  # imports TensorFlow and Keras, quietly

        conn.send(StepDone("tensorflow import", round(time.perf_counter() - t, 3)))
        reader.join()
        if isinstance(received[0], BaseException):
            raise received[0]
        job = received[0]
        if job is None:
            return
        arch, state, precisions, calib, int8_io = job
        for event in tflite_events(StateView(arch, state), precisions, calib, int8_io):
            conn.send(event)
        conn.send(JobEnded())
    except (SystemExit, KeyboardInterrupt, EOFError):
        pass
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        try:
            pickle.loads(pickle.dumps(e))  # the parent must be able to rebuild it
        except Exception:  # noqa: BLE001 - it does not travel: send its text and traceback
            e = TFLiteProcessError(f"TFLite conversion process: {type(e).__name__}: {e}",
                                   "".join(traceback.format_exception(e)))
        conn.send(JobFailed(e))
    finally:
        conn.close()
        inbox.close()


class TFLiteProcess:
    """:func:`tflite_events` in a child process (``python -m edgeconv.export.tflite_job``: not
    multiprocessing, whose children re-import the caller's main script, and a fork would inherit
    torch's thread pools). The child talks over its stdin and stdout pipes and sits in its own
    session, so Ctrl-C reaches only this process, which then stops it. It starts importing
    TensorFlow at once while this process loads the model; :meth:`submit` then hands
    it the work. Iterate for the events; an error in the child is raised here. :meth:`close` stops
    the child if it is still running."""

    def __init__(self):
        from multiprocessing.connection import Connection

        root = str(Path(__file__).resolve().parents[2])  # edgeconv importable even if not installed
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, start_new_session=True)
        self._send = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._conn = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._sender: threading.Thread | None = None

    def submit(self, model, precisions: list[str], calib_nhwc: np.ndarray | None = None,
               int8_io: bool = False) -> None:
        """Convert the PyTorch ``model`` to each of ``precisions`` (see :func:`tflite_events`)."""
        arch, state = model_state(model)
        job = (arch, state, list(precisions), calib_nhwc, int8_io)
        # Sent from a thread: tens of MB through a pipe take a while, which the caller spends on
        # its own work. A send that fails (the child died) shows as the end of the events.
        self._sender = threading.Thread(target=self._send_quietly, args=(job,), name="edgeconv-job-sender",
                                        daemon=True)
        self._sender.start()

    def _send_quietly(self, job) -> None:
        with contextlib.suppress(OSError):
            self._send.send(job)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                event = self._conn.recv()
            except (EOFError, OSError):
                code = self._proc.wait(10)
                how = f"killed by signal {-code}" if code and code < 0 else f"exit code {code}"
                raise TFLiteProcessError(f"the TFLite conversion process ended without a result ({how})") from None
            if isinstance(event, JobEnded):
                return
            if isinstance(event, JobFailed):
                raise event.error
            yield event

    def close(self) -> None:
        """Stop the child (it is told there is nothing to do if it never got work)."""
        if self._sender is None:
            with contextlib.suppress(OSError):
                self._send.close()  # EOF: a child waiting for work exits
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._sender is not None:
            self._sender.join()  # the child is gone: a send in flight has failed by now
            with contextlib.suppress(OSError):
                self._send.close()
        self._conn.close()

    def __enter__(self) -> TFLiteProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    """The child: work arrives on stdin, events leave on stdout; anything else printed goes to
    stderr (the parent's stdout may be --json)."""
    from multiprocessing.connection import Connection

    from ..util import die_with_parent

    die_with_parent()
    inbox = Connection(os.dup(0), writable=False)
    conn = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    # by its import name, not as __main__: the exceptions it sends must unpickle in the parent
    importlib.import_module("edgeconv.export.tflite_job")._child(inbox, conn)


if __name__ == "__main__":
    main()
