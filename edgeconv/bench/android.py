"""Benchmarks on Android phones and ARM boards over ADB, with the TinyNet paper's protocol (batch 1,
one thread, 1000 timed runs averaged), one worker thread per device, all devices in parallel.

Per device: check it is reachable; read its properties, CPU clusters and thermal zones; pick its
profile (``devices/*.yaml``); then per artifact: push the runner and the model only when their
sha256 differs from the device's copy (after checking the free space); wait until the device is
back near its idle temperature (at most ``cooldown`` seconds); run the runner pinned with a hex
``taskset`` mask (older toybox has no ``taskset -c``)::

    taskset MASK benchmark_model --graph=M --num_threads=1 --num_runs=1000 --warmup_runs=50
        --min_secs=0 --max_secs=LIMIT --use_xnnpack=true

``--num_runs`` is only a minimum and ``--max_secs`` (150 s by default) silently cuts slow models
short, hence ``--min_secs=0`` and a ``--max_secs`` as long as our own timeout; the run count of the
report is then checked against the request. Everything sent to the device goes through
:class:`edgeconv.bench.adb.Adb`, which quotes every argument.

Runners: a ``benchmark_model`` binary (pushed, ABI checked against the device), OpenVINO's
``benchmark_app`` already on a board (``device:/path``), or ``python`` - our own
``python -m edgeconv.runner`` (benchmark_model's flags and report), pushed as a small zip. The
Python runner also reports every run's time, so its results keep raw timings like host runs;
benchmark_model prints only aggregates, which are stored as they are (no invented per-run data).

Failures end as one-line errors and failed results, never as numbers: unreachable device, missing
runner, wrong ABI, no space, a device lost mid-run (adb then exits 0 or 255 without a word, so the
report's final timings line is what proves a run finished: the device is reconnected and the
artifact retried once), truncated output.
"""
from __future__ import annotations

import queue
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..devices import (
    DEFAULT_COOLDOWN_S,
    DEFAULT_MARGIN_C,
    DEFAULT_WORKDIR,
    DEVICE_PREFIX,
    PYTHON_RUNNERS,
    UNAME_ABI,
    Cpu,
    Profile,
    cluster_mismatch,
    clusters,
    compatible_abis,
    cpu_list,
    describe_clusters,
    detect_emulation,
    elf_abi,
    load_profiles,
    match_profile,
    parse_cpus,
    select_cores,
)
from ..errors import UserError
from ..store import ArtifactRecord, RunRecord, Store, now_iso
from ..util import sha256_file
from . import parity
from .adb import Adb, AdbError
from .parsers import TRUNCATED, parse_benchmark_app, parse_benchmark_model
from .stability import assess_run

RUN_TIMEOUT_S = 3600.0  # one artifact's runner: its --max_secs, and (plus slack) the adb timeout
RUN_SLACK_S = 300.0  # model loading, warm-up and process start on top of RUN_TIMEOUT_S
RECONNECT_TIMEOUT_S = 30.0  # how long a lost device may take to come back
SPACE_MARGIN_BYTES = 1 << 20
LOG_LIMIT = 20_000  # characters of runner output kept per run
RUNNER_ZIP = "edgeconv-runner.zip"
NIGHTLY = "https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/latest/"
NIGHTLY_NAMES = {"arm64-v8a": "android_aarch64_benchmark_model", "armeabi-v7a": "android_arm_benchmark_model",
                 "x86_64": "android_x86_64_benchmark_model", "x86": "android_x86_benchmark_model"}
_RETRY_KINDS = ("device_lost", "offline", "not_found", "no_device")
_CPU_ZONE = re.compile(r"cpu|soc|cluster|tsens|big|little|mtktscpu|x86_pkg", re.I)
_TIMINGS = re.compile(r"^(?:INFO: )?Per-run timings in ns:(?P<values>[ \d]*)$", re.M)

# One shell call gathers what is not in getprop; fixed text, no user data in it.
PROBE_SCRIPT = r"""
echo "machine=$(uname -m)"
echo "kernel=$(uname -r)"
echo "dt_model=$(tr -d '\000' < /proc/device-tree/model 2>/dev/null)"
echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
for d in /sys/devices/system/cpu/cpu[0-9]*; do
  f="$d/cpufreq"
  echo "${d##*/} $(cat "$f/cpuinfo_max_freq" 2>/dev/null || echo -) $(cat "$f/scaling_governor" 2>/dev/null || echo -)"
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] && echo "zone $z/temp $(cat "$z/type" 2>/dev/null | tr ' ' _)"
done
echo "sh_elf=$(od -A n -t x1 -N 20 "$(command -v sh)" 2>/dev/null | tr -d ' \n')"
while IFS= read -r line; do
  case "$line" in vendor_id*|"CPU implementer"*|"CPU architecture"*|isa*) echo "cpuinfo=$line";; esac
done 2>/dev/null < /proc/cpuinfo
exit 0
"""
# Reads each file given as an argument: one line per file, "-" when unreadable.
READ_FILES_SCRIPT = 'for f in "$@"; do cat "$f" 2>/dev/null || echo -; done'
# Runs "$@" with stderr merged into stdout, so the report keeps its order.
MERGED_SCRIPT = 'exec "$@" 2>&1'


class RunnerError(UserError):
    """No usable runner for an artifact on a device (missing, wrong ABI, no Python)."""


class _Retry(Exception):
    """The device went away during an attempt (or the report stops short): reconnect, retry once."""


@dataclass
class RemoteOptions:
    runs: int = 1000
    warmup: int = 50
    threads: int = 1
    cores: str | None = None  # None: the profile's
    cooldown: float | None = None  # None: the profile's
    runner: str | None = None  # overrides the profile's runners for every runtime
    timeout_s: float = RUN_TIMEOUT_S
    reconnect_timeout_s: float = RECONNECT_TIMEOUT_S
    until_stable: int = 1  # measure each artifact up to this many times until its verdict is stable
    invoke_only: bool = False  # time invoke() alone (benchmark_model always does; our runner on request)


@dataclass
class Facts:
    """What a device says about itself."""

    serial: str
    kind: str  # android | board
    props: dict[str, str]
    cpus: list[Cpu]
    kernel: str | None
    machine: str | None
    zones: list[tuple[str, str]]  # (temperature file, zone type)
    os_release: str | None = None
    dt_model: str | None = None
    emulation: str | None = None  # why this is not real hardware (devices.detect_emulation)

    @property
    def abi(self) -> str | None:
        return self.props.get("ro.product.cpu.abi")

    @property
    def abis(self) -> list[str]:
        return compatible_abis(self.abi, self.props.get("ro.product.cpu.abilist"))

    def info(self, profile: Profile | None) -> dict[str, Any]:
        """The store's device record (``sysinfo.host_info`` shape; the rest goes to ``extra``)."""
        p = self.props
        soc = p.get("ro.soc.model") or p.get("ro.board.platform") or p.get("ro.hardware") or None
        maker = p.get("ro.soc.manufacturer", "")
        cpu_model = " ".join(x for x in (maker, soc) if x) or None
        if p.get("ro.board.platform") and soc != p.get("ro.board.platform"):
            cpu_model = f"{cpu_model} ({p['ro.board.platform']})"
        if self.kind == "android":
            release, sdk = p.get("ro.build.version.release"), p.get("ro.build.version.sdk")
            os_version = f"Android {release}" + (f" (API {sdk})" if sdk else "") if release else None
        else:
            os_version = self.os_release
        fastest = max((c for c in self.cpus if c.max_khz), key=lambda c: c.max_khz or 0, default=None)
        groups = clusters(self.cpus)
        extra = {
            "clusters": groups, "clusters_text": describe_clusters(groups),
            "platform": p.get("ro.board.platform"), "manufacturer": p.get("ro.product.manufacturer"),
            "brand": p.get("ro.product.brand"), "abilist": p.get("ro.product.cpu.abilist"),
            "fingerprint": p.get("ro.build.fingerprint"), "hw_serial": p.get("ro.serialno"),
            "machine": self.machine, "profile": profile.name if profile else None,
            "emulation": self.emulation,
            "transport": "tcp" if re.fullmatch(r".+:\d+", self.serial) else "usb",
        }
        return {
            "kind": self.kind, "name": p.get("ro.product.model") or self.dt_model or self.serial,
            "serial": self.serial, "cpu_model": cpu_model, "cores": len(self.cpus) or None,
            "kernel": self.kernel, "governor": fastest.governor if fastest else None, "soc": soc,
            "abi": self.abi, "os_version": os_version, "emulated": self.emulation is not None,
            **{k: v for k, v in extra.items() if v not in (None, "")},
        }


def probe(adb: Adb, serial: str) -> Facts:
    """Read a ready device's properties (Android) or uname/os-release (Linux board), CPUs, zones."""
    adb.require_ready(serial)
    try:
        props = adb.getprop(serial)
    except AdbError as e:  # a Linux board has no getprop
        if e.kind != "command_failed":
            raise
        props = {}
    kind = "android" if props else "board"
    text = adb.shell(serial, ["sh", "-c", PROBE_SCRIPT], check=True).stdout
    values = dict(re.findall(r"^(machine|kernel|dt_model|os)=(.*)$", text, re.M))
    machine = values.get("machine") or None
    if kind == "board":
        abi = UNAME_ABI.get(machine or "")
        if abi:
            props["ro.product.cpu.abi"] = abi
        if values.get("dt_model"):
            props["ro.product.model"] = values["dt_model"].strip()
    zones = [(m[0], m[1]) for m in re.findall(r"^zone (\S+) ?(\S*)$", text, re.M)]
    elf_hex = next(iter(re.findall(r"^sh_elf=([0-9a-fA-F]*)$", text, re.M)), "")
    emulation = detect_emulation(props, machine, bytes.fromhex(elf_hex[:40]) if len(elf_hex) >= 40 else None,
                                 re.findall(r"^cpuinfo=(.*)$", text, re.M))
    return Facts(serial=serial, kind=kind, props=props, cpus=parse_cpus(text),
                 kernel=values.get("kernel") or None, machine=machine, zones=zones,
                 os_release=values.get("os") or None, dt_model=values.get("dt_model") or None,
                 emulation=emulation)


def parse_temperature(text: str) -> float | None:
    """The hottest of the zone readings (one per line, m°C or °C), in °C."""
    temps = []
    for line in text.split():
        if re.fullmatch(r"-?\d+", line):
            value = int(line)
            temps.append(value / 1000.0 if abs(value) >= 500 else float(value))
    return max(temps) if temps else None


# ------------------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """How to start one runtime's benchmark on one device."""

    kind: str  # python | binary | device
    protocol: str  # benchmark_model | benchmark_app
    command: list[str]  # what precedes the flags
    label: str  # what ran, for the record: name and sha256 or interpreter
    name: str  # for messages
    push: list[tuple[Path, str]] = field(default_factory=list)  # (local file, device path)
    abi: str | None = None


def build_runner_zip(folder: str | Path) -> Path:
    """The device-side runner as a zip Python can import from (deterministic: same bytes each time,
    so an unchanged runner is never pushed again)."""
    from .. import runner as runner_module

    root = Path(runner_module.__file__).resolve().parents[1]
    files: list[Path] = []
    for member in runner_module.ZIP_MEMBERS:
        path = root / member
        files += sorted(path.rglob("*.py")) if member.endswith("/") else [path]
    target = Path(folder) / RUNNER_ZIP
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return target


def _download_hint(runtime: str, abi: str | None, profile: Profile | None) -> str:
    """Where a runner comes from and how to pass it."""
    where = f"set runners.{runtime}.{abi or 'ABI'} in {profile.path}" if profile and profile.path else \
        "add it to a profile in devices/"
    if runtime == "openvino":
        return (f"install OpenVINO on the device and pass --runner device:/path/to/benchmark_app, or "
                f"--runner python with the openvino Python package on the device; or {where}")
    name = NIGHTLY_NAMES.get(abi or "", "android_aarch64_benchmark_model")
    return (f"download TensorFlow's prebuilt nightly {NIGHTLY}{name} (android_arm_benchmark_model for "
            f"armeabi-v7a) and pass --runner PATH, or {where}; --runner python runs edgeconv's own "
            "runner on devices with Python")


def _local_runner(spec: str, runtime: str, facts: Facts, profile: Profile | None, workdir: str) -> Runner:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise RunnerError(f"runner {path} not found: {_download_hint(runtime, facts.abi, profile)}")
    abis = [profile.abi] if profile and profile.abi else facts.abis
    found = elf_abi(path)
    if found is not None:
        abi, machine = found
        if abi is None or abi not in abis:
            raise RunnerError(f"runner {path.name} is built for {machine} ({abi or 'unknown ABI'}), but "
                              f"{facts.serial} runs {', '.join(abis) or 'an unknown ABI'}: use the "
                              f"{NIGHTLY_NAMES.get(abis[0] if abis else '', 'matching')} build")
    remote = f"{workdir}/bin/{path.name}"
    protocol = "benchmark_app" if runtime == "openvino" else "benchmark_model"
    digest = sha256_file(path)[:12]
    return Runner("binary", protocol, [remote], f"{path.name} (sha256 {digest})", path.name,
                  [(path, remote)], found[0] if found else None)


def resolve_runner(adb: Adb, facts: Facts, profile: Profile | None, runtime: str, spec: str | None,
                   workdir: str, zip_path: Path | None) -> Runner:
    """The runner for ``runtime`` on this device: ``spec`` (``--runner``), else the profile's."""
    if spec is None:
        abis = [profile.abi] if profile and profile.abi else facts.abis
        chosen = profile.runner_for(runtime, abis) if profile else None
        if chosen is None:
            abi = abis[0] if abis else None
            tool = "benchmark_app" if runtime == "openvino" else "benchmark_model"
            raise RunnerError(f"no {tool} runner for {abi or 'this ABI'}: {_download_hint(runtime, abi, profile)}")
        spec = chosen[0]
    if spec in PYTHON_RUNNERS or spec.startswith("python:"):
        names = [spec.split(":", 1)[1]] if spec.startswith("python:") else ["python3", "python"]
        found = adb.shell(facts.serial, ["sh", "-c", 'for p in "$@"; do command -v "$p" && exit 0; done; exit 1',
                                         "sh", *names])
        if found.exit_code != 0 or not found.stdout.strip():
            raise RunnerError(f"{facts.serial} has no {' or '.join(names)} for the edgeconv runner: "
                              f"{_download_hint(runtime, facts.abi, profile).split('; --runner python')[0]}")
        # the name, not the path command -v prints: PATH finds it the same way when the runner starts
        interpreter = next(n for n in names if found.stdout.strip().splitlines()[0].endswith(n))
        remote_zip = f"{workdir}/{RUNNER_ZIP}"
        assert zip_path is not None
        return Runner("python", "benchmark_model",
                      ["env", f"PYTHONPATH={remote_zip}", interpreter, "-m", "edgeconv.runner"],
                      f"edgeconv.runner ({interpreter})", "edgeconv.runner", [(zip_path, remote_zip)])
    if spec.startswith(DEVICE_PREFIX):
        remote = spec[len(DEVICE_PREFIX):]
        if adb.shell(facts.serial, ["test", "-x", remote]).exit_code != 0:
            raise RunnerError(f"runner {remote} is not an executable file on {facts.serial}: "
                              f"{_download_hint(runtime, facts.abi, profile)}")
        protocol = "benchmark_app" if runtime == "openvino" else "benchmark_model"
        return Runner("device", protocol, [remote], remote, remote.rsplit("/", 1)[-1])
    return _local_runner(spec, runtime, facts, profile, workdir)


def runner_flags(runner: Runner, model: str, opts: RemoteOptions, extra: Sequence[str]) -> list[str]:
    """The runner's command line after its own command."""
    if runner.protocol == "benchmark_app":
        return ["-m", model, "-d", "CPU", "-api", "sync", "-niter", str(opts.runs), "-nstreams", "1",
                "-nthreads", str(opts.threads), "-hint", "none", "-infer_precision", "f32", *extra]
    flags = [f"--graph={model}", f"--num_threads={opts.threads}", f"--num_runs={opts.runs}",
             f"--warmup_runs={opts.warmup}", "--min_secs=0", f"--max_secs={opts.timeout_s:g}",
             "--use_xnnpack=true", *extra]
    ours = ["--report_run_timings=true"] + (["--time_invoke_only=true"] if opts.invoke_only else [])
    return flags + (ours if runner.kind == "python" else [])


# ------------------------------------------------------------------------------------------------
# reading a report
# ------------------------------------------------------------------------------------------------
def read_report(runner: Runner, text: str, exit_code: int, opts: RemoteOptions) -> dict[str, Any]:
    """Check a finished runner's output; returns RunRecord fields, or raises UserError/_Retry."""
    if runner.protocol == "benchmark_app":
        return _read_benchmark_app(runner.name, text, exit_code, opts)
    report = parse_benchmark_model(text)
    name = runner.name
    if report.failure == TRUNCATED:
        if exit_code in (0, 255):  # adb's exit codes when the device vanished mid-run
            raise _Retry(f"{name}'s output stops before its final timings line (exit code {exit_code})")
        raise UserError(f"{name} output truncated: it exited with code {exit_code} "
                        f"before its results{_last_line(text)}")
    if not report.ok:
        raise UserError(f"{name}: {report.failure}")
    timed = report.timed
    if timed is None or timed.count < opts.runs:
        done = timed.count if timed else 0
        raise UserError(f"{name} ran {done} of the {opts.runs} requested runs (stopped by its --max_secs limit?)")
    if timed.min_iterations is not None and timed.min_iterations != opts.runs:
        raise UserError(f"{name} ran at least {timed.min_iterations} iterations, not the "
                        f"{opts.runs} requested: it ignored --num_runs")
    if exit_code != 0:
        raise UserError(f"{name} exited with code {exit_code} after reporting results")
    fields: dict[str, Any] = {
        "init_ms": _ms(report.init_us), "first_ms": _ms(report.first_inference_us),
        "runtime_version": next(iter(re.findall(r"^(?:INFO: )?Runtime: \[(.+)\]$", text, re.M)), None),
        "summary": {"count": timed.count, "mean_ms": _ms(timed.avg_us), "median_ms": _ms(timed.median_us),
                    "min_ms": _ms(timed.min_us), "max_ms": _ms(timed.max_us), "std_ms": _ms(timed.std_us)},
        "memory_mb": {k: v for k, v in (("init", report.init_memory_mb), ("overall", report.overall_memory_mb),
                                        ("peak", report.peak_memory_mb)) if v is not None},
        "warmup_avg_ms": _ms(report.warmup_avg_us),
    }
    found = _TIMINGS.search(text)
    if runner.kind == "python":
        timings = [int(v) for v in found["values"].split()] if found else []
        if len(timings) != timed.count:
            raise UserError(f"{name} reported {timed.count} runs but {len(timings)} per-run timings")
        fields["timings_ns"] = timings
    if re.search(r"Unconsumed cmdline flags", text):
        fields["warning"] = "the runner ignored some flags: " + re.findall(r"Unconsumed cmdline flags: (.*)", text)[0]
    return fields


def _read_benchmark_app(name: str, text: str, exit_code: int, opts: RemoteOptions) -> dict[str, Any]:
    report = parse_benchmark_app(text)
    if report.failure == TRUNCATED and exit_code in (0, 255):
        raise _Retry(f"{name}'s output stops before its results (exit code {exit_code})")
    if not report.ok:
        raise UserError(f"{name}: {report.failure}")
    if report.count is None or report.count < opts.runs:
        raise UserError(f"{name} ran {report.count or 0} of the {opts.runs} requested iterations")
    return {"first_ms": report.first_inference_ms, "warmup": 1,
            "summary": {"count": report.count, "mean_ms": report.average_ms, "median_ms": report.median_ms,
                        "min_ms": report.min_ms, "max_ms": report.max_ms, "std_ms": None}}


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return f" (last line: {lines[-1][:160]})" if lines else " (no output)"


# ------------------------------------------------------------------------------------------------
# one device
# ------------------------------------------------------------------------------------------------
Emit = Callable[..., None]


class DeviceSession:
    """Benchmarks a list of artifacts on one device, one after another (never two at once)."""

    def __init__(self, adb: Adb, serial: str, profile: Profile | None, opts: RemoteOptions,
                 profiles: Sequence[Profile], zip_path: Path | None, emit: Emit,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.adb, self.serial, self.opts = adb, serial, opts
        self.profile = profile  # None: the best match, once the device has been probed
        self.profiles = profiles
        self.zip_path = zip_path
        self.emit = emit
        self.sleep = sleep
        self.facts: Facts | None = None
        self.runners: dict[str, Runner] = {}
        self.mask = ""
        self.cores: list[int] = []
        self.zones: list[str] = []
        self.idle_c: float | None = None
        self.benchmarked = 0
        self.last: dict[str, Any] = {}
        self.references: dict[str, parity.HostReference | str] = {}  # file -> host outputs or why not

    # -- setup --
    @property
    def workdir(self) -> str:
        return self.profile.workdir if self.profile else DEFAULT_WORKDIR

    def info(self) -> dict[str, Any]:
        if self.facts is not None:
            return self.facts.info(self.profile)
        kind = self.profile.kind if self.profile else "android"
        return {"kind": kind, "name": self.serial, "serial": self.serial,
                **({"profile": self.profile.name} if self.profile else {})}

    def connect(self) -> None:
        """``adb connect`` host:port serials adb does not list yet (the user named them)."""
        if re.fullmatch(r".+:\d{1,5}", self.serial) and self.adb.state(self.serial) is None:
            self.adb.connect(self.serial)
            self._wait_ready(5.0)

    def setup(self) -> None:
        self.connect()
        self.facts = facts = probe(self.adb, self.serial)
        if self.profile is None:
            self.profile = match_profile(facts.kind, facts.props, self.profiles)
        profile = self.profile
        if profile is not None and profile.kind != facts.kind:
            kinds = {"android": "an Android device", "board": "a Linux board"}
            raise UserError(f"profile {profile.name} is for {kinds[profile.kind]}, but {self.serial} is "
                            f"{kinds[facts.kind]}")
        if profile is not None and profile.abi and profile.abi not in facts.abis:
            raise UserError(f"profile {profile.name} is for {profile.abi}, but {self.serial} runs "
                            f"{', '.join(facts.abis) or 'an unknown ABI'}")
        self.emit("device", info=self.info())
        if profile is not None and (why := cluster_mismatch(profile, clusters(facts.cpus))):
            self.emit("warn", message=f"{self.serial}: {why}")
        selection = self.opts.cores or (profile.cores if profile else "big")
        self.cores, self.mask = select_cores(selection, facts.cpus)
        if self.opts.threads > len(self.cores):
            self.emit("warn", message=f"{self.serial}: --threads {self.opts.threads} on "
                      f"{len(self.cores)} core(s) {cpu_list(self.cores)} (--cores {selection})")
        if profile is not None and profile.thermal_zones:
            self.zones = list(profile.thermal_zones)
        else:
            cpu_zones = [path for path, kind in facts.zones if _CPU_ZONE.search(kind)]
            self.zones = cpu_zones or [path for path, _ in facts.zones]
        self.adb.shell(self.serial, ["mkdir", "-p", self.workdir], check=True)
        self.idle_c = self.temperature()

    # -- helpers --
    def temperature(self) -> float | None:
        if not self.zones:
            return None
        text = self.adb.shell(self.serial, ["sh", "-c", READ_FILES_SCRIPT, "sh", *self.zones]).stdout
        return parse_temperature(text)

    def sample(self, when: str) -> dict[str, Any]:
        """Load average and the clock and governor of the pinned cores, for the run's verdict
        (``loadavg_before``, ``freq_khz_before``, ``governor_before``, or ``_after``)."""
        freq = [f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq" for c in self.cores]
        gov = [f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor" for c in self.cores]
        try:
            text = self.adb.shell(self.serial, ["sh", "-c", READ_FILES_SCRIPT, "sh", "/proc/loadavg",
                                                *freq, *gov]).stdout
        except AdbError:
            return {}
        lines = text.splitlines()
        if len(lines) != 1 + 2 * len(self.cores):
            return {}
        out: dict[str, Any] = {}
        load = lines[0].split()[:3]
        if len(load) == 3 and all(re.fullmatch(r"\d+(\.\d+)?", v) for v in load):
            out[f"loadavg_{when}"] = [float(v) for v in load]
        n = len(self.cores)
        khz = {str(c): int(v) for c, v in zip(self.cores, lines[1:1 + n], strict=True) if v.strip().isdigit()}
        govs = {str(c): v.strip() for c, v in zip(self.cores, lines[1 + n:], strict=True) if v.strip() not in ("", "-")}
        if khz:
            out[f"freq_khz_{when}"] = khz
        if govs:
            out[f"governor_{when}"] = govs
        return out

    def cooldown(self) -> dict[str, Any]:
        """Wait until the device is back near its idle temperature, at most ``cooldown`` seconds
        (without a thermal zone: a plain pause of ``cooldown`` seconds). No wait before the first run;
        returns what it did, for the run's record."""
        limit = self.opts.cooldown if self.opts.cooldown is not None else \
            (self.profile.cooldown if self.profile else DEFAULT_COOLDOWN_S)
        if self.benchmarked == 0 or limit <= 0:
            return {}
        margin = self.profile.cooldown_margin_c if self.profile else DEFAULT_MARGIN_C
        start = time.monotonic()
        temp = self.temperature()
        if temp is None or self.idle_c is None:
            self.sleep(limit)
            return {"cooldown_s": round(limit, 1), "cooldown": "fixed pause (no thermal zone)"}
        while temp is not None and temp > self.idle_c + margin and time.monotonic() - start < limit:
            self.sleep(min(2.0, max(limit - (time.monotonic() - start), 0.0)))
            temp = self.temperature()
        waited = time.monotonic() - start
        cooled = temp is not None and temp <= self.idle_c + margin
        return {"cooldown_s": round(waited, 1),
                "cooldown": "back near idle" if cooled else f"still {temp} °C after {limit:g} s"}

    def _wait_ready(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.adb.state(self.serial) == "device":
                return True
            time.sleep(0.25)
        return False

    def reconnect(self) -> None:
        """Get a lost device back: adb re-attaches TCP devices by itself within a second or so;
        ``adb connect`` nudges it. Raises AdbError when it stays away."""
        deadline = time.monotonic() + self.opts.reconnect_timeout_s
        tcp = re.fullmatch(r".+:\d{1,5}", self.serial) is not None
        while time.monotonic() < deadline:
            if self._wait_ready(min(2.0, max(deadline - time.monotonic(), 0.0))):
                return
            if tcp:
                try:
                    self.adb.connect(self.serial, timeout=10.0, forget_on_failure=False)
                except AdbError:
                    pass
        raise AdbError(f"{self.serial} did not come back within {self.opts.reconnect_timeout_s:g} s",
                       "device_lost")

    def runner(self, runtime: str) -> Runner:
        if runtime not in self.runners:
            assert self.facts is not None
            self.runners[runtime] = resolve_runner(self.adb, self.facts, self.profile, runtime,
                                                   self.opts.runner, self.workdir, self.zip_path)
        return self.runners[runtime]

    def sync(self, files: Sequence[tuple[Path, str]]) -> list[str]:
        """Push the files whose device copy is missing or different; returns the pushed names."""
        stale = [(local, remote) for local, remote in files
                 if self.adb.sha256(self.serial, remote) != sha256_file(local)]
        if not stale:
            return []
        need = sum(local.stat().st_size for local, _ in stale) + SPACE_MARGIN_BYTES
        free = self.adb.free_bytes(self.serial, self.workdir)
        if free < need:
            raise AdbError(f"not enough space on {self.serial}: {need / 1e6:.1f} MB needed in "
                           f"{self.workdir}, {free / 1e6:.1f} MB free", "no_space")
        for local, remote in stale:
            self.adb.push_if_changed(self.serial, local, remote)
        return [local.name for local, _ in stale]

    # -- one artifact --
    def model_files(self, target: Any) -> list[tuple[Path, str]]:
        art = target.artifact
        stem = f"{self.workdir}/models/{art.model}-{art.precision}"
        local = Path(target.file)
        files = [(local, stem + local.suffix)]
        if local.suffix == ".xml":
            files.append((local.with_suffix(".bin"), stem + ".bin"))
        return files

    def reference(self, target: Any) -> parity.HostReference | str:
        """The host's outputs of the parity inputs for this artifact (once), or why there are none."""
        key = str(target.file)
        if key not in self.references:
            try:
                if not (target.manifest or {}).get("input", {}).get("preprocess"):
                    raise UserError("its build has no manifest with the recipe (preprocessing)")
                self.references[key] = parity.host_reference(target.file, target.runtime, target.manifest)
            except (UserError, ImportError, OSError, ValueError, RuntimeError) as e:
                self.references[key] = f"the host could not compute its own outputs: {str(e)[:200]}"
        return self.references[key]

    def parity_files(self, target: Any, runner: Runner) -> tuple[list[tuple[Path, str]], list[str], str | None]:
        """(files to push, runner flags, device output file) of the output parity check; no flags
        and a reason in ``self.last["parity"]`` when this runner cannot be checked."""
        if runner.kind != "python":
            self.last["parity"] = parity.not_checked(parity.NOT_CHECKED[runner.protocol])
            return [], [], None
        ref = self.reference(target)
        if isinstance(ref, str):
            self.last["parity"] = parity.not_checked(ref)
            return [], [], None
        art = target.artifact
        assert self.zip_path is not None
        local = self.zip_path.parent / f"parity-{art.model}-{art.resolution}.npy"
        if not local.exists():
            import numpy as np

            np.save(local, ref.inputs)
        remote_in = f"{self.workdir}/parity/{art.model}-{art.resolution}-inputs.npy"
        remote_out = f"{self.workdir}/parity/{art.model}-{art.precision}-outputs.npy"
        return [(local, remote_in)], [f"--parity_inputs={remote_in}", f"--parity_outputs={remote_out}"], remote_out

    def check_outputs(self, target: Any, remote_out: str, version: str | None) -> dict[str, Any]:
        """Pull the device's outputs and compare them with the host's."""
        import numpy as np

        ref = self.reference(target)
        assert not isinstance(ref, str) and self.zip_path is not None
        local = self.zip_path.parent / f"outputs-{self.serial.replace(':', '_')}.npy"
        self.adb.pull(self.serial, remote_out, local)
        try:
            device = np.load(local, allow_pickle=False)
        except (OSError, ValueError) as e:
            return {"status": "differs", "inputs": len(ref.inputs),
                    "reason": f"the device's output file is unreadable ({str(e)[:120]})"}
        finally:
            local.unlink(missing_ok=True)
        return parity.compare(device, ref, target.artifact.precision, version)

    def attempt(self, target: Any) -> dict[str, Any]:
        """Push, cool down, run, check: the RunRecord fields of one successful run."""
        runner = self.runner(target.runtime)
        models = self.model_files(target)
        check_push, check_flags, remote_out = self.parity_files(target, runner)
        pushed = self.sync([*runner.push, *models, *check_push])
        if remote_out:
            self.adb.shell(self.serial, ["rm", "-f", remote_out], check=True)  # never a stale answer
        if runner.kind == "binary":
            self.adb.shell(self.serial, ["chmod", "755", runner.command[0]], check=True)
        self.emit("progress", target=target, phase="cooldown")
        cooling = self.cooldown()
        self.last["temp_before_c"] = self.temperature()
        context = {"cpus": len(self.facts.cpus) if self.facts else None, "cores": list(self.cores),
                   **self.sample("before")}
        self.emit("progress", target=target, phase="run")
        extra_args = self.profile.runner_args.get(target.runtime, ()) if self.profile else ()
        argv = ["sh", "-c", MERGED_SCRIPT, "sh", "taskset", self.mask, *runner.command,
                *runner_flags(runner, models[0][1], self.opts, extra_args), *check_flags]
        t0 = time.monotonic()
        result = self.adb.shell(self.serial, argv, timeout=self.opts.timeout_s + RUN_SLACK_S)
        wall = time.monotonic() - t0
        self.benchmarked += 1
        log = result.stdout + result.stderr
        self.last["raw_log"] = _TIMINGS.sub("INFO: Per-run timings in ns: (stored as timings)", log)[-LOG_LIMIT:]
        self.last["temp_after_c"] = self.temperature()
        self.last["context"] = {**context, **self.sample("after")}
        fields = read_report(runner, log, result.exit_code, self.opts)
        if remote_out:
            self.last["parity"] = self.check_outputs(target, remote_out, fields.get("runtime_version"))
        extra = {"runner": runner.label, "command": " ".join(argv[4:]), "mask": self.mask, "pushed": pushed,
                 "wall_s": round(wall, 3), **cooling,
                 **{k: fields.pop(k) for k in ("summary", "memory_mb", "warmup_avg_ms", "warning") if k in fields}}
        fields["runtime_version"] = fields.get("runtime_version") or runner.label
        memory = extra.get("memory_mb") or {}
        if memory.get("peak") is not None:
            fields["peak_rss_mb"] = memory["peak"]
        if memory.get("overall") is not None:
            fields["mem_mb"] = memory["overall"]
            if memory.get("peak") is not None:  # the Python runner: the tool's start is after the import
                fields["import_rss_mb"] = round(memory["peak"] - memory["overall"], 2)
        return {**fields, "extra": extra}

    def bench(self, target: Any) -> RunRecord:
        """One artifact, retried once after reconnecting when the device went away mid-way."""
        started = now_iso()
        retried: list[str] = []
        while True:
            self.last = {}  # what the attempt got to, kept for a failed record too
            try:
                fields = self.attempt(target)
                break
            except (_Retry, AdbError) as e:
                if isinstance(e, AdbError) and e.kind not in _RETRY_KINDS:
                    return self.failed(target, str(e), started)
                if retried:
                    return self.failed(target, f"{e} (again after reconnecting and retrying once)", started)
                retried.append(str(e))
                self.emit("warn", message=f"{self.serial}: {e}; reconnecting and retrying {target.label} once")
                try:
                    self.reconnect()
                except AdbError as lost:
                    return self.failed(target, f"{e}; {lost}", started)
            except UserError as e:
                return self.failed(target, str(e), started)
        extra = {**fields.pop("extra"), "serial": self.serial,
                 **({"retried_after": retried[0]} if retried else {})}
        return RunRecord(runtime=target.runtime, status="ok", runs_requested=self.opts.runs,
                         warmup=fields.pop("warmup", self.opts.warmup), threads=self.opts.threads,
                         cores=cpu_list(self.cores), started_at=started, finished_at=now_iso(), extra=extra,
                         **self.last, **fields)

    def failed(self, target: Any, error: str, started: str | None = None) -> RunRecord:
        """A failed record: the error, and whatever the attempt saw (temperatures, the log)."""
        return RunRecord(runtime=target.runtime, status="failed", runs_requested=self.opts.runs,
                         warmup=self.opts.warmup, threads=self.opts.threads, error=error,
                         started_at=started, finished_at=now_iso(),
                         cores=cpu_list(self.cores) if self.cores else None,
                         extra={"serial": self.serial}, **{k: v for k, v in self.last.items() if k != "parity"})

    def run(self, targets: Sequence[Any]) -> None:
        """The worker: set up, then every target; every outcome goes out through ``emit``."""
        try:
            self.setup()
        except UserError as e:  # AdbError included: unreachable, unauthorized, offline, ...
            self.emit("device", info=self.info())
            for target in targets:
                self.emit("result", target=target, record=self.failed(target, str(e)))
            return
        for target in targets:
            for repeat in range(1, self.opts.until_stable + 1):  # --until-stable: every repeat is a result
                self.emit("progress", target=target, phase="push")
                record = self.bench(target)
                if self.opts.until_stable > 1:
                    record.extra["repeat"] = repeat
                self.emit("result", target=target, record=record)
                if record.status != "ok" or assess_run(record).stable:
                    break

    def work(self, targets: Sequence[Any]) -> None:
        """Thread body: :meth:`run`, with any unexpected exception handed to the main thread."""
        try:
            self.run(targets)
        except BaseException as e:  # noqa: BLE001 - re-raised by bench_remote in the main thread
            self.emit("crash", error=e)


# ------------------------------------------------------------------------------------------------
# all devices
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevicePlan:
    serial: str
    profile: Profile | None  # None: matched after probing the device


def plan_devices(adb: Adb, serials: Sequence[str], profile: Profile | None = None) -> list[DevicePlan]:
    """The devices to benchmark: ``serials``, else the profile's transport, else every device adb
    lists (in any state: an unauthorized or offline one gets failed results that say so)."""
    if serials:
        return [DevicePlan(s, profile) for s in dict.fromkeys(serials)]
    if profile is not None and profile.transport:
        return [DevicePlan(profile.transport, profile)]
    listed = adb.devices()
    if not listed:
        raise AdbError("no Android device is connected (`adb devices` lists none): plug one in with USB "
                       "debugging on, or `adb connect HOST:PORT`", "no_device")
    return [DevicePlan(d.serial, profile) for d in listed]


def bench_remote(targets: Sequence[Any], plans: Sequence[DevicePlan], opts: RemoteOptions, *,
                 adb: Adb | None = None, profiles: Sequence[Profile] | None = None,
                 on_device: Callable[[str, dict], None] | None = None,
                 on_result: Callable[[str, Any, RunRecord], None] | None = None,
                 on_progress: Callable[[str, Any, str], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
    """Benchmark ``targets`` on every planned device, one worker thread per device, in parallel.

    The callbacks run in the calling thread (SQLite connections are per thread), in the order
    the workers produce events: ``on_device(serial, info)`` before a device's results,
    ``on_result(serial, target, record)`` once per device and target.
    """
    adb = adb or Adb()
    profiles = load_profiles() if profiles is None else profiles
    events: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
    with tempfile.TemporaryDirectory(prefix="edgeconv-runner-") as tmp:
        zip_path = build_runner_zip(tmp)
        workers = []
        for plan in plans:
            def emit(kind: str, serial: str = plan.serial, **kw: Any) -> None:
                events.put((serial, kind, kw))

            session = DeviceSession(adb, plan.serial, plan.profile, opts, profiles, zip_path, emit)
            workers.append(threading.Thread(target=session.work, args=(targets,), daemon=True,
                                            name=f"edgeconv-{plan.serial}"))
        for worker in workers:
            worker.start()
        crash: BaseException | None = None
        while any(w.is_alive() for w in workers) or not events.empty():
            try:
                serial, kind, kw = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "device" and on_device:
                on_device(serial, kw["info"])
            elif kind == "result" and on_result:
                on_result(serial, kw["target"], kw["record"])
            elif kind == "progress" and on_progress:
                on_progress(serial, kw["target"], kw["phase"])
            elif kind == "warn" and warn:
                warn(kw["message"])
            elif kind == "crash":
                crash = crash or kw["error"]
        if crash is not None:
            raise crash


def record_result(store: Store, device_id: int, artifact: ArtifactRecord, run: RunRecord) -> int:
    """Store one result in one transaction. A run with raw timings (the Python runner) keeps them;
    benchmark_model and benchmark_app print only aggregates, stored as printed (``extra["summary"]``)."""
    return store.record_run(device_id, artifact, run)


def list_devices(adb: Adb, serials: Sequence[str] = (), profiles: Sequence[Profile] | None = None
                 ) -> list[dict[str, Any]]:
    """``edgeconv devices``: every attached device (or ``serials``) with what it says about itself
    and the profile that applies; devices that are not ready show only their state."""
    profiles = load_profiles() if profiles is None else profiles
    states = {d.serial: d.state for d in adb.devices()}
    rows = []
    for serial in serials or list(states):
        state = states.get(serial)
        row: dict[str, Any] = {"serial": serial, "state": state or "not found"}
        if state == "device":
            facts = probe(adb, serial)
            profile = match_profile(facts.kind, facts.props, profiles)
            info = facts.info(profile)
            row.update(kind=info["kind"], model=info["name"], soc=info.get("cpu_model"),
                       os=info.get("os_version") or info.get("kernel"), abi=info.get("abi"),
                       clusters=info.get("clusters_text"), profile=profile.name if profile else None,
                       emulated=info["emulated"], emulation=info.get("emulation"),
                       note=cluster_mismatch(profile, info["clusters"]) if profile else None)
        rows.append(row)
    return rows
