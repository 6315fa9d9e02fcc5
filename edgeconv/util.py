"""Small shared helpers: atomic writes, hashing, quiet imports."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path, suffix: str | None = None):
    """Yield a temp path beside ``target``; on success it replaces ``target`` in one rename, on any
    error (Ctrl-C included) it is removed, so ``target`` is never half-written."""
    target = Path(target)
    tmp_path = _temp_beside(target, suffix)
    try:
        with naming(target):
            yield tmp_path
            os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _temp_beside(target: Path, suffix: str | None) -> Path:
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder of the path should be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        return new_temp_file(target.parent, f".{target.name}.", suffix or target.suffix or ".tmp")
    except OSError as e:  # the user named the target, not our temp file
        raise OSError(e.errno, e.strerror, str(target)) from e


@contextmanager
def naming(path: str | Path):
    """An OSError without a file name (a full disk seen by a library's writer) gets ``path``: the
    user is told which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def new_temp_file(folder: str | Path, prefix: str, suffix: str) -> Path:
    """Create an empty, uniquely named file in ``folder`` with the permissions the user's umask gives
    a new file (0644 under umask 022; ``tempfile.mkstemp`` would make it 0600), and return its path.
    Renamed into place, it keeps them."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{folder}: no free temporary file name")


def check_writable(target: str | Path) -> None:
    """Raise the OSError that writing ``target`` with :func:`atomic_path` would raise (a folder that
    cannot be made, read-only, no permission, a name too long), leaving nothing behind but the
    folder. For outputs written only after a long computation (``check --junit``)."""
    _temp_beside(Path(target), None).unlink()


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def captured_output():
    """Swallow stdout/stderr, Python's and the C++ runtime's (file descriptors 1 and 2): the
    converter prints MLIR diagnostics and Keras's export prints its endpoints. Yields a callable
    returning what was captured, for error messages."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        py_buf = io.StringIO()
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with redirect_stdout(py_buf), redirect_stderr(py_buf):

                def text() -> str:
                    sink.flush()
                    sink.seek(0)
                    return py_buf.getvalue() + sink.read().decode("utf-8", "replace")

                yield text
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# the signals (SIGINT, SIGTERM) received inside sigterm_as_interrupt(), most recent last
_received: list[int] = []


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: unwind like Ctrl-C (``finally`` blocks remove temp files, children stop)."""
    from .errors import Terminated

    _received.append(signum)
    raise Terminated()


def _raise_interrupt(signum, frame) -> None:
    """Python's own Ctrl-C handler, remembering that it fired (see :func:`as_interrupt`)."""
    _received.append(signum)
    raise KeyboardInterrupt()


def as_interrupt(e: BaseException) -> BaseException:
    """The exception to report for ``e``: a Ctrl-C or SIGTERM that arrived while a native module
    was being imported comes out of the import as a plain ``ImportError`` ("initialization
    failed", the KeyboardInterrupt lost on the way; onnxruntime's pybind11 module does this), and
    a library may turn it into its own error. When a signal was received, the interrupt it meant
    is returned instead (from ``e``); otherwise ``e`` itself."""
    import signal

    from .errors import Terminated

    if not _received or isinstance(e, (KeyboardInterrupt, SystemExit)) or type(e).__name__ == "Exit":
        return e  # the interrupt itself, or an exit already decided (click's Exit from ctx.exit)
    interrupt = Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()
    interrupt.__cause__ = e
    return interrupt


@contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises :class:`~edgeconv.errors.Terminated` (a KeyboardInterrupt) in
    the main thread, and both it and Ctrl-C are remembered for :func:`as_interrupt` (an ignored
    SIGINT stays ignored); the previous handlers come back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def die_with_parent() -> None:
    """In a child process of edgeconv: get SIGTERM when the parent dies, however it dies (Linux
    ``PR_SET_PDEATHSIG``), and exit at once if it is already gone."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent or parent == 1:
        os._exit(143)


def import_tensorflow():
    """``import tensorflow``, without the oneDNN / CPU-feature / absl lines TensorFlow writes to
    file descriptor 2 while loading (TF_CPP_MIN_LOG_LEVEL does not silence them). Returns the
    module; an import failure keeps the tail of what was printed."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # Keras (which TensorFlow imports) imports scikit-learn and matplotlib.pyplot, if they can be
    # imported, for its sklearn wrappers and plotting helpers; edgeconv uses neither through Keras.
    # Hidden while TensorFlow loads (importable again afterwards): a good part of the import time.
    hidden = [name for name in OPTIONAL_FOR_KERAS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None: "import sklearn" raises ImportError
    try:
        with captured_output() as log:
            try:
                import tensorflow as tf
            except Exception as e:
                tail = "\n".join(ln for ln in log().splitlines()[-8:] if ln.strip())
                raise ImportError(f"import tensorflow failed: {type(e).__name__}: {e}"
                                  + (f"\n{tail}" if tail else "")) from e
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return tf


OPTIONAL_FOR_KERAS = ("sklearn", "matplotlib.pyplot")
