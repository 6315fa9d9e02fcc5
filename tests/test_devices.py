"""Device profiles (devices/*.yaml: validation, matching), core clusters and taskset masks, runner
ABI detection, and `edgeconv devices` against emulated phones and a board."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from click.testing import CliRunner

from edgeconv.cli.bench import devices
from edgeconv.devices import (
    Cpu,
    ProfileError,
    check_cores,
    cluster_mismatch,
    clusters,
    elf_abi,
    find_profile,
    load_profile,
    load_profiles,
    match_profile,
    parse_profile,
    select_cores,
)
from edgeconv.errors import UserError
from tests.test_android_bench import adb_env  # noqa: F401 - this process on the test adb server

if TYPE_CHECKING:
    from tests.conftest_adb import EmulatedDevice

pytest_plugins = ["tests.conftest_adb"]

REPO = Path(__file__).resolve().parents[1]
EMULATED = [Cpu(i, khz, "schedutil") for i, khz in enumerate([1_800_000] * 4 + [2_400_000] * 3 + [3_000_000])]
KIRIN = {"ro.board.platform": "kirin990", "ro.product.model": "ANA-NX9", "ro.soc.model": "",
         "ro.soc.manufacturer": "", "ro.hardware": "kirin990"}
KIRIN_CLUSTERS = ((4, 1_950_000), (2, 2_360_000), (2, 2_860_000))


def test_shipped_profiles_load_and_say_what_they_are() -> None:
    profiles = {p.name: p for p in load_profiles([REPO / "devices"])}
    assert sorted(profiles) == ["generic-android", "generic-arm64-linux", "huawei-p40"]
    android, board, p40 = profiles["generic-android"], profiles["generic-arm64-linux"], profiles["huawei-p40"]
    assert android.generic and board.generic and not p40.generic
    assert (android.kind, android.workdir, android.cores, android.cooldown) == (
        "android", "/data/local/tmp/edgeconv", "big", 30.0)
    assert android.runner_for("tflite", ["arm64-v8a"]) == ("runners/android_aarch64_benchmark_model", "arm64-v8a")
    assert android.runner_for("tflite", ["armeabi-v7a"])[0] == "runners/android_arm_benchmark_model"
    assert (board.kind, board.abi, board.workdir) == ("board", "arm64-v8a", "/var/tmp/edgeconv")
    assert board.runner_for("openvino", ["arm64-v8a"]) == ("python", "arm64-v8a")
    assert [(c["cores"], c["max_ghz"]) for c in p40.clusters] == [(4, 1.95), (2, 2.36), (2, 2.86)]
    assert "EXAMPLE" in p40.description and "UNVERIFIED" in (REPO / "devices" / "huawei-p40.yaml").read_text()


def test_the_most_specific_matching_profile_applies() -> None:
    profiles = load_profiles([REPO / "devices"])
    assert match_profile("android", {"ro.product.model": "Pixel 8"}, profiles).name == "generic-android"
    assert match_profile("android", KIRIN, profiles).name == "huawei-p40"
    assert match_profile("android", {**KIRIN, "ro.product.model": "NOH-NX9"}, profiles).name == "generic-android"
    assert match_profile("board", {}, profiles).name == "generic-arm64-linux"
    assert match_profile("board", {}, [p for p in profiles if p.kind == "android"]) is None


@pytest.mark.parametrize("data, error", [
    ({"colour": "red"}, "unknown field 'colour' (known: name, description, kind, match, transport, abi, "
                        "workdir, runners, runner_args, cores, cooldown, cooldown_margin_c, thermal_zones, clusters)"),
    ({"kind": "phone"}, "field 'kind': must be one of android, board"),
    ({"abi": "arm64"}, "field 'abi': must be one of arm64-v8a, armeabi-v7a, x86_64, x86, not 'arm64'"),
    ({"cores": "fast"}, "field 'cores': must be big, little, all or a hex CPU mask like f0, not 'fast'"),
    ({"cores": "0"}, "field 'cores': must be big, little, all or a hex CPU mask like f0, not '0'"),
    ({"cooldown": -5}, "field 'cooldown': must be a number >= 0"),
    ({"cooldown": "30s"}, "field 'cooldown': must be a number >= 0"),
    ({"workdir": "data/local/tmp"}, "field 'workdir': must be an absolute device path without '..', not "
                                    "'data/local/tmp'"),
    ({"workdir": "/data/../etc"}, "field 'workdir': must be an absolute device path without '..', not "
                                  "'/data/../etc'"),
    ({"match": {"ro.product.model": "Pixel ("}}, "field 'match.ro.product.model': not a valid regex "
                                                 "(missing ), unterminated subpattern at position 6)"),
    ({"transport": {"serial": "X", "connect": "h:1"}}, "field 'transport': must have exactly one of 'serial' "
                                                       "(an adb serial) or 'connect' (host:port)"),
    ({"transport": {"connect": "192.168.1.7"}}, "field 'transport.connect': must be host:port, not '192.168.1.7'"),
    ({"runners": {"onnxruntime": {}}}, "field 'runners.onnxruntime': unknown runtime (choose from tflite, openvino)"),
    ({"runners": {"tflite": {"aarch64": "bm"}}}, "field 'runners.tflite.aarch64': unknown ABI (choose from "
                                                 "arm64-v8a, armeabi-v7a, x86_64, x86)"),
    ({"runners": {"tflite": {"arm64-v8a": ""}}}, "field 'runners.tflite.arm64-v8a': must be a non-empty string"),
    ({"runner_args": {"tflite": "--use_gpu=true"}}, "field 'runner_args.tflite': must be a list of strings"),
    ({"thermal_zones": []}, "field 'thermal_zones': must be 'auto' or a non-empty list of device paths"),
    ({"thermal_zones": ["temp"]}, "field 'thermal_zones[0]': must be an absolute device path without '..', "
                                  "not 'temp'"),
    ({"clusters": [{"cores": 2, "max_ghz": 0}]}, "field 'clusters[0].max_ghz': must be > 0"),
    ({"clusters": [{"cores": 2, "max_ghz": 2.8, "mhz": 1}]}, "field 'clusters[0]': unknown key ['mhz'] (known: "
                                                            "cores, max_ghz, core, source)"),
    ({"name": "my phone"}, "field 'name': must be letters, digits, '.', '_' or '-'"),
])
def test_invalid_profiles_are_one_line_errors_naming_file_and_field(tmp_path: Path, data: dict,
                                                                    error: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", **data}))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value) == f"{path}: {error}"
    with pytest.raises(ProfileError):  # a bad file is never silently skipped
        load_profiles([tmp_path])


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nrunners: [unclosed\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml: not valid YAML at line 3 \("):
        load_profile(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match=r"list\.yaml: must be a YAML mapping of fields$"):
        load_profile(listing)
    with pytest.raises(ProfileError, match=r"nope\.yaml: cannot read the profile \(No such file or directory\)$"):
        load_profile(tmp_path / "nope.yaml")


def test_find_profile_by_name_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "mine"
    own.mkdir()
    (own / "generic-android.yaml").write_text("name: generic-android\ncooldown: 5\n")
    monkeypatch.setenv("EDGECONV_DEVICES", str(own))
    assert find_profile("generic-android").cooldown == 5.0  # $EDGECONV_DEVICES comes first
    assert find_profile("huawei-p40").path == REPO / "devices" / "huawei-p40.yaml"
    assert find_profile(str(own / "generic-android.yaml")).cooldown == 5.0
    with pytest.raises(ProfileError, match=r"^--device pixel: not host, android, board or a profile in devices/ "
                       r"\(profiles: generic-android, generic-arm64-linux, huawei-p40\)$"):
        find_profile("pixel")


def test_big_little_all_and_masks() -> None:
    assert select_cores("big", EMULATED) == ([7], "80")
    assert select_cores("little", EMULATED) == ([0, 1, 2, 3], "f")
    assert select_cores("all", EMULATED) == (list(range(8)), "ff")
    assert select_cores(check_cores("0xC0"), EMULATED) == ([6, 7], "c0")
    kirin = [Cpu(i, khz) for i, khz in enumerate([1_950_000] * 4 + [2_360_000] * 2 + [2_860_000] * 2)]
    assert select_cores("big", kirin) == ([6, 7], "c0")
    with pytest.raises(UserError, match=r"^--cores 300: the device has no CPU 8-9 \(CPUs 0-7\)$"):
        select_cores("300", EMULATED)
    no_cpufreq = [Cpu(i, None) for i in range(4)]
    assert select_cores("big", no_cpufreq) == ([0, 1, 2, 3], "f")
    assert clusters(EMULATED) == [{"cpus": "0-3", "count": 4, "max_mhz": 1800},
                                  {"cpus": "4-6", "count": 3, "max_mhz": 2400},
                                  {"cpus": "7", "count": 1, "max_mhz": 3000}]
    p40 = find_profile("huawei-p40")
    assert cluster_mismatch(p40, clusters(kirin)) is None
    assert cluster_mismatch(p40, clusters(EMULATED)) == ("profile huawei-p40 documents 4x1.95 + 2x2.36 + 2x2.86 "
                                                         "GHz, the device has 4x1.80 + 3x2.40 + 1x3.00 GHz")


def test_elf_abi_of_runner_binaries(tmp_path: Path) -> None:
    host = elf_abi(os.path.realpath(shutil.which("true")))
    assert host == ("x86_64", "x86-64") or host == ("arm64-v8a", "aarch64")
    for name, ei_class, machine, want in (("a64", 2, 183, ("arm64-v8a", "aarch64")),
                                          ("a32", 1, 40, ("armeabi-v7a", "arm 32-bit")),
                                          ("rv", 2, 243, (None, "riscv"))):
        path = tmp_path / name
        path.write_bytes(b"\x7fELF" + bytes([ei_class, 1, 1]) + bytes(9) + (2).to_bytes(2, "little")
                         + machine.to_bytes(2, "little") + bytes(40))
        assert elf_abi(path) == want
    script = tmp_path / "runner.sh"
    script.write_text("#!/bin/sh\nexec benchmark_model \"$@\"\n")
    assert elf_abi(script) is None


def test_profile_data_without_a_file() -> None:
    profile = parse_profile({"transport": {"connect": "[::1]:5555"}, "cores": "F0"}, "inline", "lab-phone")
    assert (profile.name, profile.connect, profile.transport, profile.cores) == ("lab-phone", "[::1]:5555",
                                                                                 "[::1]:5555", "f0")
    assert not profile.generic


def test_devices_command_lists_phones_boards_and_unready_devices(
        make_adb_device: Callable[..., EmulatedDevice], adb_env: Path) -> None:  # noqa: F811
    phone = make_adb_device()
    kirin_clusters = make_adb_device(props=KIRIN, cpu_clusters=KIRIN_CLUSTERS)
    kirin_odd = make_adb_device(props=KIRIN)  # the profile's documented clusters do not fit
    board = make_adb_device()
    board.device_path("/system/bin/getprop").unlink()
    locked = make_adb_device(state="unauthorized")
    r = CliRunner().invoke(devices, ["--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    rows = {row["serial"]: row for row in json.loads(r.stdout)}
    assert rows[phone.serial] == {
        "serial": phone.serial, "state": "device", "kind": "android", "model": "Emulated Phone",
        "soc": "QTI SM8550 (kalama)", "os": "Android 14 (API 34)", "abi": "arm64-v8a",
        "clusters": "4x1.80 + 3x2.40 + 1x3.00 GHz", "profile": "generic-android", "note": None,
        "emulated": True, "emulation": "uname -m says aarch64 but its shell is x86-64 code"}
    assert (rows[kirin_clusters.serial]["profile"], rows[kirin_clusters.serial]["note"]) == ("huawei-p40", None)
    assert rows[kirin_clusters.serial]["clusters"] == "4x1.95 + 2x2.36 + 2x2.86 GHz"
    assert rows[kirin_odd.serial]["note"].startswith("profile huawei-p40 documents 4x1.95 + 2x2.36 + 2x2.86 GHz")
    assert (rows[board.serial]["kind"], rows[board.serial]["abi"], rows[board.serial]["profile"]) == (
        "board", "arm64-v8a", "generic-arm64-linux")
    assert rows[locked.serial] == {"serial": locked.serial, "state": "unauthorized"}

    table = CliRunner().invoke(devices, ["--serial", kirin_odd.serial, "--serial", "127.0.0.1:1"],
                               catch_exceptions=False)
    assert table.exit_code == 0
    assert "huawei-p40" in table.stdout and "not found" in table.stdout
    assert f"edgeconv: warning: {kirin_odd.serial}: profile huawei-p40 documents" in table.stderr
    assert f"edgeconv: warning: {kirin_odd.serial} is emulated (uname -m says aarch64 but its shell is " \
        "x86-64 code): its timings are not those of real hardware" in table.stderr
    qemu_phone = make_adb_device(props={"ro.kernel.qemu": "1"})
    (row,) = json.loads(CliRunner().invoke(devices, ["--serial", qemu_phone.serial, "--json"]).stdout)
    assert (row["emulated"], row["emulation"]) == (True, "Android emulator (ro.kernel.qemu=1)")


def test_devices_command_with_none_attached(adb_env: Path) -> None:  # noqa: F811
    r = CliRunner().invoke(devices, [], catch_exceptions=False)
    assert (r.exit_code, r.stdout) == (0, "")
    assert r.stderr == ("no ADB devices (`adb devices` lists none): plug one in with USB debugging on, or "
                        "`adb connect HOST:PORT`\n")


def test_emulation_is_detected_from_real_binaries_and_cpuinfo() -> None:
    """This host is real (its shell is x86-64 code, /proc/cpuinfo an x86 CPU); an aarch64 shell on
    that CPU is user-mode emulation; a shell that contradicts uname is a stand-in; Android's
    emulator says so itself."""
    from edgeconv.devices import cpuinfo_family, detect_emulation

    host_sh = Path(os.path.realpath("/bin/sh")).read_bytes()[:20]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    machine = os.uname().machine
    assert detect_emulation({}, machine, host_sh, cpuinfo) is None
    family = cpuinfo_family(cpuinfo)
    assert family == {"x86_64": "x86", "aarch64": "ARM"}.get(machine, family)
    other = host_sh[:18] + (183 if machine == "x86_64" else 62).to_bytes(2, "little")  # EM_AARCH64 / EM_X86_64
    reason = detect_emulation({}, "aarch64", other, cpuinfo) if machine == "x86_64" else None
    if machine == "x86_64":
        assert reason == ("its shell is aarch64 code but /proc/cpuinfo describes an x86 CPU: instruction-set "
                          "emulation (e.g. QEMU user mode)")
        assert detect_emulation({}, "aarch64", host_sh, cpuinfo) == "uname -m says aarch64 but its shell is x86-64 code"
    assert detect_emulation({"ro.kernel.qemu": "1"}, machine, host_sh, cpuinfo) == "Android emulator (ro.kernel.qemu=1)"
    assert detect_emulation({}, machine, None, []) is None  # nothing known: not claimed either way
