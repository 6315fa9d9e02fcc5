"""A failed `adb connect` (issue 13, item 14), through the real adb client and the test session's
own adb server: a host:port that accepts TCP but not the ADB handshake stays in `adb devices` as
"offline" after adb gives up, unless edgeconv disconnects it; and the connect is tried once per
device, not once per artifact."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeconv.bench.adb import Adb, AdbError
from edgeconv.cli.bench import bench
from edgeconv.store import Store
from tests.adb_emulator import IsolatedAdbServer, free_tcp_port
from tests.conftest_adb import EmulatedDevice
from tests.test_android_bench import tinynet  # noqa: F401 - the session's tinynet-e TFLite build

pytest_plugins = ["tests.conftest_adb"]


@pytest.fixture
def logged_adb(adb_server: IsolatedAdbServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This process uses the test adb server through $ADB = a script that appends its arguments to
    a log, then runs the real adb; returns the log."""
    log = tmp_path / "adb-calls.log"
    log.write_text("")
    shim = tmp_path / "adb"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{adb_server.adb}" "$@"\n')
    shim.chmod(0o755)
    for key in ("ANDROID_ADB_SERVER_PORT", "HOME", "ANDROID_USER_HOME", "ADB_MDNS", "ADB_MDNS_AUTO_CONNECT",
                "ADB_LOCAL_TRANSPORT_MAX_PORT"):
        monkeypatch.setenv(key, adb_server.env[key])
    monkeypatch.setenv("ADB", str(shim))
    monkeypatch.delenv("EDGECONV_DEVICES", raising=False)
    monkeypatch.chdir(tmp_path)
    return log


@pytest.fixture
def closing_host() -> Iterator[str]:
    """host:port of a loopback listener that accepts every connection and closes it at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.fixture(params=["closes the connection", "never finishes the handshake", "refuses TCP"])
def refusing_host(request: pytest.FixtureRequest, make_adb_device: Callable[..., EmulatedDevice]) -> str:
    if request.param == "closes the connection":
        return request.getfixturevalue("closing_host")
    if request.param == "never finishes the handshake":
        return make_adb_device(state="offline", connect=False).serial  # the emulator, never answering
    return f"127.0.0.1:{free_tcp_port()}"


def test_the_faults_really_leave_an_offline_device(adb_server: IsolatedAdbServer, closing_host: str) -> None:
    """Without the fix: plain `adb connect` to such a host, then `adb devices` lists it offline."""
    out = adb_server.run("connect", closing_host, timeout=60)
    try:
        assert "failed to connect" in out.stdout + out.stderr
        assert adb_server.state_of(closing_host) == "offline"
    finally:
        adb_server.run("disconnect", closing_host, timeout=15)
    assert adb_server.state_of(closing_host) is None


def test_a_failed_connect_is_disconnected_again(adb_server: IsolatedAdbServer, refusing_host: str) -> None:
    with pytest.raises(AdbError) as caught:
        Adb(env=adb_server.env).connect(refusing_host)
    assert caught.value.kind == "connect_failed" and f"cannot connect to {refusing_host}" in str(caught.value)
    assert adb_server.state_of(refusing_host) is None  # nothing left behind


def test_bench_tries_the_connect_once_and_leaves_nothing(tinynet: Path, adb_server: IsolatedAdbServer,  # noqa: F811 - the imported fixture
                                                         logged_adb: Path, refusing_host: str,
                                                         tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    r = CliRunner().invoke(bench, ["--artifacts", str(tinynet), "--device", "android", "--serial", refusing_host,
                                   "--precisions", "fp32,int8", "--runs", "3", "--warmup", "1", "--db", str(db)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"edgeconv: error: 2 of 2 benchmarks failed; {refusing_host} tflite fp32: cannot connect to {refusing_host}")
    calls = logged_adb.read_text().splitlines()
    assert calls.count(f"connect {refusing_host}") == 1, calls  # two artifacts, one attempt
    assert adb_server.state_of(refusing_host) is None  # no offline device left behind
    with Store(db) as s:  # both artifacts recorded as failed, with the reason
        runs = s.runs()
    assert len(runs) == 2 and all(x["status"] == "failed" and "cannot connect to" in x["error"] for x in runs)
