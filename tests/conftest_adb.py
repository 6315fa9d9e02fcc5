"""pytest fixtures for tests that need an Android device: the emulated device of adb_emulator.py,
reached through the real adb client and an adb server of the test session's own.

Load with ``pytest_plugins = ["tests.conftest_adb"]`` (in tests/conftest.py or in a test
module; pytest registers it once either way). Fixtures:

* ``adb_server`` (session): an :class:`IsolatedAdbServer` - own port, own HOME and keys, no mDNS;
  killed with ``adb kill-server`` when the session ends.
* ``make_adb_device`` (function): factory ``make_adb_device(connect=True, **emulator_kwargs)``
  returning an :class:`EmulatedDevice` (connected and in state ``device`` unless the emulator
  was made ``offline``/``unauthorized``); every device it made is disconnected and stopped after
  the test.
* ``adb_device`` (function): one default emulated phone, connected and in state ``device``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.adb_emulator import AdbDeviceEmulator, IsolatedAdbServer
except ImportError:  # loaded as plain "conftest_adb" with tests/ itself on sys.path
    from adb_emulator import AdbDeviceEmulator, IsolatedAdbServer  # type: ignore[no-redef]


@dataclass
class EmulatedDevice:
    """An emulated device plus the adb server that knows it."""

    emulator: AdbDeviceEmulator
    server: IsolatedAdbServer

    @property
    def serial(self) -> str:
        return self.emulator.serial

    @property
    def env(self) -> dict[str, str]:
        """Environment under which any adb client talks to this device's server."""
        return self.server.env

    @property
    def root(self) -> Path:
        return self.emulator.root

    def device_path(self, path: str) -> Path:
        return self.emulator.device_path(path)


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedAdbServer]:
    server = IsolatedAdbServer(tmp_path_factory.mktemp("adb-home")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def make_adb_device(adb_server: IsolatedAdbServer) -> Iterator[Callable[..., EmulatedDevice]]:
    made: list[AdbDeviceEmulator] = []

    def make(connect: bool = True, **emulator_kwargs: Any) -> EmulatedDevice:
        emulator = AdbDeviceEmulator(**emulator_kwargs).start()
        made.append(emulator)
        if connect and emulator.state == "device":
            adb_server.connect(emulator)
        elif connect:  # adb connect "fails" for offline/unauthorized devices, by design
            adb_server.run("connect", emulator.serial, timeout=30)
        return EmulatedDevice(emulator, adb_server)

    yield make
    for emulator in made:
        adb_server.run("disconnect", emulator.serial, timeout=15)
        emulator.close()


@pytest.fixture
def adb_device(make_adb_device: Callable[..., EmulatedDevice]) -> EmulatedDevice:
    return make_adb_device()
