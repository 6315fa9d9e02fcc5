"""A device farm on Ray: ADB devices attached to many hosts, benchmarked from one command.

Each host with devices runs a Ray node (``edgeconv farm join``) that advertises one custom resource
per attached ADB device, ``adb:<serial>`` (plus ``edgeconv-profile:<name>`` and
``edgeconv-model:<model>`` counts, so work can be asked for by kind). A benchmark of a device is one
Ray task that asks for that device's resource: Ray runs it on the node the device is plugged into,
and never two at once on one device. The task runs the same :class:`~edgeconv.bench.android.DeviceSession`
as a local ``bench --device android`` (push, ABI check, pinning, cooldown, runner, parsing) against
that node's own adb server, and streams its events back; the caller stores each result as it comes.

Processes: ``farm head`` and ``farm join`` start ``ray start --block`` in a session of its own and
record its process id in the farm folder (``$EDGECONV_FARM_DIR``, default
``$XDG_CONFIG_HOME/edgeconv/farm``); ``farm stop`` ends exactly those process groups. Token
authentication is always on (``RAY_AUTH_MODE=token``): the head generates the token, kept 0600 in the
farm folder; other hosts get a copy (``--token-file``).

Ray is imported only here, and only by farm commands.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..util import atomic_write_text

DEFAULT_PORT = 6380
READY_TIMEOUT_S = 120.0  # ray start on a busy machine: seconds, not minutes
NODE_CHECK_S = 2.0  # how often a running farm bench checks that the devices' nodes are alive


class FarmError(UserError):
    """A farm that cannot be reached, joined, or used (one line, like every user error)."""


# ---- the farm folder: token and the processes this host started ----
def farm_dir() -> Path:
    env = os.environ.get("EDGECONV_FARM_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeconv" / "farm"


def default_token_file() -> Path:
    return farm_dir() / "token"


def ensure_token(path: Path) -> tuple[str, bool]:
    """(token, created): the farm's shared secret, generated once, readable by its owner only."""
    if path.is_file():
        return read_token(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise FarmError(f"token file {path}: {e.strerror} (copy the head's token file here, mode 0600, "
                        "or pass --token-file)") from None
    if not token:
        raise FarmError(f"token file {path} is empty")
    return token


def _records_file() -> Path:
    return farm_dir() / "processes.json"


def started_here() -> list[dict[str, Any]]:
    """The Ray processes ``farm head``/``farm join`` started on this host (and that still run)."""
    try:
        records = json.loads(_records_file().read_text())
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict) and _alive(r.get("pid"), r.get("started_ticks"))]


def _save_records(records: list[dict[str, Any]]) -> None:
    farm_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(_records_file(), json.dumps(records, indent=1) + "\n")


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): a reused pid differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: Any, ticks: Any) -> bool:
    return isinstance(pid, int) and _start_ticks(pid) is not None and _start_ticks(pid) == ticks


# ---- starting and stopping nodes ----
def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FarmError(f"farm address {address!r}: expected HOST:PORT, e.g. 192.168.1.20:{DEFAULT_PORT}")
    return host.strip("[]"), int(port)


def check_answers(address: str, timeout: float = 5.0) -> None:
    """One line if nothing listens at ``address`` (before Ray's own minute of retries)."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        raise FarmError(f"farm {address} does not answer ({e.strerror or e}); is `edgeconv farm head` "
                        "running there, and is the port open?") from None


def local_ip_towards(host: str) -> str:
    """The address of this host's interface that routes to ``host`` (no packet is sent)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1" if host != "::1" else host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
        except OSError as e:
            raise FarmError(f"no route to farm host {host} ({e.strerror or e})") from None
        return s.getsockname()[0]


def ray_env(token_file: Path) -> dict[str, str]:
    """The environment of every Ray process of the farm: token auth on, no usage statistics."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file.resolve()),
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_BACKEND_LOG_LEVEL": os.environ.get("RAY_BACKEND_LOG_LEVEL",
                                                                                     "error")}


def _ray_start(role: str, args: list[str], token_file: Path, address: str,
               extra: dict[str, Any]) -> dict[str, Any]:
    """``ray start --block ARGS`` in a session of its own, recorded, once it has come up."""
    folder = farm_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = folder / f"{role}-{int(time.time())}.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=ray_env(token_file), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    record = {"role": role, "pid": proc.pid, "started_ticks": _start_ticks(proc.pid), "address": address,
              "log": str(log), **extra}
    _save_records([*started_here(), record])
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _forget(record)
            raise FarmError(f"ray start ({role}) exited with code {proc.returncode}: {_log_reason(log)}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return record
        time.sleep(0.5)
    _stop_record(record)
    raise FarmError(f"ray start ({role}) did not come up within {READY_TIMEOUT_S:.0f} s; see {log}")


def _log_reason(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln or "failed" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def _forget(record: dict[str, Any]) -> None:
    _save_records([r for r in started_here() if r.get("pid") != record.get("pid")])


def _stop_record(record: dict[str, Any], grace: float = 30.0) -> None:
    """SIGTERM to the recorded ``ray start --block`` (it stops its node), then its process group."""
    pid = record["pid"]
    if _alive(pid, record.get("started_ticks")):
        with _suppress():
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid, record.get("started_ticks")) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        with _suppress():
            os.killpg(pid, signal.SIGKILL)  # anything of that group still running
        _reap(pid)
    _forget(record)


def _reap(pid: int) -> None:
    with _suppress():
        os.waitpid(pid, os.WNOHANG)


@contextmanager
def _suppress() -> Iterator[None]:
    try:
        yield
    except (ProcessLookupError, PermissionError, ChildProcessError):
        pass


def start_head(listen: str = "127.0.0.1", port: int = DEFAULT_PORT,
               token_file: Path | None = None) -> dict[str, Any]:
    """Start this host's farm head (no dashboard, token auth). Returns its record plus whether the
    token was created now (then it is shown once, with the join command)."""
    token_file = token_file or default_token_file()
    token, created = ensure_token(token_file)
    address = f"{listen}:{port}"
    if any(r["role"] == "head" for r in started_here()):
        raise FarmError(f"a farm head started here already runs ({_head_address()}); `edgeconv farm stop` first")
    with socket.socket() as s:
        try:
            s.bind((listen, port))
        except OSError as e:
            raise FarmError(f"cannot listen on {address}: {e.strerror}") from None
    record = _ray_start("head", ["--head", "--node-ip-address", listen, "--port", str(port),
                                 "--include-dashboard", "false", "--num-cpus", "0"], token_file, address, {})
    return {**record, "token_file": str(token_file), "token": token if created else None}


def _head_address() -> str | None:
    return next((r["address"] for r in started_here() if r["role"] == "head"), None)


def join(address: str, token_file: Path | None = None, adb: Any = None) -> dict[str, Any]:
    """Start a Ray node on this host that offers every ADB device this host's adb server lists."""
    from .adb import Adb
    from .android import list_devices

    token_file = token_file or default_token_file()
    read_token(token_file)
    check_answers(address)
    host, _port = split_address(address)
    adb = adb or Adb()
    devices = [d for d in list_devices(adb) if d.get("state") == "device"]
    if not devices:
        raise FarmError("no ADB device in state 'device' on this host (`adb devices`): nothing to offer")
    resources: dict[str, float] = {}
    for d in devices:
        resources[f"adb:{d['serial']}"] = 1
        for key in (f"edgeconv-profile:{d.get('profile') or 'none'}", f"edgeconv-model:{d.get('model')}"):
            resources[key] = resources.get(key, 0) + 1
    ip = local_ip_towards(host)
    record = _ray_start("node", ["--address", address, "--node-ip-address", ip, "--num-cpus", "1",
                                 "--resources", json.dumps(resources)], token_file, address,
                        {"devices": [d["serial"] for d in devices]})
    return {**record, "devices": devices}


def stop() -> list[dict[str, Any]]:
    """Stop the heads and nodes this host started (by their process ids), nodes first."""
    records = sorted(started_here(), key=lambda r: r["role"] == "head")
    for record in records:
        _stop_record(record)
    return records


# ---- using a farm ----
@contextmanager
def connected(address: str, token_file: Path | None = None) -> Iterator[Any]:
    """A Ray driver connected to the farm at ``address``; one line if it does not answer or refuses
    the token."""
    token_file = token_file or default_token_file()
    read_token(token_file)
    check_answers(address)
    host, _port = split_address(address)
    for key, value in ray_env(token_file).items():
        if key.startswith("RAY_"):
            os.environ[key] = value
    import ray

    log = farm_dir() / "driver.log"
    with _ray_messages_to(log):
        try:
            with _stderr_to(log):  # Ray's C++ start-up and retry chatter
                ray.init(address=address, _node_ip_address=local_ip_towards(host), log_to_driver=False,
                         logging_level="ERROR", configure_logging=True, namespace="edgeconv")
        except ConnectionError as e:
            raise FarmError(f"farm {address} refused this connection ({str(e).splitlines()[0][:200]}); "
                            f"is {token_file} the head's token?") from None
        try:
            yield ray
        finally:
            ray.shutdown()


@contextmanager
def _ray_messages_to(log: Path) -> Iterator[None]:
    """The cluster's messages to the driver (e.g. "(raylet) The node with node id ... has been
    marked dead") go to ``log``: Ray's driver prints them to sys.stdout from a thread of its own,
    whatever ``log_to_driver`` says, which would corrupt ``bench --farm --json`` when a node dies
    mid-run. (Ray's private hook ``print_to_stdstream``; if it ever moves, nothing is changed.)"""
    from ray._private import worker

    original, printer = getattr(worker, "print_to_stdstream", None), getattr(worker, "print_worker_logs", None)
    if original is None or printer is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = threading.Lock()

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        with lock, open(log, "a") as f:
            printer(data, f, ignore_prefix)

    worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        worker.print_to_stdstream = original


@contextmanager
def _stderr_to(log: Path) -> Iterator[None]:
    """File descriptor 2 (C++ libraries write there directly) goes to ``log`` for the block."""
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "a") as f:
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _probe_node(serials: list[str]) -> dict[str, Any]:
    """Runs on a farm node: what its adb server says about its devices."""
    from .adb import Adb
    from .android import list_devices

    return {"host": socket.gethostname(), "devices": list_devices(Adb(), serials)}


def farm_devices(ray: Any) -> list[dict[str, Any]]:
    """Every device the farm's live nodes offer: host, node, serial, model, SoC, ABI, profile, busy."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    free = ray.available_resources()
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
    asked = []
    for node in ray.nodes():
        serials = sorted(k[4:] for k in node.get("Resources", {}) if k.startswith("adb:"))
        if node.get("Alive") and serials:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            asked.append((node, serials, probe.options(scheduling_strategy=strategy).remote(serials)))
    rows = []
    for node, serials, ref in asked:
        try:
            answer = ray.get(ref, timeout=60)
        except Exception as e:  # noqa: BLE001 - a node that cannot answer is shown as such
            answer = {"host": node.get("NodeManagerAddress"),
                      "devices": [{"serial": s, "state": f"node unreachable ({type(e).__name__})"} for s in serials]}
        for d in answer["devices"]:
            rows.append({"host": answer["host"], "node_ip": node.get("NodeManagerAddress"),
                         "node_id": node["NodeID"], **d, "busy": free.get(f"adb:{d['serial']}", 0) < 1})
    return rows


def choose_devices(rows: Sequence[dict[str, Any]], kind: str, serials: Sequence[str],
                   model_pattern: str | None) -> list[dict[str, Any]]:
    """The farm devices a bench asked for: by serial, by kind or profile, by model pattern."""
    from fnmatch import fnmatch

    chosen = []
    for row in rows:
        if serials and row["serial"] not in serials:
            continue
        if kind not in ("android", "board") and row.get("profile") != kind:
            continue
        if kind in ("android", "board") and row.get("kind", kind) != kind:
            continue
        if model_pattern and not fnmatch(str(row.get("model", "")).lower(), model_pattern.lower()):
            continue
        chosen.append(row)
    missing = [s for s in serials if s not in {r["serial"] for r in chosen}]
    if missing:
        raise FarmError(f"--serial {missing[0]}: not offered by the farm (edgeconv farm devices lists it?)")
    if not chosen:
        what = f"--device {kind}" + (f" --model {model_pattern}" if model_pattern else "")
        raise FarmError(f"no farm device matches {what} (edgeconv farm devices lists them)")
    return chosen


@dataclass
class Shipped:
    """One artifact as it travels to a node: its target (artifact record, runtime, local path) and
    its files (name -> bytes)."""

    index: int
    target: Any
    main: str
    files: dict[str, bytes]


def ship(targets: Sequence[Any]) -> list[Shipped]:
    out = []
    for i, t in enumerate(targets):
        local = Path(t.file)
        names = [local] + ([local.with_suffix(".bin")] if local.suffix == ".xml" else [])
        files = {p.name: p.read_bytes() for p in names if p.is_file()}
        out.append(Shipped(i, t, local.name, files))
    return out


def _device_worker(shipped: list[Shipped], serial: str, profile_name: str | None, opts: Any
                   ) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """Runs on the node that owns ``serial`` (a Ray generator task): the local device session,
    its events yielded as they happen: ("device", None, info), ("progress", i, {phase}),
    ("result", i, {record}), ("warn", None, {message})."""
    import ray

    from ..devices import load_profiles
    from .adb import Adb
    from .android import DeviceSession, build_runner_zip

    host = socket.gethostname()
    node = ray.get_runtime_context().get_node_id()
    events: queue.Queue = queue.Queue()
    with tempfile.TemporaryDirectory(prefix="edgeconv-farm-") as tmp:
        targets = []
        for s in shipped:
            folder = Path(tmp) / str(s.index)
            folder.mkdir()
            for name, data in s.files.items():
                (folder / name).write_bytes(data)
            targets.append(replace(s.target, file=folder / s.main))
        index = {id(t): s.index for t, s in zip(targets, shipped, strict=True)}
        profiles = load_profiles()
        profile = next((p for p in profiles if p.name == profile_name), None) if profile_name else None

        def emit(kind: str, **kw: Any) -> None:
            events.put((kind, kw))

        session = DeviceSession(Adb(), serial, profile, opts, profiles, build_runner_zip(tmp), emit)
        worker = threading.Thread(target=session.work, args=(targets,), daemon=True)
        worker.start()
        while worker.is_alive() or not events.empty():
            try:
                kind, kw = events.get(timeout=0.2)
            except queue.Empty:
                continue
            target = kw.pop("target", None)
            i = index.get(id(target)) if target is not None else None
            if kind == "device":
                kw["info"] = {**kw["info"], "farm_host": host}
            elif kind == "result":
                record = kw["record"]
                kw["record"] = replace(record, extra={**(record.extra or {}), "farm_host": host, "farm_node": node})
            elif kind == "crash":
                kind, kw = "warn", {"message": f"{serial} on {host}: {type(kw['error']).__name__}: "
                                               f"{kw['error']}", "crash": True}
            yield kind, i, kw


def bench_farm(ray: Any, targets: Sequence[Any], devices: Sequence[dict[str, Any]], opts: Any, *,
               on_device: Callable[[str, dict], None], on_result: Callable[[str, Any, Any], None],
               on_progress: Callable[[str, Any, str], None] | None = None,
               warn: Callable[[str], None] | None = None,
               failed_record: Callable[[Any, str], Any]) -> None:
    """Benchmark ``targets`` on every chosen farm device: one Ray task per device (holding its
    ``adb:<serial>`` resource), all devices at once. Callbacks run in the calling thread, as events
    arrive. A device whose node dies gets failed records for what it had not measured."""
    shipped = ray.put(ship(targets))
    remote = ray.remote(num_cpus=0, max_retries=0)(_device_worker)
    events: queue.Queue = queue.Queue()
    done: dict[str, set[int]] = {d["serial"]: set() for d in devices}
    finished: set[str] = set()
    seen: set[str] = set()
    gens: dict[str, Any] = {}
    threads = []
    for d in devices:
        serial = d["serial"]
        gen = remote.options(resources={f"adb:{serial}": 1}).remote(shipped, serial, d.get("profile"), opts)
        gens[serial] = gen

        def pump(serial: str = serial, gen: Any = gen) -> None:
            try:
                for ref in gen:
                    events.put((serial, *ray.get(ref)))
                events.put((serial, "end", None, {}))
            except Exception as e:  # noqa: BLE001 - node/worker lost: turned into failed records
                events.put((serial, "lost", None, {"error": _lost_reason(e)}))

        threads.append(threading.Thread(target=pump, daemon=True, name=f"farm-{serial}"))
    for t in threads:
        t.start()
    nodes = {d["serial"]: d["node_id"] for d in devices}
    last_check = time.monotonic()
    try:
        while len(finished) < len(devices):
            try:
                serial, kind, i, kw = events.get(timeout=0.2)
            except queue.Empty:
                serial = None
            if serial is None or serial in finished:
                if time.monotonic() - last_check > NODE_CHECK_S:
                    last_check = time.monotonic()
                    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
                    for s, node in nodes.items():
                        if s not in finished and node not in alive:
                            ray.cancel(gens[s], force=True)
                            events.put((s, "lost", None, {"error": "its farm node is gone"}))
                continue
            if kind == "device":
                seen.add(serial)
                on_device(serial, kw["info"])
            elif kind == "result":
                done[serial].add(i)
                on_result(serial, targets[i], kw["record"])
            elif kind == "progress" and on_progress:
                on_progress(serial, targets[i], kw["phase"])
            elif kind == "warn" and warn:
                warn(kw["message"])
            elif kind in ("end", "lost"):
                finished.add(serial)
                left = [t for j, t in enumerate(targets) if j not in done[serial]]
                if left:
                    reason = kw.get("error") or "the device's task ended early"
                    if kind == "lost" and warn:
                        warn(f"{serial}: device lost ({reason}); {len(left)} run(s) not measured")
                    if serial not in seen:  # device info first, so the failures have a device row
                        on_device(serial, _row_info(next(d for d in devices if d["serial"] == serial)))
                    for t in left:
                        on_result(serial, t, failed_record(t, f"device lost: {reason}"))
    except KeyboardInterrupt:
        for gen in gens.values():
            with _suppress_all():
                ray.cancel(gen, force=True)
        raise


@contextmanager
def _suppress_all() -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001 - best effort while interrupted
        pass


def _row_info(row: dict[str, Any]) -> dict[str, Any]:
    """A device record from a ``farm devices`` row (for results of a device that was lost)."""
    keys = ("kind", "name", "serial", "model", "manufacturer", "soc", "abi", "profile", "android_version")
    return {"kind": row.get("kind", "android"), "name": row.get("model") or row["serial"],
            **{k: row[k] for k in keys if k in row and k not in ("kind", "name")},
            "farm_host": row.get("host")}


def _lost_reason(e: BaseException) -> str:
    """Why a device's task ended without its results, in a few words."""
    name = type(e).__name__
    known = {"NodeDiedError": "its farm node died", "WorkerCrashedError": "the farm worker process died",
             "TaskCancelledError": "cancelled", "OwnerDiedError": "the caller's connection was lost"}
    if name in known:
        return f"{known[name]} ({name})"
    text = str(e).strip().split(". ")[0].splitlines()
    return f"{name}: {text[0][:200]}" if text else name
