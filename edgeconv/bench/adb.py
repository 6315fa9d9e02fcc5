"""The one place edgeconv talks to adb: find the binary, run it with timeouts, turn failures into
one-line :class:`AdbError`s.

Why a wrapper of our own around the adb *command line* rather than a Python ADB library: the adb
binary is what users already have working with their phones (keys, USB rules, ``adb connect``),
and its behaviour is what we must cope with anyway. The traps this module deals with, all checked
against adb 36 (see tests/test_bench_adb.py, which drives the real client):

* ``adb shell`` joins its arguments with spaces and hands the result to the device's ``sh -c``,
  so every argument is quoted here with :func:`shlex.quote` and sent as ONE string;
* with the ``shell_v2`` feature adb exits with the remote exit code; without it (old devices, or
  ``shell -x``) it always exits 0, so a ``; echo <marker>$?`` is appended and parsed back, and
  stdout/stderr arrive merged;
* ``adb connect`` exits 0 even when it fails: only its text tells ("connected to",
  "already connected to", "failed to connect to", "failed to authenticate to");
* a device lost in the middle of ``shell`` gives exit code 255 and no message, so a 255 is
  double-checked against ``adb devices`` before being reported as the command's own status;
* ``adb push`` prints "1 file pushed" before it learns that the device failed the write
  ("remote write failed: No space left on device"), so only the exit code and the error text count.

Every subprocess gets ``stdin=DEVNULL`` (adb must never wait on a terminal) and a timeout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from edgeconv.errors import UserError

DEFAULT_TIMEOUT_S = 60.0  # one shell command or query
TRANSFER_TIMEOUT_S = 900.0  # one push/pull (a 100 MB model over USB 2 takes ~10 s; Wi-Fi far longer)
CONNECT_TIMEOUT_S = 30.0  # adb itself gives up on a silent host after 10 s

STATES = (
    "device",
    "offline",
    "unauthorized",
    "authorizing",
    "connecting",
    "bootloader",
    "recovery",
    "sideload",
    "rescue",
    "host",
    "no permissions",
)


class AdbError(UserError):
    """adb could not do what edgeconv asked; the message is one line a user can act on.

    ``kind`` says which failure it was, for callers that react differently (retry on
    ``device_lost``, skip a device that is ``unauthorized``...): one of ``missing_binary``,
    ``no_device``, ``not_found``, ``unauthorized``, ``offline``, ``device_lost``, ``timeout``,
    ``no_space``, ``connect_failed``, ``command_failed``, ``transfer_failed``, ``bad_output``,
    ``local_missing``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind


@dataclass(frozen=True)
class Device:
    """One line of ``adb devices -l``."""

    serial: str
    state: str
    product: str | None = None
    model: str | None = None
    device: str | None = None
    transport_id: int | None = None

    @property
    def ready(self) -> bool:
        return self.state == "device"


class ShellResult(NamedTuple):
    """What a device command did. With shell v1 devices ``stderr`` is always "" (merged)."""

    exit_code: int
    stdout: str
    stderr: str


# adb's own failure messages (client "adb: ..." or server "error: ..."), checked on stderr.
_ADB_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(?:adb: |adb: error: |error: )?no devices/emulators found", re.M), "no_device"),
    (re.compile(r"^(?:adb: |error: )device '[^']*' not found", re.M), "not_found"),
    (re.compile(r"^(?:adb: |error: )device unauthorized", re.M), "unauthorized"),
    (re.compile(r"^(?:adb: |error: )device still authorizing", re.M), "unauthorized"),
    (re.compile(r"^(?:adb: |error: )device offline", re.M), "offline"),
    (re.compile(r"^(?:adb: |error: )more than one device", re.M), "not_found"),
    (re.compile(r"^(?:adb: )?error: (?:closed|protocol fault|connection reset)", re.M), "device_lost"),
    (re.compile(r"failed to read copy response|failed to copy .*: (?:no response|EOF)", re.M), "device_lost"),
)


def find_adb(env: Mapping[str, str] | None = None) -> str:
    """The adb binary: ``$ADB``, else ``adb`` on PATH, else the one shipped in the adbutils wheel.

    The wheel's copy is found with :func:`importlib.util.find_spec`, which locates the package
    without importing it (adbutils pulls in requests & co. at import time).
    """
    env = os.environ if env is None else env
    chosen = env.get("ADB")
    if chosen:
        if shutil.which(chosen) is None:
            raise AdbError(f"$ADB is set to {chosen!r}, which is not an executable file", "missing_binary")
        return chosen
    on_path = shutil.which("adb", path=env.get("PATH"))
    if on_path:
        return on_path
    spec = importlib.util.find_spec("adbutils")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "binaries" / "adb"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise AdbError(
        "adb not found: install Android platform-tools, or set $ADB to the adb binary", "missing_binary"
    )


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(args: Sequence[str]) -> str:
    return _one_line(" ".join(args), 80)


class Adb:
    """adb bound to one environment (which adb server: ``ANDROID_ADB_SERVER_PORT``, keys: ``HOME``).

    ``env=None`` means the process environment at call time.
    """

    def __init__(
        self,
        binary: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._binary = binary
        self.env = dict(env) if env is not None else None
        self.timeout = timeout
        self._features: dict[tuple[str | None, str], frozenset[str]] = {}

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_adb(self.env)
        return self._binary

    # -- running adb --
    def run(
        self, args: Sequence[str], *, serial: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """``adb [-s SERIAL] ARGS``; raises AdbError only for a missing binary or a timeout."""
        argv = [self.binary, *(["-s", serial] if serial else []), *args]
        limit = self.timeout if timeout is None else timeout
        try:
            return subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=limit, env=self.env, check=False
            )
        except subprocess.TimeoutExpired:
            where = f" on {serial}" if serial else ""
            raise AdbError(f"`adb {_describe(args)}` timed out after {limit:g} s{where}", "timeout") from None
        except FileNotFoundError:
            raise AdbError(f"adb not found at {self.binary}", "missing_binary") from None

    def _failure(self, stderr: str, serial: str | None, what: str) -> AdbError | None:
        """The AdbError for one of adb's own failure messages in ``stderr``, if there is one."""
        for pattern, kind in _ADB_FAILURES:
            if pattern.search(stderr):
                return self._error(kind, serial, what)
        if "No space left on device" in stderr:
            return AdbError(f"no space left on {serial or 'the device'} during `{what}`", "no_space")
        return None

    @staticmethod
    def _error(kind: str, serial: str | None, what: str) -> AdbError:
        name = serial or "the device"
        messages = {
            "no_device": "no Android device is connected (`adb devices` lists none)",
            "not_found": f"device {name} not found: it is not in `adb devices` (unplugged, or wrong serial?)",
            "unauthorized": f"device {name} is unauthorized: unlock it and accept 'Allow USB debugging'",
            "offline": f"device {name} is offline: reconnect it, or run `adb reconnect`",
            "device_lost": f"lost the connection to {name} during `{what}`",
        }
        return AdbError(messages[kind], kind)

    # -- devices --
    def devices(self) -> list[Device]:
        """Every device the adb server knows, in any state."""
        result = self.run(["devices", "-l"])
        text = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise AdbError(
                f"`adb devices` failed: {_one_line(result.stderr.decode(errors='replace'))}", "command_failed"
            )
        return [device for line in text.splitlines() if (device := _parse_device_line(line))]

    def state(self, serial: str) -> str | None:
        """The state adb lists for ``serial``, or None when adb does not list it at all."""
        return next((d.state for d in self.devices() if d.serial == serial), None)

    def require_ready(self, serial: str) -> None:
        """Raise the AdbError that explains why ``serial`` cannot be used, if it cannot."""
        state = self.state(serial)
        if state == "device":
            return
        kind = {
            None: "not_found",
            "offline": "offline",
            "unauthorized": "unauthorized",
            "authorizing": "unauthorized",
        }.get(state, "offline")
        raise self._error(kind, serial, "check device")

    def connect(self, host_port: str, timeout: float = CONNECT_TIMEOUT_S, forget_on_failure: bool = True) -> str:
        """``adb connect HOST:PORT``; returns the serial. adb exits 0 on failure: read its words.

        A host that accepts the TCP connection but not the ADB handshake stays in ``adb devices``
        as ``offline`` after adb gives up (and adb keeps trying it); with ``forget_on_failure`` it is
        disconnected again, so a failed connect leaves nothing behind. (Not while waiting for a
        device that went away mid-run: adb re-attaches those by itself.)"""
        try:
            result = self.run(["connect", host_port], timeout=timeout)
        except AdbError as e:
            if forget_on_failure and e.kind == "timeout":
                self._forget(host_port)
            raise
        text = (result.stdout + result.stderr).decode(errors="replace")
        if re.search(r"^(?:already )?connected to ", text, re.M):
            return host_port
        if "failed to authenticate" in text:  # kept: the device shows the prompt to accept
            raise AdbError(
                f"{host_port} did not authorize this computer: accept 'Allow USB debugging' on the device",
                "unauthorized",
            )
        if forget_on_failure:
            self._forget(host_port)
        detail = text.strip().splitlines()[-1] if text.strip() else f"adb exited with {result.returncode}"
        raise AdbError(f"cannot connect to {host_port}: {detail}", "connect_failed")

    def _forget(self, host_port: str) -> None:
        """``adb disconnect`` after a failed connect; a failure here must not hide the first one."""
        try:
            self.disconnect(host_port)
        except AdbError:
            pass

    def disconnect(self, host_port: str) -> None:
        """``adb disconnect HOST:PORT`` (no error when it was not connected)."""
        self.run(["disconnect", host_port])

    def features(self, serial: str) -> frozenset[str]:
        """The device's ADB features (shell_v2, stat_v2, ...), cached per adb server and serial."""
        server = (self.env if self.env is not None else os.environ).get("ANDROID_ADB_SERVER_PORT")
        key = (server, serial)
        if key not in self._features:
            result = self.run(["features"], serial=serial)
            if result.returncode != 0:
                stderr = result.stderr.decode(errors="replace")
                raise self._failure(stderr, serial, "adb features") or AdbError(
                    f"cannot read adb features of {serial}: {_one_line(stderr)}", "command_failed"
                )
            self._features[key] = frozenset(result.stdout.decode(errors="replace").split())
        return self._features[key]

    # -- shell --
    def shell(
        self, serial: str, cmd_args: Sequence[str], *, timeout: float | None = None, check: bool = False
    ) -> ShellResult:
        """Run one command on the device; every argument reaches it literally (shlex-quoted).

        Returns the remote exit code and output. adb-level failures (no device, unauthorized,
        offline, lost mid-command, timeout) raise AdbError; a non-zero remote exit code raises
        only with ``check=True``.
        """
        if not cmd_args:
            raise ValueError("shell() needs a command")
        command = " ".join(shlex.quote(str(arg)) for arg in cmd_args)
        what = _describe(cmd_args)
        if "shell_v2" in self.features(serial):
            result = self._shell_v2(serial, command, what, timeout)
        else:
            result = self._shell_v1(serial, command, what, timeout)
        if check and result.exit_code != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            detail = f": {_one_line(output[-1])}" if output else ""
            raise AdbError(
                f"`{what}` failed on {serial} with exit code {result.exit_code}{detail}", "command_failed"
            )
        return result

    def _shell_v2(self, serial: str, command: str, what: str, timeout: float | None) -> ShellResult:
        proc = self.run(["shell", "--", command], serial=serial, timeout=timeout)
        stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if (
            proc.returncode != 0
            and (error := self._failure(stderr, serial, what))
            and error.kind != "no_space"
        ):
            raise error
        if proc.returncode == 255 and self.state(serial) != "device":
            # adb's exit code when the transport died before the exit packet arrived.
            raise self._error("device_lost", serial, what)
        return ShellResult(proc.returncode, stdout, stderr)

    def _shell_v1(self, serial: str, command: str, what: str, timeout: float | None) -> ShellResult:
        marker = f"__edgeconv_rc_{secrets.token_hex(4)}="
        proc = self.run(["shell", "--", f"({command}); echo {marker}$?"], serial=serial, timeout=timeout)
        stdout = proc.stdout.decode(errors="replace").replace("\r\n", "\n")  # old adbd used a pty
        stderr = proc.stderr.decode(errors="replace")
        if error := self._failure(stderr, serial, what):
            raise error
        found = re.search(re.escape(marker) + r"(\d+)\n?\Z", stdout)
        if found is None:
            if self.state(serial) != "device":
                raise self._error("device_lost", serial, what)
            raise AdbError(f"`{what}` on {serial} ended without reporting an exit status", "device_lost")
        return ShellResult(int(found.group(1)), stdout[: found.start()], "")

    # -- files --
    def push(
        self, serial: str, local: str | os.PathLike[str], remote: str, timeout: float = TRANSFER_TIMEOUT_S
    ) -> None:
        """Copy a local file to the device (parent directories are created by adb)."""
        local_path = Path(local)
        if not local_path.is_file():
            raise AdbError(f"cannot push {local_path}: no such local file", "local_missing")
        self._transfer(
            "push", serial, [str(local_path), remote], f"push {local_path.name} to {remote}", timeout
        )

    def pull(
        self, serial: str, remote: str, local: str | os.PathLike[str], timeout: float = TRANSFER_TIMEOUT_S
    ) -> None:
        """Copy a device file to ``local``."""
        self._transfer("pull", serial, [remote, str(local)], f"pull {remote}", timeout)

    def _transfer(self, verb: str, serial: str, paths: list[str], what: str, timeout: float) -> None:
        proc = self.run([verb, *paths], serial=serial, timeout=timeout)
        if proc.returncode == 0:
            return
        stderr = proc.stderr.decode(errors="replace")
        error = self._failure(stderr, serial, what)
        if error is not None:
            raise error
        lines = (
            [line for line in stderr.splitlines() if "error" in line]
            or stderr.splitlines()
            or ["(no message)"]
        )
        detail = re.sub(r"^adb: error: ", "", lines[-1])
        raise AdbError(f"cannot {what} on {serial}: {detail}", "transfer_failed")

    def getprop(self, serial: str) -> dict[str, str]:
        """All system properties (``getprop`` output ``[name]: [value]``)."""
        result = self.shell(serial, ["getprop"], check=True)
        return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]$", result.stdout, re.M))

    def sha256(self, serial: str, remote_path: str) -> str | None:
        """SHA-256 hex digest of a device file, or None when the file does not exist."""
        result = self.shell(serial, ["sha256sum", remote_path])
        if result.exit_code == 0:
            digest = result.stdout.split()[0] if result.stdout.split() else ""
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                return digest
            raise AdbError(
                f"unexpected sha256sum output on {serial}: {_one_line(result.stdout)}", "bad_output"
            )
        if "No such file" in result.stderr + result.stdout:
            return None
        raise AdbError(
            f"sha256sum {remote_path} failed on {serial}: {_one_line(result.stderr or result.stdout)}",
            "command_failed",
        )

    def push_if_changed(self, serial: str, local: str | os.PathLike[str], remote: str) -> bool:
        """Push only when the device copy is missing or differs; True when it pushed.

        After a push the device copy's hash is checked, so a truncated transfer is caught here
        rather than as a mysterious benchmark crash later.
        """
        want = _file_sha256(Path(local))
        if self.sha256(serial, remote) == want:
            return False
        self.push(serial, local, remote)
        got = self.sha256(serial, remote)
        if got != want:
            raise AdbError(
                f"{remote} on {serial} does not match {local} after push (sha256 {got})", "transfer_failed"
            )
        return True

    def free_bytes(self, serial: str, path: str) -> int:
        """Bytes available to an unprivileged user on the filesystem holding ``path`` (``df -k``)."""
        result = self.shell(serial, ["df", "-k", path], check=True)
        lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
        if len(lines) >= 2:
            fields = lines[-1]
            # toybox/busybox/POSIX: FS blocks used avail use% mount; GNU wraps a long FS name.
            column = 3 if len(fields) >= 6 else 2 if len(fields) == 5 else None
            if column is not None and fields[column].isdigit():
                return int(fields[column]) * 1024
        raise AdbError(
            f"cannot read free space of {path} on {serial} from df: {_one_line(result.stdout)}", "bad_output"
        )


def _parse_device_line(line: str) -> Device | None:
    """One ``adb devices -l`` line -> Device (None for the header and blank lines)."""
    if not line.strip() or line.startswith(("List of devices", "* daemon", "adb server")):
        return None
    serial, _, rest = line.partition(" ") if "\t" not in line else line.partition("\t")
    rest = rest.strip()
    state = next((s for s in STATES if rest.startswith(s)), rest.split(" ", 1)[0] if rest else "unknown")
    props = dict(re.findall(r"(\w+):(\S+)", rest[len(state) :]))
    transport = props.get("transport_id")
    return Device(
        serial=serial.strip(),
        state=state,
        product=props.get("product"),
        model=props.get("model"),
        device=props.get("device"),
        transport_id=int(transport) if transport and transport.isdigit() else None,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Module-level shortcuts on a default Adb that follows the process environment.
_default = Adb()


def devices() -> list[Device]:
    return _default.devices()


def connect(host_port: str) -> str:
    return _default.connect(host_port)


def shell(
    serial: str, cmd_args: Sequence[str], *, timeout: float | None = None, check: bool = False
) -> ShellResult:
    return _default.shell(serial, cmd_args, timeout=timeout, check=check)


def push(serial: str, local: str | os.PathLike[str], remote: str) -> None:
    _default.push(serial, local, remote)


def pull(serial: str, remote: str, local: str | os.PathLike[str]) -> None:
    _default.pull(serial, remote, local)


def getprop(serial: str) -> dict[str, str]:
    return _default.getprop(serial)


def sha256(serial: str, remote_path: str) -> str | None:
    return _default.sha256(serial, remote_path)


def push_if_changed(serial: str, local: str | os.PathLike[str], remote: str) -> bool:
    return _default.push_if_changed(serial, local, remote)


def free_bytes(serial: str, path: str) -> int:
    return _default.free_bytes(serial, path)
