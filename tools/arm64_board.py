#!/usr/bin/env python3
"""Build the arm64 board stand-in: a Debian arm64 userland that QEMU runs instruction by instruction.

Why: everything on the device side (push, ABI check, pinning, runner, parsing, output parity) must
also run on a real ARM instruction set, and the machines here are x86-64. This script makes a
small aarch64 Linux root from Debian's own arm64 packages (python3.11 and the libraries it needs,
dash/bash, coreutils, util-linux) plus aarch64 wheels of numpy and a TFLite runtime, and the tests'
ADB emulator runs its shell commands inside it with ``proot -q qemu-aarch64-static -r ROOT``.

Nothing on the machine changes: no ``dpkg --add-architecture``, no binfmt_misc. apt runs with a
private state folder (its own package lists, status and cache, ``APT::Architecture=arm64``) and
the machine's own Debian sources; packages are unpacked with ``dpkg-deb -x`` (no maintainer
scripts run, none are needed). Wheels come from pip's configured index with
``--only-binary=:all: --platform manylinux_2_X_aarch64 --python-version 3.11``.

Output: ``CACHE/<key>/root`` (key: a hash of this file and its package and wheel lists; a finished
build has ``CACHE/<key>/manifest.json`` and is reused as it is), and one site-packages folder per
runtime set in ``CACHE/<key>/sites/<name>`` (``litert``: numpy + ai-edge-litert, also installed
into the root itself; ``tflite-runtime``: numpy<2 + tflite-runtime, the module name most boards
have; ``openvino``: numpy + openvino, built on request). The emulator binds a site folder over
the root's ``/usr/local/lib/python3.11/dist-packages`` to pick the runtime a board has.

    python tools/arm64_board.py                 # build (or reuse) and print the root's path
    python tools/arm64_board.py --sites litert,tflite-runtime,openvino
    python tools/arm64_board.py --check         # run python3 -c 'import platform...' inside it

Needs ``apt-get``, ``dpkg-deb`` and pip for building, ``proot`` and ``qemu-aarch64-static`` for
running (Debian packages ``proot`` and ``qemu-user-static``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "build" / "arm64-board"
ENV_CACHE = "EDGECONV_ARM64_BOARD"  # overrides DEFAULT_CACHE
SUITE = "bookworm"  # the Debian release of the userland (glibc 2.36, Python 3.11)
GLIBC_MINOR = 36
PACKAGES = ("python3.11", "dash", "bash", "coreutils", "util-linux", "grep", "sed", "findutils",
            "libstdc++6", "libgcc-s1")
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"  # on Debian's sys.path, empty otherwise
SITES: dict[str, tuple[str, ...]] = {
    "litert": ("numpy", "ai-edge-litert"),
    "tflite-runtime": ("numpy<2", "tflite-runtime"),  # 2.14 is built against numpy 1.x
    "openvino": ("numpy", "openvino"),
}
DEFAULT_SITES = ("litert", "tflite-runtime")
MAIN_SITE = "litert"  # also unpacked into the root itself
QEMU = "qemu-aarch64-static"
_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")


class BoardError(RuntimeError):
    """The stand-in cannot be built or run here (a missing tool, a failed download)."""


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE)


def key() -> str:
    """Hash of what the root is made from: this file (the recipe) and its lists."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(json.dumps([SUITE, PACKAGES, SITES], sort_keys=True).encode())
    return h.hexdigest()[:16]


def tools_missing(for_build: bool = False) -> list[str]:
    """The host tools that are not on PATH (running needs proot and qemu; building also apt)."""
    needed = ["proot", QEMU] + (["apt-get", "dpkg-deb"] if for_build else [])
    return [tool for tool in needed if shutil.which(tool) is None]


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BoardError(f"{' '.join(argv[:3])} ... failed ({result.returncode}): {' | '.join(tail)}")
    return result


# ------------------------------------------------------------------------------------------------
# Debian packages, through a private apt state
# ------------------------------------------------------------------------------------------------
def debian_sources() -> list[tuple[str, str, str]]:
    """(URI, suite, components) of the machine's Debian sources for SUITE (deb822 and one-line
    formats), so the userland comes from the same mirror the machine uses."""
    found: list[tuple[str, str, str]] = []
    etc = Path("/etc/apt")
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
            if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes") == "no":
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    if suite.startswith(SUITE):
                        found.append((uri, suite, fields.get("Components", "main")))
    lists = [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line)
            if m and m.group(2).startswith(SUITE):
                found.append((m.group(1), m.group(2), m.group(3).split("#")[0].strip()))
    if not found:
        raise BoardError(f"no Debian {SUITE} source in /etc/apt: cannot fetch the arm64 packages")
    return list(dict.fromkeys(found))


def _apt_options(state: Path) -> list[str]:
    return [
        "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
        "-o", f"Dir::State={state}", "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::State::status={state / 'status'}", "-o", f"Dir::Cache={state / 'cache'}",
        "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={state / 'sources.list.d'}",
        "-o", f"Dir::Etc::Preferences={state / 'preferences'}",
        "-o", f"Dir::Etc::PreferencesParts={state / 'preferences.d'}",
        "-o", "Debug::NoLocking=1", "-o", "APT::Install-Recommends=0", "-q",
    ]


def fetch_debs(work: Path) -> list[tuple[str, str, Path]]:
    """Resolve PACKAGES and their dependencies for arm64, download them: (name, version, .deb)."""
    state = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").write_text("")
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    signed = f" signed-by={keyring}" if Path(keyring).is_file() else ""
    (state / "sources.list").write_text("".join(
        f"deb [arch=arm64{signed}] {uri} {suite} {components}\n" for uri, suite, components in debian_sources()))
    opts = _apt_options(state)
    _run(["apt-get", *opts, "update"], timeout=600)
    sim = _run(["apt-get", *opts, "-s", "install", *PACKAGES], timeout=300).stdout
    wanted = [m.groups() for m in map(_INST.match, sim.splitlines()) if m]
    if not wanted:
        raise BoardError("apt resolved no arm64 package (is the arm64 package list empty?)")
    debs = work / "debs"
    debs.mkdir(exist_ok=True)
    _run(["apt-get", *opts, "download", *(f"{name}={version}" for name, version in wanted)],
         cwd=debs, timeout=1200)
    out = []
    for name, version in wanted:
        base = name.split(":")[0]
        hits = sorted(debs.glob(f"{base}_*.deb"))
        if not hits:
            raise BoardError(f"apt-get download left no .deb for {name} {version}")
        out.append((name, version, hits[0]))
    return out


def unpack_debs(debs: list[tuple[str, str, Path]], root: Path) -> None:
    for _name, _version, deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], timeout=300)
    # what maintainer scripts or usrmerge would have made: sh, python3, a tmp dir, a passwd
    links = {"bin/sh": "dash", "usr/bin/python3": "python3.11"}
    for link, target in links.items():
        path = root / link
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)
    for folder in ("tmp", "var/tmp", "proc", "dev", "sys", "data", "root"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nshell:x:2000:2000::/data/local/tmp:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nshell:x:2000:\n")
    (etc / "hostname").write_text("arm64-board\n")


# ------------------------------------------------------------------------------------------------
# wheels
# ------------------------------------------------------------------------------------------------
def platform_args() -> list[str]:
    """pip's --platform for every manylinux tag the userland's glibc accepts (pip takes them
    literally: manylinux_2_28 does not imply manylinux_2_17)."""
    tags = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, GLIBC_MINOR + 1)]
    return [arg for tag in tags for arg in ("--platform", tag)]


def fetch_wheels(requirements: tuple[str, ...], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
          "--only-binary=:all:", *platform_args(), "--python-version", "3.11", "--implementation", "cp",
          "--abi", "cp311", "-d", str(dest), *requirements], timeout=1800)
    return sorted(dest.glob("*.whl"))


def unpack_wheel(wheel: Path, site: Path) -> None:
    """A wheel is a zip laid out as site-packages; keep the executable bits of its files."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            target = site / info.filename
            if ".." in Path(info.filename).parts:
                raise BoardError(f"{wheel.name}: refusing path {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode if mode else 0o644)


def site_of(folder: Path, name: str) -> Path:
    return folder / "root" / SITE_PACKAGES if name == MAIN_SITE else folder / "sites" / name


def build_site(folder: Path, name: str, work: Path) -> dict[str, list[str]]:
    site = site_of(folder, name)
    wheels = fetch_wheels(SITES[name], work / "wheels" / name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    for wheel in wheels:
        unpack_wheel(wheel, staging)
    if site.exists():
        shutil.rmtree(site)
    site.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, site)
    return {name: [w.name for w in wheels]}


# ------------------------------------------------------------------------------------------------
# the whole board
# ------------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def build(sites: tuple[str, ...] = DEFAULT_SITES, cache: Path | None = None, log=print) -> Path:
    """The folder CACHE/<key> with ``root`` and ``sites/``: reused when built before, else built.
    Returns the folder (``folder / "root"`` is the userland)."""
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise BoardError(f"unknown site {unknown[0]!r} (known: {', '.join(SITES)})")
    cache = cache or cache_dir()
    folder = cache / key()
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    t0 = time.monotonic()
    if manifest is None:
        missing = [t for t in tools_missing(for_build=True) if t in ("apt-get", "dpkg-deb")]
        if missing:
            raise BoardError(f"cannot build the arm64 userland: {', '.join(missing)} not found")
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache))
        try:
            work = partial / "work"
            log(f"arm64 board: fetching Debian {SUITE} arm64 packages ...")
            debs = fetch_debs(work)
            unpack_debs(debs, partial / "root")
            site_wheels = build_site(partial, MAIN_SITE, work)
            shutil.rmtree(work)
            manifest = {"key": folder.name, "suite": SUITE, "packages": {n: v for n, v, _ in debs},
                        "wheels": site_wheels, "built_s": round(time.monotonic() - t0, 1)}
            _write_json(partial / "manifest.json", manifest)
            if folder.exists():  # a stale, unfinished folder of the same key
                shutil.rmtree(folder)
            os.replace(partial, folder)
            for old in cache.iterdir():  # boards of an older recipe: 300 MB each
                if old != folder and (old / "manifest.json").is_file():
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log(f"arm64 board: built {folder} in {manifest['built_s']} s")
    for name in sites:
        if name in manifest["wheels"]:
            continue
        t1 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".work-", dir=folder) as work:
            manifest["wheels"].update(build_site(folder, name, Path(work)))
        _write_json(manifest_path, manifest)
        log(f"arm64 board: site {name} in {time.monotonic() - t1:.1f} s")
    return folder


def proot_argv(root: Path, binds: list[tuple[str, str]] = (), cwd: str = "/") -> list[str]:
    """``proot -q qemu-aarch64-static -r ROOT`` with host /dev and /proc, and ``binds``
    (host path, guest path); every process started inside runs as aarch64 under QEMU."""
    qemu = shutil.which(QEMU) or QEMU
    argv = ["proot", "-q", qemu, "-r", str(root), "-b", "/dev", "-b", "/proc", "-w", cwd]
    for host, guest in binds:
        argv += ["-b", f"{host}:{guest}"]
    return argv


QEMU_CPU = "cortex-a76"  # QEMU's default "max" CPU makes LiteRT's int8 kernels go wrong (see adb_emulator)


def board_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU}


def check(folder: Path, site: str = MAIN_SITE) -> str:
    binds = [] if site == MAIN_SITE else [(str(site_of(folder, site)), "/" + SITE_PACKAGES)]
    code = ("import platform, sys, numpy; print(platform.machine(), sys.version.split()[0], "
            "'numpy', numpy.__version__)")
    result = _run([*proot_argv(folder / "root", binds), "/usr/bin/python3", "-c", code],
                  env=board_env(), timeout=600)
    return result.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default=",".join(DEFAULT_SITES),
                        help=f"runtime sets to build ({', '.join(SITES)}); default %(default)s")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache folder (default ${ENV_CACHE} "
                        f"or {DEFAULT_CACHE.relative_to(REPO)})")
    parser.add_argument("--check", action="store_true", help="run python3 inside the userland")
    args = parser.parse_args(argv)
    try:
        t0 = time.monotonic()
        folder = build(tuple(s for s in args.sites.split(",") if s), args.cache,
                       log=lambda m: print(m, file=sys.stderr))
        print(f"arm64 board: ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        if args.check:
            missing = tools_missing()
            if missing:
                raise BoardError(f"cannot run the userland: {', '.join(missing)} not found "
                                 "(apt-get install proot qemu-user-static)")
            for site in args.sites.split(","):
                print(f"{site}: {check(folder, site)}", file=sys.stderr)
    except BoardError as e:
        print(f"arm64-board: {e}", file=sys.stderr)
        return 1
    print(folder / "root")
    return 0


if __name__ == "__main__":
    sys.exit(main())
