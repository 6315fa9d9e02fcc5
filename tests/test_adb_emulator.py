"""The ADB device emulator, driven by the real adb client (adb 36 from the adbutils wheel).

These tests pin down both that the emulator is a faithful device and what adb itself does with
it (which sync ids it sends, which exit codes it gives), since edgeconv's wrapper relies on that.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

import edgeconv
from tests.adb_emulator import (
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_VERSION,
    A_WRTE,
    DEFAULT_FEATURES,
    LEGACY_FEATURES,
    MAX_PAYLOAD,
    AdbDeviceEmulator,
    checksum,
    pack_message,
)

if TYPE_CHECKING:
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]


def adb(dev: EmulatedDevice, *args: str, timeout: float = 30):
    return dev.server.run("-s", dev.serial, *args, timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition``: the device side reacts to a cut connection asynchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_connect_lists_the_device_with_its_banner_props(
    make_adb_device: Callable[..., EmulatedDevice],
) -> None:
    dev = make_adb_device(props={"ro.product.model": "Pixel 7", "ro.product.device": "panther"})
    listing = dev.server.run("devices", "-l").stdout
    line = next(line for line in listing.splitlines() if line.startswith(dev.serial))
    fields = line.split()
    assert fields[1] == "device"
    assert "model:Pixel_7" in fields  # adb replaces spaces in the model with underscores
    assert "device:panther" in fields
    assert "product:edgeconv_emu" in fields


def test_features_are_what_the_banner_advertises(adb_device: EmulatedDevice) -> None:
    features = set(adb(adb_device, "features").stdout.split())
    assert {"shell_v2", "stat_v2", "ls_v2", "sendrecv_v2", "fixed_push_mkdir"} <= features
    # compression is never advertised: the stdlib cannot decompress zstd/lz4/brotli
    assert not features & {"sendrecv_v2_brotli", "sendrecv_v2_lz4", "sendrecv_v2_zstd"}


def test_shell_v2_separates_streams_and_returns_exit_codes(adb_device: EmulatedDevice) -> None:
    result = adb(adb_device, "shell", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert adb_device.emulator.opened_services[-1] == "shell,v2,TERM=xterm,raw:echo out; echo err >&2; exit 3"
    killed = adb(adb_device, "shell", "kill -9 $$")
    assert killed.returncode == 128 + 9
    assert adb(adb_device, "shell", "printf abc").stdout == "abc"


def test_shell_v2_stdin_reaches_the_command(adb_device: EmulatedDevice) -> None:
    result = subprocess.run(
        [adb_device.server.adb, "-s", adb_device.serial, "shell", "tr a-z A-Z"],
        input=b"hello\n",
        capture_output=True,
        env=adb_device.env,
        timeout=30,
    )
    assert (result.returncode, result.stdout) == (0, b"HELLO\n")


def test_shell_v1_merges_streams_and_always_exits_zero(adb_device: EmulatedDevice) -> None:
    result = adb(adb_device, "shell", "-x", "echo out; echo err >&2; exit 3")
    assert adb_device.emulator.opened_services[-1] == "shell:echo out; echo err >&2; exit 3"
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\nerr\n", "")


def test_device_without_shell_v2_gets_v1_services(make_adb_device: Callable[..., EmulatedDevice]) -> None:
    dev = make_adb_device(features=LEGACY_FEATURES)
    result = adb(dev, "shell", "echo hi; exit 5")
    assert dev.emulator.opened_services[-1] == "shell:echo hi; exit 5"
    assert (result.returncode, result.stdout) == (0, "hi\n")  # v1: the exit code is lost


def _read_message(sock: socket.socket) -> tuple[int, int, int, bytes]:
    header = b""
    while len(header) < 24:
        chunk = sock.recv(24 - len(header))
        assert chunk, "emulator closed the connection"
        header += chunk
    command, arg0, arg1, length, crc, magic = struct.unpack("<6I", header)
    assert magic == command ^ 0xFFFFFFFF
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    assert crc == checksum(payload)
    return command, arg0, arg1, payload


def test_raw_protocol_handshake_stream_ids_and_v1_shell() -> None:
    """A hand-written host: checks ids, magic and checksums that adb would silently tolerate."""
    with AdbDeviceEmulator() as emu, socket.create_connection(("127.0.0.1", emu.port), timeout=10) as sock:
        sock.sendall(pack_message(A_CNXN, A_VERSION, 4096, b"host::features=shell_v2\0"))
        command, version, maxdata, banner = _read_message(sock)
        assert (command, version, maxdata) == (A_CNXN, A_VERSION, MAX_PAYLOAD)
        assert banner.startswith(b"device::ro.product.name=edgeconv_emu;") and b"features=shell_v2," in banner
        sock.sendall(pack_message(A_OPEN, 77, 0, b"shell:echo hi; echo there >&2\0"))
        command, local_id, remote_id, _ = _read_message(sock)
        assert (command, remote_id) == (A_OKAY, 77) and local_id != 0
        received = b""
        while True:
            command, arg0, arg1, payload = _read_message(sock)
            assert (arg0, arg1) == (local_id, 77)
            if command == A_CLSE:
                break
            assert command == A_WRTE
            received += payload
            sock.sendall(pack_message(A_OKAY, 77, local_id))
        assert received == b"hi\nthere\n"
        sock.sendall(pack_message(A_OPEN, 78, 0, b"no-such-service:\0"))
        assert _read_message(sock)[:3] == (A_CLSE, 0, 78)


@pytest.mark.parametrize("legacy", [False, True], ids=["sendrecv_v2", "sync_v1"])
def test_push_pull_round_trip_of_3_mb(
    make_adb_device: Callable[..., EmulatedDevice], tmp_path, legacy: bool
) -> None:
    dev = make_adb_device(features=LEGACY_FEATURES if legacy else DEFAULT_FEATURES)
    data = os.urandom(3 * 1024 * 1024 + 123)
    local = tmp_path / "model.tflite"
    local.write_bytes(data)
    os.chmod(local, 0o750)
    os.utime(local, (1_600_000_000, 1_600_000_000))
    remote = "/data/local/tmp/new dir/model.tflite"
    assert adb(dev, "push", str(local), remote).returncode == 0
    stored = dev.device_path(remote)
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert stored.stat().st_mtime == 1_600_000_000 and stored.stat().st_mode & 0o777 == 0o750
    back = tmp_path / "back.bin"
    assert adb(dev, "pull", remote, str(back)).returncode == 0
    assert back.read_bytes() == data
    ids = [request.split(" ", 1)[0] for request in dev.emulator.sync_requests]
    assert ids == (["STAT", "SEND", "STAT", "RECV"] if legacy else ["STA2", "SND2", "STA2", "RCV2"])


def test_small_files_use_send_v1_even_with_sendrecv_v2(adb_device: EmulatedDevice, tmp_path) -> None:
    local = tmp_path / "small.txt"
    local.write_text("tiny")
    assert adb(adb_device, "push", str(local), "/data/local/tmp/").returncode == 0
    assert adb_device.emulator.sync_requests[-1] == f"SEND /data/local/tmp/small.txt,{0o100644 | 0}"
    assert adb_device.device_path("/data/local/tmp/small.txt").read_text() == "tiny"


def test_pull_of_missing_file_fails(adb_device: EmulatedDevice, tmp_path) -> None:
    result = adb(adb_device, "pull", "/data/local/tmp/absent", str(tmp_path / "x"))
    assert result.returncode == 1 and "No such file or directory" in result.stderr


def test_getprop_answers_from_the_props_dict(make_adb_device: Callable[..., EmulatedDevice]) -> None:
    dev = make_adb_device(props={"ro.soc.model": "Tensor G2"})
    assert adb(dev, "shell", "getprop ro.soc.model").stdout == "Tensor G2\n"
    assert adb(dev, "shell", "getprop no.such.prop").stdout == "\n"
    listing = adb(dev, "shell", "getprop").stdout
    assert "[ro.product.cpu.abi]: [arm64-v8a]\n" in listing
    dev.emulator.props["ro.build.version.release"] = "15"
    dev.emulator.write_props()
    assert adb(dev, "shell", "getprop ro.build.version.release").stdout == "15\n"


def test_fake_big_little_cpu_tree_and_thermal_zone(adb_device: EmulatedDevice) -> None:
    freqs = adb(
        adb_device, "shell", "cat /sys/devices/system/cpu/cpu[0-7]/cpufreq/cpuinfo_max_freq"
    ).stdout.split()
    assert freqs == ["1800000"] * 4 + ["2400000"] * 3 + ["3000000"]
    assert (
        adb(adb_device, "shell", "cat /sys/devices/system/cpu/online /sys/devices/system/cpu/possible").stdout
        == "0-7\n0-7\n"
    )
    assert adb(adb_device, "shell", "cat /sys/class/thermal/thermal_zone0/temp").stdout == "35000\n"
    assert adb(adb_device, "shell", "nproc; uname -m").stdout == "8\naarch64\n"


def test_taskset_pins_existing_cpus_only(adb_device: EmulatedDevice) -> None:
    assert adb(adb_device, "shell", "taskset f0 echo pinned").stdout == "pinned\n"
    bad = adb(adb_device, "shell", "taskset 100 echo never")  # cpu8 does not exist
    assert bad.returncode == 1 and "Invalid argument" in bad.stderr and bad.stdout == ""


def test_device_paths_map_into_the_emulator_root_and_back(adb_device: EmulatedDevice) -> None:
    result = adb(
        adb_device, "shell", "pwd; cd /data/local/tmp && pwd && echo x > made_here && ls -d $PWD/made_here"
    )
    assert result.stdout == "/\n/data/local/tmp\n/data/local/tmp/made_here\n"
    assert adb_device.device_path("/data/local/tmp/made_here").read_text() == "x\n"
    assert str(adb_device.root) not in result.stdout


def test_python_is_the_venv_interpreter_with_the_repo_importable(adb_device: EmulatedDevice) -> None:
    result = adb(
        adb_device, "shell", "python3 -c 'import sys, edgeconv; print(sys.prefix); print(edgeconv.__file__)'"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [sys.prefix, edgeconv.__file__]


def test_disk_full_fails_the_push_and_leaves_no_partial_file(adb_device: EmulatedDevice, tmp_path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(300_000))
    adb_device.emulator.disk_full = True
    result = adb(adb_device, "push", str(local), "/data/local/tmp/big.bin")
    assert result.returncode == 1
    assert "remote write failed: No space left on device" in result.stderr
    assert list(adb_device.device_path("/data/local/tmp").iterdir()) == []


def test_device_lost_mid_shell_kills_the_command(adb_device: EmulatedDevice) -> None:
    emu = adb_device.emulator
    threading.Timer(1.0, emu.kill_connections, kwargs={"refuse_new": True}).start()
    started = time.monotonic()
    result = adb(adb_device, "shell", "echo $$ > /data/local/tmp/pid; echo start; sleep 20; echo end")
    assert time.monotonic() - started < 10
    assert (result.returncode, result.stdout) == (255, "start\n")  # adb's code for "no exit packet"
    pid = int(adb_device.device_path("/data/local/tmp/pid").read_text())
    assert wait_until(lambda: not _alive(pid)), "the device-side command survived the lost connection"
    assert adb_device.server.state_of(adb_device.serial) == "offline"


def test_device_lost_mid_push(adb_device: EmulatedDevice, tmp_path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    adb_device.emulator.reset_byte_count()
    adb_device.emulator.drop_after_bytes = 1_000_000
    result = adb(adb_device, "push", str(local), "/data/local/tmp/big.bin")
    assert result.returncode == 1 and "failed to read copy response" in result.stderr
    tmp_dir = adb_device.device_path("/data/local/tmp")
    assert wait_until(lambda: not list(tmp_dir.iterdir())), "a partial file was left behind"
    adb_device.server.wait_for_state(adb_device.serial, "offline", timeout=10)


def test_unauthorized_device(make_adb_device: Callable[..., EmulatedDevice]) -> None:
    dev = make_adb_device(connect=False, state="unauthorized")
    connect = dev.server.run("connect", dev.serial)
    assert (connect.returncode, connect.stdout) == (0, f"failed to authenticate to {dev.serial}\n")
    dev.server.wait_for_state(dev.serial, "unauthorized", timeout=10)
    result = adb(dev, "shell", "echo hi")
    assert result.returncode == 1 and result.stderr.startswith("adb: device unauthorized.")
    assert dev.emulator.opened_services == []


def test_offline_device_never_finishing_the_handshake(adb_device: EmulatedDevice) -> None:
    adb_device.emulator.state = "offline"
    adb_device.emulator.kill_connections()  # adb reconnects, and the new CNXN is never answered
    adb_device.server.wait_for_state(adb_device.serial, "offline", timeout=10)
    result = adb(adb_device, "shell", "echo hi")
    assert (result.returncode, result.stderr) == (1, "adb: device offline\n")


def test_delay_knob_slows_every_service(adb_device: EmulatedDevice) -> None:
    adb_device.emulator.delay_s = 0.6
    started = time.monotonic()
    assert adb(adb_device, "shell", "echo late").stdout == "late\n"
    assert time.monotonic() - started >= 0.6


def test_exec_out_is_binary_clean(adb_device: EmulatedDevice) -> None:
    payload = bytes(range(256)) * 64 + b"\r\n\x00"
    adb_device.device_path("/data/local/tmp/blob").write_bytes(payload)
    result = subprocess.run(
        [adb_device.server.adb, "-s", adb_device.serial, "exec-out", "cat /data/local/tmp/blob"],
        capture_output=True,
        env=adb_device.env,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert adb_device.emulator.opened_services[-1] == "exec:cat /data/local/tmp/blob"
    assert (result.returncode, result.stdout) == (0, payload)
