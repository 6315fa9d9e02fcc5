"""Device profiles (``devices/*.yaml``): how to reach a phone or ARM board over ADB and how to
benchmark on it - which runner binary per runtime and ABI, which cores, how long to cool down.

A profile is validated when it is loaded; every problem is one line naming the file and the field
(``devices/p40.yaml: field 'cores': must be big, little, all or a hex CPU mask like f0``).
``--device android`` picks, per attached device, the most specific profile whose ``match``
patterns all match the device's properties (``ro.product.model``, ``ro.board.platform``, ...),
falling back to the generic profile of the device's kind. ``--device NAME`` names a profile.

Also here, because profiles and the flow both need them: core clusters from ``cpuinfo_max_freq``,
``taskset`` masks (hex: older toybox ``taskset`` has no ``-c``) and the ABI of an ELF runner.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .formats import REMOTE_RUNTIMES

ABIS = ("arm64-v8a", "armeabi-v7a", "x86_64", "x86")
KINDS = ("android", "board")
CORE_CHOICES = ("big", "little", "all")
DEFAULT_WORKDIR = "/data/local/tmp/edgeconv"
DEFAULT_COOLDOWN_S = 30.0
DEFAULT_MARGIN_C = 2.0
ENV_PROFILES = "EDGECONV_DEVICES"  # extra profile folders (os.pathsep-separated), searched first
PYTHON_RUNNERS = ("python", "python3")  # runner specs meaning `python -m edgeconv.runner`
DEVICE_PREFIX = "device:"  # runner spec: a binary already on the device, never pushed

# `uname -m` -> Android ABI name (armv8l: a 32-bit userland on a 64-bit kernel)
UNAME_ABI = {"aarch64": "arm64-v8a", "arm64": "arm64-v8a", "armv8l": "armeabi-v7a",
             "armv7l": "armeabi-v7a", "armv7": "armeabi-v7a", "x86_64": "x86_64", "i686": "x86",
             "i386": "x86"}
# ELF (EI_CLASS, e_machine) -> ABI
_ELF_ABI = {(2, 183): "arm64-v8a", (1, 40): "armeabi-v7a", (2, 62): "x86_64", (1, 3): "x86"}
_ELF_MACHINE = {183: "aarch64", 40: "arm", 62: "x86-64", 3: "x86", 243: "riscv"}

_FIELDS = ("name", "description", "kind", "match", "transport", "abi", "workdir", "runners",
           "runner_args", "cores", "cooldown", "cooldown_margin_c", "thermal_zones", "clusters")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_MASK = re.compile(r"^(?:0x)?[0-9a-fA-F]+$")


class ProfileError(UserError):
    """A device profile is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Profile:
    """One validated ``devices/*.yaml``."""

    name: str
    path: Path | None = None
    description: str = ""
    kind: str = "android"
    match: Mapping[str, str] = field(default_factory=dict)  # property -> regex (full match, any case)
    serial: str | None = None  # transport: an adb serial ...
    connect: str | None = None  # ... or host:port for `adb connect`
    abi: str | None = None  # what the runners are built for (None: the device's own)
    workdir: str = DEFAULT_WORKDIR
    runners: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # runtime -> abi -> spec
    runner_args: Mapping[str, Sequence[str]] = field(default_factory=dict)  # runtime -> extra flags
    cores: str = "big"
    cooldown: float = DEFAULT_COOLDOWN_S  # seconds: the longest wait for the idle temperature
    cooldown_margin_c: float = DEFAULT_MARGIN_C  # "near idle": at most this much above it
    thermal_zones: Sequence[str] | None = None  # temperature files; None: found automatically
    clusters: Sequence[Mapping[str, Any]] = ()  # expected clusters (documentation, checked)

    @property
    def generic(self) -> bool:
        return not self.match and self.serial is None and self.connect is None

    @property
    def transport(self) -> str | None:
        return self.connect or self.serial

    def runner_for(self, runtime: str, abis: Sequence[str]) -> tuple[str, str] | None:
        """(spec, abi) of the first runner for ``runtime`` matching one of ``abis`` (in order)."""
        table = self.runners.get(runtime, {})
        return next(((table[abi], abi) for abi in abis if abi in table), None)


def _check(cond: bool, where: str, name: str, message: str) -> None:
    if not cond:
        raise ProfileError(f"{where}: field '{name}': {message}")


def _text(value: Any, where: str, name: str) -> str:
    _check(isinstance(value, str) and value.strip() != "", where, name, "must be a non-empty string")
    return value


def _number(value: Any, where: str, name: str) -> float:
    _check(isinstance(value, int | float) and not isinstance(value, bool) and value >= 0, where, name,
           "must be a number >= 0")
    return float(value)


def _mapping(value: Any, where: str, name: str) -> Mapping[str, Any]:
    _check(isinstance(value, dict), where, name, "must be a mapping")
    return value


def _device_path(value: Any, where: str, name: str) -> str:
    text = _text(value, where, name)
    _check(text.startswith("/") and ".." not in text.split("/"), where, name,
           f"must be an absolute device path without '..', not {text!r}")
    return text


def check_cores(value: str, where: str | None = None) -> str:
    """``big``/``little``/``all`` or a hex CPU mask (``f0``, ``0x80``); returns it lower-cased.
    ``where`` names the profile file for the error message (default: the ``--cores`` option)."""
    text = str(value).strip().lower()
    if text in CORE_CHOICES or (_MASK.match(text) is not None and int(text, 16) > 0):
        return text
    reason = f"must be big, little, all or a hex CPU mask like f0, not {value!r}"
    if where is None:
        raise UserError(f"--cores: {reason}")
    raise ProfileError(f"{where}: field 'cores': {reason}")


def _runners(value: Any, where: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for runtime, per_abi in _mapping(value, where, "runners").items():
        _check(runtime in REMOTE_RUNTIMES, where, f"runners.{runtime}",
               f"unknown runtime (choose from {', '.join(REMOTE_RUNTIMES)})")
        out[runtime] = {}
        for abi, spec in _mapping(per_abi, where, f"runners.{runtime}").items():
            _check(abi in ABIS, where, f"runners.{runtime}.{abi}", f"unknown ABI (choose from {', '.join(ABIS)})")
            out[runtime][abi] = _text(spec, where, f"runners.{runtime}.{abi}")
    return out


def _runner_args(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    out = {}
    for runtime, args in _mapping(value, where, "runner_args").items():
        key = f"runner_args.{runtime}"
        _check(runtime in REMOTE_RUNTIMES, where, key, f"unknown runtime (choose from {', '.join(REMOTE_RUNTIMES)})")
        _check(isinstance(args, list) and all(isinstance(a, str) for a in args), where, key,
               "must be a list of strings")
        out[runtime] = tuple(args)
    return out


def _clusters(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    _check(isinstance(value, list), where, "clusters", "must be a list")
    out = []
    for i, cluster in enumerate(value):
        key = f"clusters[{i}]"
        cluster = _mapping(cluster, where, key)
        unknown = sorted(set(cluster) - {"cores", "max_ghz", "core", "source"})
        _check(not unknown, where, key, f"unknown key {unknown[:1]} (known: cores, max_ghz, core, source)")
        _check(isinstance(cluster.get("cores"), int) and cluster["cores"] >= 1, where, f"{key}.cores",
               "must be a whole number >= 1")
        _check(_number(cluster.get("max_ghz", -1), where, f"{key}.max_ghz") > 0, where, f"{key}.max_ghz",
               "must be > 0")
        out.append(dict(cluster))
    return tuple(out)


def _transport(value: Any, where: str) -> tuple[str | None, str | None]:
    transport = _mapping(value, where, "transport")
    keys = set(transport)
    _check(len(keys) == 1 and keys <= {"serial", "connect"}, where, "transport",
           "must have exactly one of 'serial' (an adb serial) or 'connect' (host:port)")
    if "connect" in transport:
        address = _text(transport["connect"], where, "transport.connect")
        _check(_HOST_PORT.match(address) is not None, where, "transport.connect",
               f"must be host:port, not {address!r}")
        return None, address
    return _text(transport["serial"], where, "transport.serial"), None


def parse_profile(data: Any, where: str, default_name: str) -> Profile:
    """Validate one profile's YAML data; ``where`` names it in error messages."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: must be a YAML mapping of fields")
    unknown = [k for k in data if k not in _FIELDS]
    if unknown:
        raise ProfileError(f"{where}: unknown field '{unknown[0]}' (known: {', '.join(_FIELDS)})")
    kw: dict[str, Any] = {"name": _text(data.get("name", default_name), where, "name")}
    _check(re.fullmatch(r"[A-Za-z0-9][\w.\-]*", kw["name"]) is not None, where, "name",
           "must be letters, digits, '.', '_' or '-'")
    if "description" in data:
        kw["description"] = _text(data["description"], where, "description")
    if "kind" in data:
        _check(data["kind"] in KINDS, where, "kind", f"must be one of {', '.join(KINDS)}")
        kw["kind"] = data["kind"]
    if "match" in data:
        match = {}
        for prop, pattern in _mapping(data["match"], where, "match").items():
            try:
                re.compile(_text(pattern, where, f"match.{prop}"))
            except re.error as e:
                raise ProfileError(f"{where}: field 'match.{prop}': not a valid regex ({e})") from None
            match[str(prop)] = pattern
        kw["match"] = match
    if "transport" in data:
        kw["serial"], kw["connect"] = _transport(data["transport"], where)
    if "abi" in data:
        _check(data["abi"] in ABIS, where, "abi", f"must be one of {', '.join(ABIS)}, not {data['abi']!r}")
        kw["abi"] = data["abi"]
    if "workdir" in data:
        kw["workdir"] = _device_path(data["workdir"], where, "workdir").rstrip("/") or "/"
    if "runners" in data:
        kw["runners"] = _runners(data["runners"], where)
    if "runner_args" in data:
        kw["runner_args"] = _runner_args(data["runner_args"], where)
    if "cores" in data:
        kw["cores"] = check_cores(str(data["cores"]), where)
    for key in ("cooldown", "cooldown_margin_c"):
        if key in data:
            kw[key] = _number(data[key], where, key)
    zones = data.get("thermal_zones", "auto")
    if zones != "auto":
        _check(isinstance(zones, list) and bool(zones), where, "thermal_zones",
               "must be 'auto' or a non-empty list of device paths")
        kw["thermal_zones"] = tuple(_device_path(z, where, f"thermal_zones[{i}]") for i, z in enumerate(zones))
    if "clusters" in data:
        kw["clusters"] = _clusters(data["clusters"], where)
    return Profile(**kw)


def load_profile(path: str | Path) -> Profile:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ProfileError(f"{path}: cannot read the profile ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        line = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise ProfileError(f"{path}: not valid YAML{line} ({getattr(e, 'problem', None) or e})") from None
    profile = parse_profile(data, str(path), path.stem)
    return Profile(**{**profile.__dict__, "path": path})


def profile_dirs() -> list[Path]:
    """Where profiles are looked up: $EDGECONV_DEVICES, ./devices, then the profiles shipped with
    edgeconv (see :mod:`edgeconv.resources`)."""
    from .resources import bundled_dir

    env = [Path(p) for p in os.environ.get(ENV_PROFILES, "").split(os.pathsep) if p]
    found: list[Path] = []
    for d in (*env, Path.cwd() / "devices", bundled_dir("devices")):
        if d.is_dir() and d.resolve() not in [f.resolve() for f in found]:
            found.append(d)
    return found


def load_profiles(dirs: Iterable[Path] | None = None) -> list[Profile]:
    """Every profile in ``dirs`` (default :func:`profile_dirs`); an earlier folder's profile hides a
    later one of the same name. Any invalid file is an error (never silently skipped)."""
    by_name: dict[str, Profile] = {}
    for d in profile_dirs() if dirs is None else dirs:
        for path in sorted(Path(d).glob("*.yaml")):
            profile = load_profile(path)
            by_name.setdefault(profile.name, profile)
    return list(by_name.values())


def find_profile(name: str, dirs: Iterable[Path] | None = None) -> Profile:
    """The profile called ``name``, or the profile file at path ``name``."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return load_profile(name)
    profiles = load_profiles(dirs)
    for profile in profiles:
        if profile.name == name:
            return profile
    known = ", ".join(sorted(p.name for p in profiles)) or "none"
    raise ProfileError(f"--device {name}: not host, android, board or a profile in devices/ (profiles: {known})")


def matches(profile: Profile, props: Mapping[str, str]) -> bool:
    return all(re.fullmatch(pattern, props.get(prop, ""), re.I) for prop, pattern in profile.match.items())


def match_profile(kind: str, props: Mapping[str, str], profiles: Sequence[Profile]) -> Profile | None:
    """The most specific profile of ``kind`` whose ``match`` fits ``props`` (a profile with a
    transport applies only to its own device: pass it explicitly)."""
    fitting = [p for p in profiles if p.kind == kind and p.transport is None and matches(p, props)]
    fitting.sort(key=lambda p: (-len(p.match), p.name))
    return fitting[0] if fitting else None


# ------------------------------------------------------------------------------------------------
# cores
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cpu:
    index: int
    max_khz: int | None
    governor: str | None = None


def parse_cpus(text: str) -> list[Cpu]:
    """Lines ``cpuN MAX_KHZ GOVERNOR`` (``-`` for unreadable) -> Cpus sorted by index."""
    cpus = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"cpu\d+", parts[0]):
            khz = int(parts[1]) if parts[1].isdigit() else None
            gov = parts[2] if len(parts) > 2 and parts[2] != "-" else None
            cpus.append(Cpu(int(parts[0][3:]), khz, gov))
    return sorted(cpus, key=lambda c: c.index)


def clusters(cpus: Sequence[Cpu]) -> list[dict[str, Any]]:
    """Cores grouped by max frequency, slowest first: [{"cpus": "0-3", "count": 4, "max_mhz": 1800}]."""
    by_freq: dict[int | None, list[int]] = {}
    for cpu in cpus:
        by_freq.setdefault(cpu.max_khz, []).append(cpu.index)
    return [{"cpus": cpu_list(ids), "count": len(ids), "max_mhz": None if khz is None else khz // 1000}
            for khz, ids in sorted(by_freq.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0))]


def cluster_mismatch(profile: Profile, groups: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the detected clusters differ from the ones the profile documents (None if they agree
    within 50 MHz, or the profile documents none)."""
    if not profile.clusters:
        return None
    want = sorted(((c["cores"], float(c["max_ghz"])) for c in profile.clusters), key=lambda c: (c[1], c[0]))
    got = sorted(((g["count"], (g["max_mhz"] or 0) / 1000) for g in groups), key=lambda c: (c[1], c[0]))
    if len(want) == len(got) and all(w[0] == g[0] and abs(w[1] - g[1]) <= 0.05 for w, g in zip(want, got, strict=True)):
        return None
    expected = " + ".join(f"{n}x{ghz:.2f}" for n, ghz in want) + " GHz"
    return f"profile {profile.name} documents {expected}, the device has {describe_clusters(groups)}"


def describe_clusters(groups: Sequence[Mapping[str, Any]]) -> str:
    """``4x1.80 + 3x2.40 + 1x3.00 GHz`` (``?`` where a core has no cpufreq)."""
    if not groups:
        return "?"
    parts = [f"{g['count']}x{g['max_mhz'] / 1000:.2f}" if g["max_mhz"] else f"{g['count']}x?" for g in groups]
    return " + ".join(parts) + " GHz"


def cpu_list(ids: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5' (the host harness's notation)."""
    from .bench.host import cpuset_str

    return cpuset_str(ids)


def select_cores(selection: str, cpus: Sequence[Cpu]) -> tuple[list[int], str]:
    """(cpu indices, hex taskset mask) for ``big``/``little``/``all``/a hex mask.

    ``big`` is the cores with the highest cpuinfo_max_freq (the prime core when there is one),
    ``little`` those with the lowest. Without cpufreq every core counts as big and little.
    """
    if not cpus:
        raise UserError("cannot pin: the device lists no CPUs under /sys/devices/system/cpu")
    present = [c.index for c in cpus]
    if selection in CORE_CHOICES:
        known = [c for c in cpus if c.max_khz is not None]
        if selection == "all" or not known:
            chosen = present
        else:
            target = max if selection == "big" else min
            best = target(c.max_khz for c in known)
            chosen = [c.index for c in known if c.max_khz == best]
    else:
        value = int(selection, 16)
        chosen = [i for i in range(value.bit_length()) if value >> i & 1]
        missing = sorted(set(chosen) - set(present))
        if missing:
            raise UserError(f"--cores {selection}: the device has no CPU {cpu_list(missing)} "
                            f"(CPUs {cpu_list(present)})")
    return chosen, format(sum(1 << i for i in chosen), "x")


# ------------------------------------------------------------------------------------------------
# runner ABI
# ------------------------------------------------------------------------------------------------
def elf_abi(path: str | Path) -> tuple[str | None, str] | None:
    """(ABI or None, machine name) of an ELF executable; None when the file is not ELF (a script)."""
    with open(path, "rb") as f:
        return elf_header_abi(f.read(20))


def elf_header_abi(head: bytes) -> tuple[str | None, str] | None:
    """:func:`elf_abi` of the first 20 bytes of a file."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    ei_class, little = head[4], head[5] == 1
    machine = int.from_bytes(head[18:20], "little" if little else "big")
    return _ELF_ABI.get((ei_class, machine)), _ELF_MACHINE.get(machine, f"machine {machine}") + (
        "" if ei_class == 2 else " 32-bit")


def compatible_abis(primary: str | None, abilist: str | None) -> list[str]:
    """The device's ABIs, preferred first (``ro.product.cpu.abilist`` or just the primary one)."""
    abis = [a.strip() for a in (abilist or "").split(",") if a.strip()]
    if primary and primary not in abis:
        abis.insert(0, primary)
    return abis


# ------------------------------------------------------------------------------------------------
# emulation
# ------------------------------------------------------------------------------------------------
_FAMILY = {"arm64-v8a": "ARM", "armeabi-v7a": "ARM", "x86_64": "x86", "x86": "x86"}


def cpuinfo_family(lines: Sequence[str]) -> str | None:
    """The instruction set /proc/cpuinfo describes: x86 (``vendor_id``), ARM (``CPU implementer``,
    ``CPU architecture``), RISC-V (``isa``); None when it says nothing we know."""
    keys = {line.split(":", 1)[0].strip().lower() for line in lines if ":" in line}
    if "vendor_id" in keys:
        return "x86"
    if keys & {"cpu implementer", "cpu architecture"}:
        return "ARM"
    if "isa" in keys:
        return "RISC-V"
    return None


def detect_emulation(props: Mapping[str, str], machine: str | None, sh_elf: bytes | None,
                     cpuinfo: Sequence[str]) -> str | None:
    """Why a device is not real hardware running its own instructions, or None when nothing says
    so: Android's emulator flag (``ro.kernel.qemu``/``ro.boot.qemu``), a shell binary of another
    instruction set than the CPU that /proc/cpuinfo describes (user-mode emulation: QEMU), or an
    ``uname -m`` that disagrees with the shell binary (a stand-in)."""
    for prop in ("ro.kernel.qemu", "ro.boot.qemu"):
        if props.get(prop, "").strip() == "1":
            return f"Android emulator ({prop}=1)"
    found = elf_header_abi(sh_elf) if sh_elf else None
    if found is None:
        return None
    abi, elf_machine = found
    sh_family = _FAMILY.get(abi or "", "RISC-V" if elf_machine == "riscv" else None)
    cpu_family = cpuinfo_family(cpuinfo)
    if sh_family and cpu_family and sh_family != cpu_family:
        return (f"its shell is {elf_machine} code but /proc/cpuinfo describes an {cpu_family} CPU: "
                "instruction-set emulation (e.g. QEMU user mode)")
    uname_family = _FAMILY.get(UNAME_ABI.get(machine or "", ""))
    if sh_family and uname_family and sh_family != uname_family:
        return f"uname -m says {machine} but its shell is {elf_machine} code"
    return None
