"""edgeconv.bench.adb against the emulated device, through the real adb client and server."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edgeconv.bench import adb as adbmod
from edgeconv.bench.adb import Adb, AdbError, Device, ShellResult, _parse_device_line, find_adb
from edgeconv.errors import UserError
from tests.adb_emulator import LEGACY_FEATURES, IsolatedAdbServer, free_tcp_port

if TYPE_CHECKING:
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]

HOSTILE_ARGS = [
    "/data/local/tmp/dir with spaces/model file.tflite",
    "$(touch /data/local/tmp/pwned)",
    "`touch /data/local/tmp/pwned`",
    "; rm -rf /data/local/tmp/keep",
    'it\'s "quoted" & | > /data/local/tmp/pwned',
    "new\nline",
    "*",
    "",
]


@pytest.fixture(params=["shell_v2", "shell_v1"])
def any_device(
    request: pytest.FixtureRequest, make_adb_device: Callable[..., EmulatedDevice]
) -> EmulatedDevice:
    """A modern device (shell v2 exit codes) and an old one (v1: exit code parsed from a marker)."""
    return make_adb_device() if request.param == "shell_v2" else make_adb_device(features=LEGACY_FEATURES)


def client(dev: EmulatedDevice, **kwargs: object) -> Adb:
    return Adb(env=dev.env, **kwargs)  # type: ignore[arg-type]


def assert_one_line(error: AdbError, kind: str) -> None:
    assert isinstance(error, UserError)
    assert error.kind == kind, str(error)
    assert "\n" not in str(error) and str(error).strip() == str(error) and str(error)


def test_every_argument_reaches_the_device_literally(any_device: EmulatedDevice) -> None:
    keep = any_device.device_path("/data/local/tmp/keep")
    keep.write_text("still here")
    result = client(any_device).shell(any_device.serial, ["printf", "[%s]\\n", *HOSTILE_ARGS])
    assert result.exit_code == 0
    assert result.stdout == "".join(f"[{arg}]\n" for arg in HOSTILE_ARGS)
    assert not any_device.device_path("/data/local/tmp/pwned").exists()
    assert keep.read_text() == "still here"


def test_exit_codes_with_and_without_shell_v2(any_device: EmulatedDevice) -> None:
    v2 = "shell_v2" in any_device.emulator.features
    result = client(any_device).shell(any_device.serial, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert result == (ShellResult(7, "out\n", "err\n") if v2 else ShellResult(7, "out\nerr\n", ""))
    assert client(any_device).shell(any_device.serial, ["exit", "4"]).exit_code == 4  # v1: runs in a subshell
    assert client(any_device).shell(any_device.serial, ["printf", "no newline"]) == ShellResult(
        0, "no newline", ""
    )


def test_check_turns_a_failing_command_into_one_line(adb_device: EmulatedDevice) -> None:
    with pytest.raises(AdbError) as caught:
        client(adb_device).shell(adb_device.serial, ["ls", "/data/local/tmp/missing"], check=True)
    assert_one_line(caught.value, "command_failed")
    assert "exit code" in str(caught.value) and "No such file" in str(caught.value)


def test_push_if_changed_pushes_once_then_skips(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    adb = client(adb_device)
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(200_000))
    remote = "/data/local/tmp/edgeconv/model v1.tflite"
    assert adb.push_if_changed(adb_device.serial, local, remote) is True
    assert adb.push_if_changed(adb_device.serial, local, remote) is False
    sends = [r for r in adb_device.emulator.sync_requests if r.startswith(("SND2", "SEND"))]
    assert len(sends) == 1
    local.write_bytes(os.urandom(200_000))
    assert adb.push_if_changed(adb_device.serial, local, remote) is True
    assert adb_device.device_path(remote).read_bytes() == local.read_bytes()


def test_sha256_of_present_and_missing_files(adb_device: EmulatedDevice) -> None:
    data = b"weights" * 1000
    adb_device.device_path("/data/local/tmp/a b.bin").write_bytes(data)
    adb = client(adb_device)
    assert adb.sha256(adb_device.serial, "/data/local/tmp/a b.bin") == hashlib.sha256(data).hexdigest()
    assert adb.sha256(adb_device.serial, "/data/local/tmp/absent.bin") is None


def test_push_and_pull_round_trip(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    adb = client(adb_device)
    local = tmp_path / "in.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    adb.push(adb_device.serial, local, "/data/local/tmp/x/in.bin")
    adb.pull(adb_device.serial, "/data/local/tmp/x/in.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == local.read_bytes()


def test_getprop_returns_all_properties(make_adb_device: Callable[..., EmulatedDevice]) -> None:
    dev = make_adb_device(props={"ro.product.model": "Pixel 8 Pro", "ro.board.platform": "zuma"})
    props = client(dev).getprop(dev.serial)
    assert props["ro.product.model"] == "Pixel 8 Pro"
    assert props["ro.board.platform"] == "zuma"
    assert props["ro.product.cpu.abi"] == "arm64-v8a"
    assert props == dev.emulator.props


def test_free_bytes_reads_df(adb_device: EmulatedDevice) -> None:
    adb_device.emulator.set_free_bytes(123 * 1024 * 1024)
    assert client(adb_device).free_bytes(adb_device.serial, "/data/local/tmp") == 123 * 1024 * 1024
    adb_device.emulator.set_free_bytes(None)  # the host's real free space, through the same parser
    real = shutil.disk_usage(adb_device.root).free
    assert abs(client(adb_device).free_bytes(adb_device.serial, "/data/local/tmp") - real) < 64 * 1024 * 1024


def test_devices_lists_model_and_state(adb_device: EmulatedDevice) -> None:
    listed = {d.serial: d for d in client(adb_device).devices()}
    device = listed[adb_device.serial]
    assert (device.state, device.model, device.device, device.ready) == (
        "device",
        "Emulated_Phone",
        "emuphone",
        True,
    )
    assert device.transport_id is not None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("List of devices attached", None),
        ("emulator-5554\tdevice", Device("emulator-5554", "device")),
        (
            "R58M12ABCDE            device usb:1-1 product:beyond1lteeea model:SM_G973F device:beyond1"
            " transport_id:3",
            Device("R58M12ABCDE", "device", "beyond1lteeea", "SM_G973F", "beyond1", 3),
        ),
        (
            "192.168.1.20:5555      unauthorized transport_id:7",
            Device("192.168.1.20:5555", "unauthorized", transport_id=7),
        ),
        (
            "0123456789ABCDEF       no permissions (missing udev rules? user is in the plugdev group); "
            "see [http://developer.android.com/tools/device.html] usb:1-2 transport_id:2",
            Device("0123456789ABCDEF", "no permissions", transport_id=2),
        ),
    ],
)
def test_parse_device_line(line: str, expected: Device | None) -> None:
    assert _parse_device_line(line) == expected


def test_connect_success_already_connected_and_failures(
    make_adb_device: Callable[..., EmulatedDevice],
) -> None:
    dev = make_adb_device(connect=False)
    adb = client(dev)
    assert adb.connect(dev.serial) == dev.serial
    assert adb.connect(dev.serial) == dev.serial  # "already connected to ..." is success too
    closed_port = f"127.0.0.1:{free_tcp_port()}"
    with pytest.raises(AdbError) as caught:
        adb.connect(closed_port)
    assert_one_line(caught.value, "connect_failed")
    assert "Connection refused" in str(caught.value)


def test_connect_to_unauthorized_device(make_adb_device: Callable[..., EmulatedDevice]) -> None:
    dev = make_adb_device(connect=False, state="unauthorized")
    with pytest.raises(AdbError) as caught:
        client(dev).connect(dev.serial)
    assert_one_line(caught.value, "unauthorized")


def test_unauthorized_device_error(make_adb_device: Callable[..., EmulatedDevice]) -> None:
    dev = make_adb_device(state="unauthorized")
    dev.server.wait_for_state(dev.serial, "unauthorized", timeout=10)
    with pytest.raises(AdbError) as caught:
        client(dev).shell(dev.serial, ["echo", "hi"])
    assert_one_line(caught.value, "unauthorized")
    with pytest.raises(AdbError) as caught:
        client(dev).require_ready(dev.serial)
    assert_one_line(caught.value, "unauthorized")


def test_offline_and_not_found_errors(adb_device: EmulatedDevice) -> None:
    adb = client(adb_device)
    with pytest.raises(AdbError) as caught:
        adb.shell("127.0.0.1:1", ["true"])
    assert_one_line(caught.value, "not_found")
    adb.shell(adb_device.serial, ["true"])  # features cached while online
    adb_device.emulator.kill_connections(refuse_new=True)
    adb_device.server.wait_for_state(adb_device.serial, "offline", timeout=10)
    for fresh_or_cached in (adb, client(adb_device)):  # cached features, and `adb features` failing
        with pytest.raises(AdbError) as caught:
            fresh_or_cached.shell(adb_device.serial, ["true"])
        assert_one_line(caught.value, "offline")


def test_no_device_at_all(tmp_path: Path) -> None:
    with IsolatedAdbServer(tmp_path / "home") as server:
        adb = Adb(env=server.env)
        assert adb.devices() == []
        with pytest.raises(AdbError) as caught:
            adb.features("")  # no -s: adb must pick "the" device
        assert_one_line(caught.value, "no_device")


def test_device_lost_mid_shell(any_device: EmulatedDevice) -> None:
    adb = client(any_device)
    adb.features(any_device.serial)
    threading.Timer(0.8, any_device.emulator.kill_connections, kwargs={"refuse_new": True}).start()
    with pytest.raises(AdbError) as caught:
        adb.shell(any_device.serial, ["sh", "-c", "echo started; sleep 20"])
    assert_one_line(caught.value, "device_lost")
    assert any_device.serial in str(caught.value)


def test_remote_exit_255_is_not_mistaken_for_a_lost_device(adb_device: EmulatedDevice) -> None:
    assert client(adb_device).shell(adb_device.serial, ["sh", "-c", "exit 255"]).exit_code == 255


def test_device_lost_during_push(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    adb_device.emulator.reset_byte_count()
    adb_device.emulator.drop_after_bytes = 500_000
    with pytest.raises(AdbError) as caught:
        client(adb_device).push(adb_device.serial, local, "/data/local/tmp/big.bin")
    assert_one_line(caught.value, "device_lost")


def test_disk_full_push(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(100_000))
    adb_device.emulator.disk_full = True
    with pytest.raises(AdbError) as caught:
        client(adb_device).push_if_changed(adb_device.serial, local, "/data/local/tmp/model.tflite")
    assert_one_line(caught.value, "no_space")
    assert "no space left on" in str(caught.value)


def test_pull_of_missing_file(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    with pytest.raises(AdbError) as caught:
        client(adb_device).pull(adb_device.serial, "/data/local/tmp/none.txt", tmp_path / "none.txt")
    assert_one_line(caught.value, "transfer_failed")
    assert "No such file or directory" in str(caught.value)


def test_push_of_missing_local_file(adb_device: EmulatedDevice, tmp_path: Path) -> None:
    with pytest.raises(AdbError) as caught:
        client(adb_device).push(adb_device.serial, tmp_path / "nope.tflite", "/data/local/tmp/nope.tflite")
    assert_one_line(caught.value, "local_missing")


def test_timeout(adb_device: EmulatedDevice) -> None:
    adb = client(adb_device, timeout=1.0)
    adb.features(adb_device.serial)
    adb_device.emulator.delay_s = 5
    with pytest.raises(AdbError) as caught:
        adb.shell(adb_device.serial, ["echo", "slow"])
    assert_one_line(caught.value, "timeout")
    assert "timed out after 1 s" in str(caught.value)


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(AdbError) as caught:
        Adb(env={"ADB": str(tmp_path / "no-adb"), "PATH": ""}).devices()
    assert_one_line(caught.value, "missing_binary")


def test_find_adb_order(tmp_path: Path) -> None:
    fake = tmp_path / "adb"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_adb({"ADB": str(fake), "PATH": ""}) == str(fake)
    assert find_adb({"PATH": str(tmp_path)}) == str(fake)
    bundled = find_adb({"PATH": str(tmp_path / "empty")})
    assert bundled.endswith("adbutils/binaries/adb") and os.access(bundled, os.X_OK)


def test_module_functions_follow_the_process_environment(
    adb_device: EmulatedDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in adb_device.env.items():
        monkeypatch.setenv(key, value)
    assert adb_device.serial in {d.serial for d in adbmod.devices()}
    assert adbmod.shell(adb_device.serial, ["getprop", "ro.product.cpu.abi"]) == ShellResult(
        0, "arm64-v8a\n", ""
    )
