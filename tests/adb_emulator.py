"""A pure-Python ADB *device* (the adbd side) that the real ``adb`` client can drive over TCP.

Why: edgeconv benchmarks models on phones and ARM boards over ADB, and nothing here has a phone.
Mocking ``subprocess.run(["adb", ...])`` would only test our own assumptions about adb, so instead
this module speaks the ADB wire protocol on a loopback port and the *real* adb client and server
(the binary shipped in the adbutils wheel) connect to it with ``adb connect 127.0.0.1:PORT``.
Everything adb really does - the CNXN handshake, stream ids, flow control, the shell v2 framing
with exit codes, the sync protocol for push/pull - is exercised for real.

What the emulated device offers:

* services ``shell:`` (v1 raw stream, stdout and stderr merged, no exit code),
  ``shell,v2[,raw|,pty]:`` (shell protocol packets, exit code in the exit packet), ``exec:`` and
  ``sync:`` (STAT/LST2/STA2, LIST/LIS2, SEND/SND2, RECV/RCV2, QUIT; no compression);
* commands run in a real ``/bin/sh -c`` on the host with device paths (``/data``, ``/sdcard``,
  ``/storage``, ``/sys``) rewritten into the emulator's root directory and mapped back in output;
* a fake big.LITTLE ``/sys/devices/system/cpu`` tree, a thermal zone, and fake ``getprop``,
  ``taskset``, ``df``, ``uname``, ``nproc`` and ``python``/``python3`` (the venv's interpreter, with
  the repo on PYTHONPATH, so ``python -m edgeconv.runner`` works "on the device");
* fault knobs: :meth:`AdbDeviceEmulator.kill_connections`, ``drop_after_bytes``, ``disk_full``,
  ``delay_s``, ``state`` = ``"device"``/``"offline"``/``"unauthorized"``.

**arm64 mode** (``arm64=FOLDER``, a board built by ``tools/arm64_board.py``): the device is an ARM64
Linux board. Every shell command runs inside that Debian arm64 userland under
``proot -q qemu-aarch64-static`` (every instruction is aarch64, executed by QEMU; ``uname -m`` says
aarch64 because QEMU does), with the emulator's sandbox folders bound over the userland's
``/data``, ``/sdcard``, ``/var/tmp`` (boards' workdir) and ``/sys`` (the same fake big.LITTLE cpu
tree), a fake ``/proc/device-tree/model``, and fake ``taskset``/``nproc`` (shell scripts run by the
aarch64 dash) for the 8 fake cores. No getprop: the device is a board. ``arm64_site`` picks the
Python runtime set the board has (``litert``, ``tflite-runtime``, ``openvino``). ``corrupt_output``
makes the device's TFLite runtime return one wrong logit (a ``sitecustomize`` inside the board).
``arm64_cpu`` is the CPU QEMU emulates (``QEMU_CPU``), a Cortex-A76 unless given: with QEMU 7.2's
default ``max`` CPU (every optional extension on), LiteRT's int8 kernels return logits far from
the x86 host's (top-1 agreement 1 of 8 on tinynet-e), while cortex-a72/a76/neoverse-n1 give
bit-identical ones - found by the output parity check. ``arm64_sysfs="host"`` shows the host's
own ``/sys`` instead of the fake 8-core tree: OpenVINO's CPU plugin (2026.4) aborts (``free():
invalid next size``) when /sys describes more CPUs than the process may use.

Only loopback is ever used: the listener binds 127.0.0.1 and :class:`IsolatedAdbServer` runs an adb
server on its own port with mDNS discovery switched off, so nothing is sent to any other address.
Every socket read, thread join and subprocess has a timeout; :meth:`AdbDeviceEmulator.close` stops
all threads and processes it started.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

# --- ADB transport constants (packages/modules/adb/adb.h) -------------------------------------

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453

A_VERSION = 0x01000001  # the version that no longer needs payload checksums
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3

_HEADER = struct.Struct("<6I")  # command, arg0, arg1, data_length, data_crc32, magic

# Shell protocol v2 packet ids (shell_protocol.h).
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW = range(6)

# Sync protocol (file_sync_protocol.h).
SYNC_DATA_MAX = 64 * 1024
_STAT_V1 = struct.Struct("<4sIII")  # id, mode, size, mtime
_STAT_V2 = struct.Struct("<4sIQQIIIIQqqq")  # id, error, dev, ino, mode, nlink, uid, gid, size, a/m/ctime
_DENT_V1 = struct.Struct("<4sIIII")  # id, mode, size, mtime, namelen
_DENT_V2 = struct.Struct("<4sIQQIIIIQqqqI")
_SYNC_HDR = struct.Struct("<4sI")  # id, length (also DATA size, DONE mtime, FAIL msglen)
SYNC_FLAG_DRY_RUN = 0x8000_0000
SYNC_FLAGS_COMPRESSION = 0x7  # brotli | lz4 | zstd: never advertised, always refused

# Features advertised in the CNXN banner. Deliberately NOT the sendrecv_v2_{brotli,lz4,zstd}
# compression features: with them adb 36 compresses pushes (zstd first), and the stdlib cannot
# decompress zstd/lz4/brotli. sendrecv_v2 itself (SND2/RCV2 without compression) is supported.
DEFAULT_FEATURES: tuple[str, ...] = (
    "shell_v2",
    "cmd",
    "stat_v2",
    "ls_v2",
    "fixed_push_mkdir",
    "apex",
    "abb",
    "fixed_push_symlink_timestamp",
    "abb_exec",
    "remount_shell",
    "track_app",
    "sendrecv_v2",
    "sendrecv_v2_dry_run_send",
    "openscreen_mdns",
    "push_sync",
)
# A device that predates Android 7 (no shell_v2, no stat_v2/ls_v2, no sendrecv_v2).
LEGACY_FEATURES: tuple[str, ...] = ("cmd", "fixed_push_mkdir")

DEFAULT_PROPS: dict[str, str] = {
    "ro.product.name": "edgeconv_emu",
    "ro.product.model": "Emulated Phone",
    "ro.product.device": "emuphone",
    "ro.product.manufacturer": "edgeconv",
    "ro.product.brand": "edgeconv",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.board.platform": "kalama",
    "ro.soc.manufacturer": "QTI",
    "ro.soc.model": "SM8550",
    "ro.hardware": "qcom",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint": "edgeconv/emuphone/emuphone:14/UP1A.231005.007/1:user/release-keys",
    "ro.serialno": "EMU0001",
}

# (number of cores, cpuinfo_max_freq in kHz), little cluster first: a 4+3+1 big.LITTLE layout.
DEFAULT_CPU_CLUSTERS: tuple[tuple[int, int], ...] = ((4, 1_800_000), (3, 2_400_000), (1, 3_000_000))

# Device path prefixes that live inside the emulator root (everything else in a shell command
# refers to the host). The lookbehind keeps e.g. "/foo/data" or "x/sys" untouched.
MAPPED_PREFIXES: tuple[str, ...] = ("/data", "/sdcard", "/storage", "/sys")
_MAPPED_RE = re.compile(
    r"(?<![\w.~/-])(" + "|".join(re.escape(p) for p in MAPPED_PREFIXES) + r")(?=/|[^\w.-]|$)"
)
READ_ONLY_PREFIXES: tuple[str, ...] = ("/system", "/vendor", "/proc")
# arm64 mode: the sandbox folders bound into the userland (everything else is the userland's own)
ARM64_BINDS: tuple[str, ...] = ("/data", "/sdcard", "/storage", "/var/tmp", "/sys", "/opt/emu")
ARM64_TOOLS = "/opt/emu/bin"

IO_TIMEOUT_S = 30.0  # longest wait for the host to acknowledge or send anything on one stream
SHELL_TIMEOUT_S = 300.0  # longest a single device-side command may run
_POLL_S = 0.2  # how often blocked loops look at the stop flag


def checksum(payload: bytes) -> int:
    """The legacy ADB 'crc32' field: the byte sum (ignored by A_VERSION >= 0x01000001 peers)."""
    return sum(payload) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, payload: bytes = b"") -> bytes:
    """One ADB transport message: 24-byte header plus payload, magic = command ^ 0xffffffff."""
    header = _HEADER.pack(command, arg0, arg1, len(payload), checksum(payload), command ^ 0xFFFFFFFF)
    return header + payload


def shell_packet(packet_id: int, payload: bytes) -> bytes:
    """One shell-protocol-v2 packet: id byte, little-endian u32 length, payload."""
    return struct.pack("<BI", packet_id, len(payload)) + payload


def _recv_exact(sock: socket.socket, size: int, stop: threading.Event) -> bytes | None:
    """Read exactly ``size`` bytes, or None on EOF/stop; the socket has a short timeout."""
    chunks = bytearray()
    while len(chunks) < size:
        if stop.is_set():
            return None
        try:
            data = sock.recv(size - len(chunks))
        except TimeoutError:
            continue
        except OSError:
            return None
        if not data:
            return None
        chunks += data
    return bytes(chunks)


class StreamClosed(Exception):
    """The host closed the stream, or the transport went away, while a service was using it."""


class DeviceStream:
    """One ADB stream (a service the host OPENed), with ADB's one-write-in-flight flow control.

    The device may send one WRTE and must then wait for the host's OKAY before the next one;
    data the host WRTEs is buffered here and acknowledged at once.
    """

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._cond = threading.Condition()
        self._inbox = bytearray()
        self._can_send = True
        self._remote_closed = False
        self._closed = False
        self._write_lock = threading.Lock()

    # -- called from the connection's reader thread --
    def on_write(self, payload: bytes) -> None:
        with self._cond:
            self._inbox += payload
            self._cond.notify_all()

    def on_okay(self) -> None:
        with self._cond:
            self._can_send = True
            self._cond.notify_all()

    def on_remote_close(self) -> None:
        with self._cond:
            self._remote_closed = True
            self._cond.notify_all()

    # -- called from the service thread --
    @property
    def remote_closed(self) -> bool:
        return self._remote_closed

    def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self._remote_closed or self.conn.dead:
                raise StreamClosed
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"adb host did not answer within {timeout:.0f} s")
            self._cond.wait(min(left, _POLL_S))

    def write(self, data: bytes) -> None:
        """Send ``data`` as WRTE messages no larger than the negotiated max payload."""
        with self._write_lock:
            for start in range(0, len(data), self.conn.max_payload):
                with self._cond:
                    self._wait(lambda: self._can_send, IO_TIMEOUT_S)
                    self._can_send = False
                self.conn.send(
                    A_WRTE, self.local_id, self.remote_id, data[start : start + self.conn.max_payload]
                )

    def read_some(self, timeout: float = IO_TIMEOUT_S) -> bytes:
        """Whatever the host has sent so far (at least one byte), or b"" once it closed the stream."""
        with self._cond:
            try:
                self._wait(lambda: bool(self._inbox), timeout)
            except StreamClosed:
                if not self._inbox:
                    return b""
            data = bytes(self._inbox)
            self._inbox.clear()
            return data

    def read_exact(self, size: int, timeout: float = IO_TIMEOUT_S) -> bytes:
        """Exactly ``size`` bytes; raises StreamClosed if the host closes first."""
        with self._cond:
            self._wait(lambda: len(self._inbox) >= size, timeout)
            data = bytes(self._inbox[:size])
            del self._inbox[:size]
            return data

    def close(self) -> None:
        """Close our side: tell the host (CLSE) unless it already closed or the transport died."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self.conn.forget(self.local_id)
        if not self._remote_closed and not self.conn.dead:
            self.conn.send(A_CLSE, self.local_id, self.remote_id)


class Connection:
    """One TCP transport from the adb server: reads messages, routes them to streams and services."""

    def __init__(self, emulator: AdbDeviceEmulator, sock: socket.socket) -> None:
        self.emu = emulator
        self.sock = sock
        self.sock.settimeout(_POLL_S)
        self.max_payload = MAX_PAYLOAD
        self.dead = False
        self.online = False
        self.host_banner = ""
        self._send_lock = threading.Lock()
        self._streams: dict[int, DeviceStream] = {}
        self._streams_lock = threading.Lock()
        self._next_id = 1
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="adb-emu-conn", daemon=True)

    # -- sending --
    def send(self, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        if self.dead:
            raise StreamClosed
        data = pack_message(command, arg0, arg1, payload)
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.kill()
                raise StreamClosed from exc
        self.emu.count_bytes(len(payload))

    def forget(self, local_id: int) -> None:
        with self._streams_lock:
            self._streams.pop(local_id, None)

    def kill(self) -> None:
        """Drop the TCP connection at once, like a USB cable pulled or Wi-Fi lost."""
        if self.dead:
            return
        self.dead = True
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._streams_lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.on_remote_close()

    # -- receiving --
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                header = _recv_exact(self.sock, _HEADER.size, self._stop)
                if header is None:
                    break
                command, arg0, arg1, length, _crc, magic = _HEADER.unpack(header)
                if magic != command ^ 0xFFFFFFFF or length > 16 * 1024 * 1024:
                    break  # not ADB, or garbage: real adbd drops the transport too
                payload = _recv_exact(self.sock, length, self._stop) if length else b""
                if payload is None:
                    break
                self.emu.count_bytes(length)
                self._dispatch(command, arg0, arg1, payload)
        except StreamClosed:
            pass
        finally:
            self.kill()

    def _dispatch(self, command: int, arg0: int, arg1: int, payload: bytes) -> None:
        if command == A_CNXN:
            self._on_connect(arg1, payload)
        elif command == A_AUTH:
            if self.emu.state == "unauthorized" and arg0 == AUTH_SIGNATURE:
                # Real adbd rejects an unknown key's signature by sending a fresh token; the
                # host then offers its public key (AUTH_RSAPUBLICKEY), which we never accept.
                self.send(A_AUTH, AUTH_TOKEN, 0, secrets.token_bytes(20))
        elif command == A_OPEN and self.online:
            self._on_open(arg0, payload)
        elif command in (A_OKAY, A_WRTE, A_CLSE):
            with self._streams_lock:
                stream = self._streams.get(arg1)
            if stream is None:
                return
            if command == A_OKAY:
                stream.on_okay()
            elif command == A_WRTE:
                stream.on_write(payload)
                self.send(A_OKAY, stream.local_id, stream.remote_id)
            else:
                stream.on_remote_close()

    def _on_connect(self, host_max_payload: int, payload: bytes) -> None:
        self.host_banner = payload.rstrip(b"\0").decode(errors="replace")
        self.max_payload = max(1024, min(MAX_PAYLOAD, host_max_payload))
        if self.emu.state == "offline":
            return  # never finish the handshake: adb shows the device as "offline"
        if self.emu.state == "unauthorized":
            self.send(A_AUTH, AUTH_TOKEN, 0, secrets.token_bytes(20))
            return
        self.online = True
        self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.emu.banner().encode())

    def _on_open(self, remote_id: int, payload: bytes) -> None:
        service = payload.rstrip(b"\0").decode(errors="replace")
        handler = self.emu.service_handler(service)
        if handler is None:
            self.send(A_CLSE, 0, remote_id)  # adbd's answer to an unknown service
            return
        with self._streams_lock:
            local_id = self._next_id
            self._next_id += 1
            stream = DeviceStream(self, local_id, remote_id)
            self._streams[local_id] = stream
        threading.Thread(
            target=self._serve, args=(stream, handler), name=f"adb-emu-{service[:20]}", daemon=True
        ).start()

    def _serve(self, stream: DeviceStream, handler: Callable[[DeviceStream], None]) -> None:
        try:
            if self.emu.delay_s:
                time.sleep(self.emu.delay_s)
            stream.conn.send(A_OKAY, stream.local_id, stream.remote_id)
            handler(stream)
        except (StreamClosed, TimeoutError):
            pass
        finally:
            try:
                stream.close()
            except StreamClosed:
                pass


class _PathUnmapper:
    """Turns emulator-root host paths in command output back into device paths.

    Output arrives in arbitrary chunks, so a tail that could be the start of the root path is
    held back until the next chunk (or the end) decides it.
    """

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.pending = b""

    def feed(self, data: bytes, final: bool = False) -> bytes:
        data = self.pending + data
        self.pending = b""
        if not final:
            for keep in range(min(len(self.root), len(data)), 0, -1):
                if self.root.startswith(data[-keep:]):
                    data, self.pending = data[:-keep], data[-keep:]
                    break
        return data.replace(self.root + b"/", b"/").replace(self.root, b"/")


class AdbDeviceEmulator:
    """An emulated Android device listening on 127.0.0.1:<ephemeral port>.

    Use as a context manager: ``with AdbDeviceEmulator(props={...}) as dev: ...``; ``dev.port`` is
    what to ``adb connect`` to, ``dev.root`` is the host directory that holds the device's
    filesystem (``dev.device_path("/data/local/tmp/x")`` gives the host path of a device path).
    Knobs can be changed while connected: ``state``, ``disk_full``, ``delay_s``,
    ``drop_after_bytes``, ``features``, ``props``.
    """

    def __init__(
        self,
        props: dict[str, str] | None = None,
        *,
        features: Iterable[str] = DEFAULT_FEATURES,
        cpu_clusters: Iterable[tuple[int, int]] = DEFAULT_CPU_CLUSTERS,
        thermal_millicelsius: int = 35_000,
        state: str = "device",
        root: Path | None = None,
        pythonpath: Path | None = None,
        free_bytes: int | None = None,
        arm64: Path | None = None,
        arm64_site: str = "litert",
        arm64_cpu: str | None = None,
        arm64_sysfs: str = "fake",
        corrupt_output: bool = False,
    ) -> None:
        self.props = {**DEFAULT_PROPS, **(props or {})}
        self.features = tuple(features)
        self.cpu_clusters = tuple(cpu_clusters)
        self.thermal_millicelsius = thermal_millicelsius
        self.state = state
        self.disk_full = False
        self.delay_s = 0.0
        self.drop_after_bytes: int | None = None
        self.free_bytes = free_bytes
        self.pythonpath = pythonpath or Path(__file__).resolve().parents[1]
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path()  # a fresh temp dir from start()
        self.port = 0
        self.opened_services: list[str] = []
        self.sync_requests: list[str] = []  # sync ids seen, e.g. "STA2 /data/local/tmp/x"
        self._bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: list[Connection] = []
        self._processes: set[subprocess.Popen[bytes]] = set()
        self.refuse_connections = False
        self.arm64 = Path(arm64) if arm64 is not None else None
        self.arm64_site = arm64_site
        self.arm64_cpu = arm64_cpu  # None: tools/arm64_board.py's QEMU_CPU
        self.arm64_sysfs = arm64_sysfs
        self.corrupt_output = corrupt_output
        if self.arm64 is None and corrupt_output:
            raise ValueError("corrupt_output needs arm64 mode")

    # -- lifecycle --
    def start(self) -> AdbDeviceEmulator:
        """Create the device filesystem and start listening on an ephemeral loopback port."""
        if self._own_root:
            self.root = Path(tempfile.mkdtemp(prefix="adbemu-"))
        self._build_filesystem()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(_POLL_S)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="adb-emu-accept", daemon=True)
        self._accept_thread.start()
        return self

    def close(self) -> None:
        """Stop listening, drop every connection, kill every command still running, remove root."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        self.kill_connections()
        for proc in list(self._processes):
            _kill_process_group(proc)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        for conn in list(self._connections):
            conn.thread.join(timeout=5)
        if self._own_root and self.root != Path():
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AdbDeviceEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def serial(self) -> str:
        """The serial adb gives a device reached with ``adb connect``."""
        return f"127.0.0.1:{self.port}"

    # -- fault injection --
    def kill_connections(self, refuse_new: bool = False) -> None:
        """Cut every transport now (device lost); with ``refuse_new`` it also stays unreachable."""
        if refuse_new:
            self.refuse_connections = True
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.kill()
        for proc in list(self._processes):
            _kill_process_group(proc)

    def count_bytes(self, n: int) -> None:
        """Account transport payload bytes; past ``drop_after_bytes`` the device is lost for good."""
        with self._lock:
            self._bytes += n
            limit = self.drop_after_bytes
            tripped = limit is not None and self._bytes >= limit
            if tripped:
                self.drop_after_bytes = None
        if tripped:
            threading.Thread(target=self.kill_connections, args=(True,), daemon=True).start()

    def reset_byte_count(self) -> None:
        with self._lock:
            self._bytes = 0

    # -- device description --
    def banner(self) -> str:
        """The CNXN banner adbd sends: identity props and the feature list."""
        p = self.props
        return (
            f"device::ro.product.name={p.get('ro.product.name', '')};"
            f"ro.product.model={p.get('ro.product.model', '')};"
            f"ro.product.device={p.get('ro.product.device', '')};"
            f"features={','.join(self.features)}"
        )

    def device_path(self, path: str) -> Path:
        """The host path that backs device path ``path`` (absolute, '/'-separated); in arm64 mode a
        path outside the bound folders is the userland's own (read only)."""
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"refusing '..' in device path {path!r}")
        if self.arm64 is not None and not self.bound(path):
            return (self.arm64 / "root").joinpath(*parts)
        return self.root.joinpath(*parts)

    def bound(self, path: str) -> bool:
        """Whether ``path`` lies in a sandbox folder (arm64 mode: bound into the userland)."""
        clean = "/" + "/".join(part for part in path.split("/") if part not in ("", "."))
        return any(clean == p or clean.startswith(p + "/") for p in ARM64_BINDS)

    @property
    def state_dir(self) -> Path:
        return self.root / ".emu"

    # -- services --
    def service_handler(self, service: str) -> Callable[[DeviceStream], None] | None:
        """The function that serves ``service`` on a stream, or None for an unknown service."""
        self.opened_services.append(service)
        if service.startswith("sync:"):
            return lambda stream: SyncService(self, stream).run()
        if service.startswith("exec:"):
            return lambda stream: self._run_shell(stream, service[5:], v2=False)
        if service.startswith("shell") and ":" in service:
            head, command = service.split(":", 1)
            args = head.split(",")[1:]  # adb 36 sends e.g. "shell,v2,TERM=xterm,raw:CMD"
            return lambda stream: self._run_shell(stream, command, v2="v2" in args)
        return None

    def map_command(self, command: str) -> str:
        """Rewrite device path prefixes in a shell command into the emulator root."""
        root = str(self.root)
        return _MAPPED_RE.sub(lambda m: root + m.group(1), command)

    def shell_env(self) -> dict[str, str]:
        """Environment of device-side commands: fake tools first on PATH, repo on PYTHONPATH."""
        tmp = str(self.device_path("/data/local/tmp"))
        return {
            "PATH": f"{self.device_path('/system/bin')}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(self.pythonpath),
            "HOME": tmp,
            "TMPDIR": tmp,
            "ANDROID_ROOT": "/system",
            "ANDROID_DATA": "/data",
            "EXTERNAL_STORAGE": "/sdcard",
            "LANG": "C.UTF-8",
            "EDGECONV_EMULATED_DEVICE": "1",
        }

    def arm64_argv(self) -> list[str]:
        """``proot -q qemu-aarch64-static -r ROOT -b ...``: the prefix of every arm64 command."""
        from tools.arm64_board import SITE_PACKAGES, proot_argv, site_of

        assert self.arm64 is not None
        binds = [(str(self.root.joinpath(p.lstrip("/"))), p) for p in ARM64_BINDS
                 if p != "/sys" or self.arm64_sysfs == "fake"]
        if self.arm64_sysfs == "host":
            binds.append(("/sys", "/sys"))
        binds.append((str(self.state_dir / "dt_model"), "/proc/device-tree/model"))
        if self.arm64_site != "litert":
            binds.append((str(site_of(self.arm64, self.arm64_site)), "/" + SITE_PACKAGES))
        if self.corrupt_output:
            binds.append((str(self.state_dir / "sitecustomize.py"), "/usr/lib/python3.11/sitecustomize.py"))
        return proot_argv(self.arm64 / "root", binds)

    def arm64_env(self) -> dict[str, str]:
        from tools.arm64_board import QEMU_CPU

        return {"PATH": f"{ARM64_TOOLS}:/usr/local/bin:/usr/bin:/bin", "HOME": "/var/tmp",
                "TMPDIR": "/var/tmp", "LANG": "C.UTF-8", "EDGECONV_EMULATED_DEVICE": "1",
                "QEMU_CPU": self.arm64_cpu or QEMU_CPU}

    def _run_shell(self, stream: DeviceStream, command: str, v2: bool) -> None:
        """Run one command (or an interactive sh) and relay stdio per shell protocol v1 or v2."""
        if self.arm64 is not None:
            argv = [*self.arm64_argv(), "/bin/sh", *(["-c", command] if command else [])]
        else:
            argv = ["/bin/sh", "-c", self.map_command(command)] if command else ["/bin/sh"]
        proc = subprocess.Popen(
            argv,
            cwd=self.root,
            env=self.arm64_env() if self.arm64 is not None else self.shell_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.add(proc)
        try:
            pumps = [
                threading.Thread(
                    target=self._pump_output, args=(proc.stdout, stream, v2, SHELL_STDOUT), daemon=True
                )
            ]
            if v2:
                pumps.append(
                    threading.Thread(
                        target=self._pump_output, args=(proc.stderr, stream, v2, SHELL_STDERR), daemon=True
                    )
                )
            feeder = threading.Thread(target=self._pump_input, args=(stream, proc, v2), daemon=True)
            for thread in (*pumps, feeder):
                thread.start()
            deadline = time.monotonic() + SHELL_TIMEOUT_S
            while proc.poll() is None:
                if stream.remote_closed or stream.conn.dead or time.monotonic() > deadline:
                    _kill_process_group(proc)  # host hung up (adb killed / device lost) or runaway
                    break
                time.sleep(0.02)
            code = proc.wait(timeout=10)
            for thread in pumps:
                thread.join(timeout=10)
            if v2 and not stream.remote_closed:
                status = code if code >= 0 else 128 - code  # killed by signal N -> 128+N, like sh
                stream.write(shell_packet(SHELL_EXIT, bytes([status & 0xFF])))
        finally:
            _kill_process_group(proc)
            self._processes.discard(proc)

    def _pump_output(self, pipe: object, stream: DeviceStream, v2: bool, packet_id: int) -> None:
        unmapper = _PathUnmapper(str(self.root).encode())
        fd = pipe.fileno()  # type: ignore[attr-defined]
        try:
            while True:
                chunk = os.read(fd, 64 * 1024)
                data = unmapper.feed(chunk, final=not chunk)
                if data:
                    stream.write(shell_packet(packet_id, data) if v2 else data)
                if not chunk:
                    return
        except (StreamClosed, TimeoutError, OSError):
            return

    @staticmethod
    def _pump_input(stream: DeviceStream, proc: subprocess.Popen[bytes], v2: bool) -> None:
        """Host -> command stdin; v2 unwraps packets, and CLOSE_STDIN or EOF closes stdin."""
        assert proc.stdin is not None
        buf = b""
        try:
            while proc.poll() is None:
                try:
                    data = stream.read_some(timeout=_POLL_S)
                except TimeoutError:
                    continue
                if not data:
                    break
                if not v2:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                    continue
                buf += data
                while len(buf) >= 5:
                    packet_id, length = struct.unpack("<BI", buf[:5])
                    if len(buf) < 5 + length:
                        break
                    body, buf = buf[5 : 5 + length], buf[5 + length :]
                    if packet_id == SHELL_STDIN:
                        proc.stdin.write(body)
                        proc.stdin.flush()
                    elif packet_id == SHELL_CLOSE_STDIN:
                        proc.stdin.close()
        except (OSError, ValueError, StreamClosed):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    # -- the device filesystem --
    def _build_filesystem(self) -> None:
        for device_dir in ("/data/local/tmp", "/sdcard", "/system/bin", "/storage", "/var/tmp"):
            self.root.joinpath(device_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        cpu_dir = self.device_path("/sys/devices/system/cpu")
        n_cpus = sum(count for count, _ in self.cpu_clusters)
        cpu_range = f"0-{n_cpus - 1}" if n_cpus > 1 else "0"
        for name in ("online", "possible", "present"):
            _write(cpu_dir / name, cpu_range + "\n")
        cpu = 0
        for cluster, (count, max_khz) in enumerate(self.cpu_clusters):
            first = cpu
            for _ in range(count):
                freq = cpu_dir / f"cpu{cpu}" / "cpufreq"
                _write(cpu_dir / f"cpu{cpu}" / "online", "1\n")
                _write(cpu_dir / f"cpu{cpu}" / "topology" / "cluster_id", f"{cluster}\n")
                _write(freq / "cpuinfo_max_freq", f"{max_khz}\n")
                _write(freq / "cpuinfo_min_freq", "300000\n")
                _write(freq / "scaling_max_freq", f"{max_khz}\n")
                _write(freq / "scaling_cur_freq", f"{max_khz}\n")
                _write(freq / "scaling_governor", "schedutil\n")
                _write(freq / "related_cpus", " ".join(str(c) for c in range(first, first + count)) + "\n")
                cpu += 1
        zone = self.device_path("/sys/class/thermal/thermal_zone0")
        _write(zone / "type", "cpu-thermal\n")
        _write(zone / "temp", f"{self.thermal_millicelsius}\n")
        if self.arm64 is not None:
            self._install_arm64_tools()
            return
        self.write_props()
        self._install_tools()

    def _install_arm64_tools(self) -> None:
        """A board's extras: the fake cores' taskset and nproc (run by the board's own aarch64
        dash), a device-tree model, and (``corrupt_output``) a runtime that gets one logit wrong."""
        if not (self.arm64 / "root" / "bin" / "sh").exists():
            raise FileNotFoundError(f"{self.arm64} is not an arm64 board folder (tools/arm64_board.py)")
        tools = self.root / ARM64_TOOLS.lstrip("/")
        tools.mkdir(parents=True, exist_ok=True)
        ncpu = sum(c for c, _ in self.cpu_clusters)
        for name, text in {"taskset": _TASKSET.format(ncpu=ncpu), "nproc": f"#!/bin/sh\necho {ncpu}\n"}.items():
            (tools / name).write_text(text)
            (tools / name).chmod(0o755)
        (self.state_dir / "dt_model").write_text("edgeconv arm64 stand-in (QEMU)\0")
        (self.state_dir / "sitecustomize.py").write_text(_CORRUPT_OUTPUT)

    def write_props(self) -> None:
        """Publish ``self.props`` to the fake getprop (call again after changing props)."""
        (self.state_dir / "props.json").write_text(json.dumps(self.props))

    def _install_tools(self) -> None:
        bin_dir = self.device_path("/system/bin")
        py = sys.executable
        tools = {
            "python": f'#!/bin/sh\nexec "{py}" "$@"\n',
            "getprop": _GETPROP.format(python=py, props=self.state_dir / "props.json"),
            "taskset": _TASKSET.format(ncpu=sum(c for c, _ in self.cpu_clusters)),
            "df": _DF.format(python=py, state=self.state_dir, root=self.root),
            "uname": _UNAME,
            "nproc": f"#!/bin/sh\necho {sum(c for c, _ in self.cpu_clusters)}\n",
        }
        tools["python3"] = tools["python"]
        for name, text in tools.items():
            path = bin_dir / name
            path.write_text(text)
            path.chmod(0o755)
        self.set_free_bytes(self.free_bytes)

    def set_free_bytes(self, free: int | None) -> None:
        """Make the fake ``df`` report ``free`` bytes available (None: the host's real number)."""
        self.free_bytes = free
        knob = self.state_dir / "free_kb"
        if free is None:
            knob.unlink(missing_ok=True)
        else:
            knob.write_text(str(free // 1024))

    # -- accepting --
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refuse_connections:
                sock.close()
                continue
            conn = Connection(self, sock)
            with self._lock:
                self._connections = [c for c in self._connections if not c.dead] + [conn]
            conn.thread.start()


class SyncService:
    """The ``sync:`` service: file stat/list/push/pull inside the emulator root."""

    def __init__(self, emu: AdbDeviceEmulator, stream: DeviceStream) -> None:
        self.emu = emu
        self.stream = stream

    def run(self) -> None:
        while True:
            try:
                header = self.stream.read_exact(_SYNC_HDR.size)
            except StreamClosed:
                return
            ident, length = _SYNC_HDR.unpack(header)
            if ident == b"QUIT":
                return
            if ident not in _SYNC_REQUESTS:
                self.fail(f"unknown sync command {ident!r}")
                return
            path = self.stream.read_exact(length).decode(errors="surrogateescape") if length else ""
            self.emu.sync_requests.append(f"{ident.decode()} {path}")
            if not getattr(self, _SYNC_REQUESTS[ident])(ident, path):
                return

    def fail(self, message: str) -> None:
        data = message.encode()
        self.stream.write(_SYNC_HDR.pack(b"FAIL", len(data)) + data)

    def host(self, path: str) -> Path:
        return self.emu.device_path(path)

    # -- STAT (v1 lstat), LST2 (lstat), STA2 (stat) --
    def do_stat(self, ident: bytes, path: str) -> bool:
        host = self.host(path)
        try:
            st = host.lstat() if ident != b"STA2" else host.stat()
            error = 0
        except OSError as exc:
            st, error = None, exc.errno or errno.EIO
        if ident == b"STAT":
            if st is None:
                self.stream.write(_STAT_V1.pack(b"STAT", 0, 0, 0))
            else:
                self.stream.write(
                    _STAT_V1.pack(b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
                )
        else:
            self.stream.write(_STAT_V2.pack(ident, error, *_stat_fields(st)))
        return True

    # -- LIST / LIS2 --
    def do_list(self, ident: bytes, path: str) -> bool:
        host = self.host(path)
        v2 = ident == b"LIS2"
        try:
            names = sorted(os.listdir(host)) if host.is_dir() else []
        except OSError:
            names = []
        out = bytearray()
        for name in names:
            if host == self.emu.root and name == ".emu":
                continue
            try:
                st = (host / name).lstat()
            except OSError:
                continue
            raw = name.encode(errors="surrogateescape")
            if v2:
                out += _DENT_V2.pack(b"DNT2", 0, *_stat_fields(st), len(raw)) + raw
            else:
                out += (
                    _DENT_V1.pack(b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw))
                    + raw
                )
        done = _DENT_V2.pack(b"DONE", 0, *_stat_fields(None), 0) if v2 else _DENT_V1.pack(b"DONE", 0, 0, 0, 0)
        self.stream.write(bytes(out) + done)
        return True

    # -- SEND / SND2 (push) --
    def do_send(self, ident: bytes, path: str) -> bool:
        flags = 0
        if ident == b"SND2":
            setup_id, mode, flags = struct.unpack("<4sII", self.stream.read_exact(12))
            if setup_id != b"SND2":
                self.fail("protocol fault: bad SND2 setup")
                return False
        else:
            path, _, mode_text = path.rpartition(",")
            mode = int(mode_text or "0") or 0o100644
        if flags & SYNC_FLAGS_COMPRESSION:
            return self._fail_and_drain("compressed transfers are not supported by this device")
        if any(path == p or path.startswith(p + "/") for p in READ_ONLY_PREFIXES) or (
            self.emu.arm64 is not None and not self.emu.bound(path)
        ):
            return self._fail_and_drain("couldn't create file: Read-only file system")
        dry_run = bool(flags & SYNC_FLAG_DRY_RUN)
        target = self.host(path)
        if target.is_dir():
            return self._fail_and_drain("couldn't create file: Is a directory")
        tmp = target.with_name(f".{target.name}.adbemu-partial")
        try:  # the file appears under its name only once complete, like a real atomic push
            if not dry_run:
                target.parent.mkdir(parents=True, exist_ok=True)
            with open(os.devnull if dry_run else tmp, "wb") as out:
                while True:
                    ident2, size = _SYNC_HDR.unpack(self.stream.read_exact(_SYNC_HDR.size))
                    if ident2 == b"DONE":
                        mtime = size
                        break
                    if ident2 != b"DATA" or size > SYNC_DATA_MAX:
                        self.fail("invalid data message")
                        return False
                    data = self.stream.read_exact(size)
                    if self.emu.disk_full:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    out.write(data)
            if not dry_run:
                os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
                os.utime(tmp, (mtime, mtime))
                os.replace(tmp, target)
        except OSError as exc:
            what = "write failed" if exc.errno == errno.ENOSPC else "couldn't create file"
            return self._fail_and_drain(f"{what}: {exc.strerror}")
        finally:
            tmp.unlink(missing_ok=True)  # only left when the transfer did not complete
        self.stream.write(_SYNC_HDR.pack(b"OKAY", 0))
        return True

    def _fail_and_drain(self, message: str) -> bool:
        """Report FAIL, then swallow DATA until DONE as adbd does, and end the sync session."""
        self.fail(message)
        try:
            while True:
                ident, size = _SYNC_HDR.unpack(self.stream.read_exact(_SYNC_HDR.size))
                if ident != b"DATA":
                    break
                self.stream.read_exact(size)
        except (StreamClosed, TimeoutError):
            pass
        return False

    # -- RECV / RCV2 (pull) --
    def do_recv(self, ident: bytes, path: str) -> bool:
        if ident == b"RCV2":
            setup_id, flags = struct.unpack("<4sI", self.stream.read_exact(8))
            if setup_id != b"RCV2" or flags & SYNC_FLAGS_COMPRESSION:
                self.fail("compressed transfers are not supported by this device")
                return False
        try:
            with open(self.host(path), "rb") as src:
                while chunk := src.read(SYNC_DATA_MAX):
                    self.stream.write(_SYNC_HDR.pack(b"DATA", len(chunk)) + chunk)
        except OSError as exc:
            self.fail(f"open failed: {exc.strerror}")
            return True
        self.stream.write(_SYNC_HDR.pack(b"DONE", 0))
        return True


_SYNC_REQUESTS = {
    b"STAT": "do_stat",
    b"LST2": "do_stat",
    b"STA2": "do_stat",
    b"LIST": "do_list",
    b"LIS2": "do_list",
    b"SEND": "do_send",
    b"SND2": "do_send",
    b"RECV": "do_recv",
    b"RCV2": "do_recv",
}


def _stat_fields(st: os.stat_result | None) -> tuple[int, ...]:
    """dev, ino, mode, nlink, uid, gid, size, atime, mtime, ctime for the v2 stat/dent structs."""
    if st is None:
        return (0,) * 10
    return (
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        int(st.st_atime),
        int(st.st_mtime),
        int(st.st_ctime),
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a device command and everything it started (it runs in its own session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# --- fake device tools (installed into <root>/system/bin) ---------------------------------------

_GETPROP = """#!{python} -S
# Android's getprop: no argument lists every property as "[name]: [value]".
import json, sys
props = json.load(open("{props}"))
if len(sys.argv) == 1:
    for key in sorted(props):
        print("[%s]: [%s]" % (key, props[key]))
else:
    print(props.get(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
"""

_TASKSET = """#!/bin/sh
# toybox taskset: "taskset MASK COMMAND..." pins COMMAND; the mask must name an existing CPU.
if [ "$1" = "-p" ]; then echo "pid $2's current affinity mask: ff"; exit 0; fi
mask="$1"; shift
case "$mask" in ''|*[!0-9a-fA-Fx]*) echo "taskset: bad mask '$mask'" >&2; exit 1;; esac
value=$(printf '%d' "0x${{mask#0x}}" 2>/dev/null) || {{ echo "taskset: bad mask '$mask'" >&2; exit 1; }}
if [ "$value" -le 0 ] || [ "$value" -ge $((1 << {ncpu})) ]; then
  echo "taskset: sched_setaffinity: Invalid argument" >&2; exit 1
fi
[ $# -gt 0 ] || {{ echo "usage: taskset MASK COMMAND..." >&2; exit 1; }}
exec "$@"
"""

_DF = """#!{python} -S
# toybox-style "df [-k] PATH...": 1K blocks; the emulator's free_kb knob overrides "Available".
import os, sys
paths = [a for a in sys.argv[1:] if not a.startswith("-")] or ["{root}/data"]
knob = "{state}/free_kb"
print("Filesystem      1K-blocks     Used Available Use% Mounted on")
status = 0
for path in paths:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        sys.stderr.write("df: %s: %s\\n" % (path.replace("{root}", "") or "/", exc.strerror))
        status = 1
        continue
    total = st.f_blocks * st.f_frsize // 1024
    avail = st.f_bavail * st.f_frsize // 1024
    if os.path.exists(knob):
        avail = int(open(knob).read())
    used = max(total - avail, 0)
    mount = "/data" if path.startswith("{root}/data") else "/"
    pct = (100 * used // total) if total else 0
    print("/dev/block/dm-46 %9d %9d %9d %3d%% %s" % (total, used, avail, pct, mount))
sys.exit(status)
"""

_UNAME = """#!/bin/sh
# uname of an arm64 Android kernel.
case "$1" in
  -m) echo aarch64 ;;
  -r) echo 5.15.123-android14-11 ;;
  -a) echo "Linux localhost 5.15.123-android14-11 #1 SMP PREEMPT aarch64 Toybox" ;;
  *) echo Linux ;;
esac
"""


# A broken device runtime (arm64 mode, corrupt_output): the TFLite interpreter's output tensor comes
# back with its element 3 far off. Installed as the board's sitecustomize, so it patches whichever
# of ai_edge_litert / tflite_runtime the runner imports, and nothing on the host.
_CORRUPT_OUTPUT = """
import importlib.abc, sys

def _patch(module):
    cls = module.Interpreter
    original = cls.get_tensor

    def get_tensor(self, index, *args, **kwargs):
        value = original(self, index, *args, **kwargs)
        if index != self.get_output_details()[0]["index"]:
            return value
        import numpy as np
        value = np.array(value, copy=True)
        flat = value.reshape(-1)
        if np.issubdtype(flat.dtype, np.integer):
            info = np.iinfo(flat.dtype)
            flat[3] = info.max if flat[3] < 0 else info.min
        else:
            flat[3] += 10.0 * (float(flat.max()) - float(flat.min())) + 1.0
        return value

    cls.get_tensor = get_tensor

class _Finder(importlib.abc.MetaPathFinder):
    names = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = patched
        return spec

sys.meta_path.insert(0, _Finder())
"""


# --- an adb server of our own ---------------------------------------------------------------------


def find_adb() -> str:
    """The adb client to test with: $ADB, else the binary inside the adbutils wheel, else PATH."""
    if os.environ.get("ADB"):
        return os.environ["ADB"]
    import importlib.util

    spec = importlib.util.find_spec("adbutils")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "binaries" / "adb"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("adb")
    if found:
        return found
    raise FileNotFoundError("no adb binary: install adbutils or set $ADB")


def free_tcp_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class IsolatedAdbServer:
    """An adb server on its own loopback port, with its own HOME/keys/logs and no mDNS.

    Why: tests must never touch a developer's running adb server (port 5037) or their keys,
    and adb's mDNS discovery would send multicast off the machine. ``env`` is the environment
    to run any adb client (or edgeconv's wrapper) against this server.
    """

    def __init__(self, home: Path, adb: str | None = None) -> None:
        self.adb = adb or find_adb()
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ANDROID_", "ADB_")) and k not in ("ADB",)
        }
        env.update(
            ANDROID_ADB_SERVER_PORT=str(self.port),
            HOME=str(self.home),
            ANDROID_USER_HOME=str(self.home / ".android"),
            TMPDIR=str(self.home),  # the server writes its log to $TMPDIR/adb.<uid>.log
            ADB_MDNS="0",
            ADB_MDNS_AUTO_CONNECT="0",
            ADB_LOCAL_TRANSPORT_MAX_PORT="5555",  # scan as few emulator ports as adb allows
            ADB=self.adb,
        )
        self.env = env

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``adb ARGS`` against this server; never waits on stdin, never hangs past timeout."""
        return subprocess.run(
            [self.adb, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> IsolatedAdbServer:
        result = self.run("start-server", timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"adb start-server failed: {result.stderr.strip()}")
        return self

    def connect(self, emulator: AdbDeviceEmulator, wait: bool = True, timeout: float = 20) -> str:
        """``adb connect`` to the emulator; with ``wait``, until adb lists it as ``device``."""
        result = self.run("connect", emulator.serial, timeout=timeout)
        out = result.stdout + result.stderr
        if "connected to" not in out:
            raise RuntimeError(f"adb connect failed: {out.strip()}")
        if wait:
            self.wait_for_state(emulator.serial, "device", timeout=timeout)
        return emulator.serial

    def state_of(self, serial: str) -> str | None:
        """The state ``adb devices`` shows for ``serial`` (None when it is not listed)."""
        for line in self.run("devices", timeout=10).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == serial:
                return fields[1]
        return None

    def wait_for_state(self, serial: str, state: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.state_of(serial)
            if seen == state:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{serial} is {seen!r}, not {state!r}, after {timeout:.0f} s")

    def kill(self) -> None:
        """Stop the server (bounded: a server that ignores kill-server is left to its timeout)."""
        try:
            self.run("kill-server", timeout=15)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> IsolatedAdbServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
