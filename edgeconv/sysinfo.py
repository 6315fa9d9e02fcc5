"""What a benchmark ran on. Latency is meaningless without the CPU, its ISA extensions (AVX-512 VNNI
or AMX change int8 speed several-fold), the kernel and the frequency governor.

The result is a plain dict with the fields of the store's ``devices`` table, so the Android/board
code can describe a phone or a board in the same shape (``kind``, ``soc``, ``abi``, ...).
Runtime versions come from package metadata: nothing heavy (TensorFlow, torch) is imported.
"""
from __future__ import annotations

import glob
import os
import platform
import socket
from importlib import metadata
from pathlib import Path

# flags worth recording: they decide which kernels XNNPACK / oneDNN / MLAS pick
INTERESTING_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "neon", "asimd", "sve", "i8mm",
                             "bf16", "dotprod", "asimddp", "fphp", "asimdhp", "vnni")
RUNTIME_PACKAGES = ("ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu", "openvino",
                    "onnxruntime", "torch", "numpy")
DEVICE_FIELDS = ("kind", "name", "serial", "cpu_model", "flags", "cores", "kernel", "governor", "soc",
                 "abi", "os_version", "runtime_versions")


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict[str, str]:
    """First value of each key of /proc/cpuinfo (x86: 'model name', 'flags'; ARM: 'Hardware',
    'Features', 'CPU part')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def interesting_flags(flags: str) -> list[str]:
    """The ISA flags that matter for inference speed, sorted."""
    return sorted({f for f in flags.split() if f.startswith(INTERESTING_FLAG_PREFIXES)})


def runtime_versions() -> dict[str, str]:
    """Installed inference runtimes (package metadata only; a missing runtime is just absent)."""
    out = {}
    for name in RUNTIME_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_temperature() -> float | None:
    """Hottest thermal zone in °C, or None where the kernel exposes none (VMs, containers)."""
    temps = []
    for f in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        raw = _read(f)
        if raw and raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000.0)
    return max(temps) if temps else None


def _os_version() -> str:
    try:
        rel = platform.freedesktop_os_release()
        return rel.get("PRETTY_NAME") or f"{rel.get('NAME', '')} {rel.get('VERSION_ID', '')}".strip()
    except OSError:
        return f"{platform.system()} {platform.version()}"


def host_info() -> dict:
    """This machine, as a device record for the results store."""
    cpu = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    model = (cpu.get("model name") or cpu.get("hardware") or cpu.get("cpu model")
             or platform.processor() or platform.machine())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return {
        "kind": "host",
        "name": socket.gethostname(),
        # /etc/machine-id tells two hosts with the same hostname apart (containers, CI)
        "serial": _read("/etc/machine-id") or "",
        "cpu_model": model,
        "flags": interesting_flags(cpu.get("flags") or cpu.get("features") or ""),
        "cores": usable,
        "kernel": platform.release(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "soc": None,
        "abi": platform.machine(),
        "os_version": _os_version(),
        "runtime_versions": runtime_versions(),
    }
