"""edgeconv never phones home: an OpenVINO int8 build (NNCF, OpenVINO's converter, ONNX Runtime for
parity) and a host benchmark, run in a network namespace of their own where only loopback exists,
open no socket to any other address - not even a DNS lookup. Every connect() of every process and
thread is seen by strace. (Without edgeconv's switches, NNCF/OpenVINO and ONNX Runtime each try to
resolve their analytics hosts.)"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

CONNECT = re.compile(r"connect\(\d+, \{sa_family=(AF_INET6?), (.*?)\}")


def _netns_available() -> str | None:
    if shutil.which("strace") is None:
        return "strace is not installed (.ci/run installs it)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip not installed"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"the kernel refuses unshare -n: {probe.stderr.decode().strip()}"


def non_loopback_connects(trace: str) -> list[str]:
    bad = []
    for family, addr in CONNECT.findall(trace):
        host = re.search(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', addr)
        ip = next((g for g in host.groups() if g), "") if host else ""
        if not (ip.startswith("127.") or ip == "::1"):
            bad.append(f"{family} {addr}")
    return bad


def test_trace_parser_sees_a_dns_attempt():
    line = ('7553  connect(11, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) '
            '= -1 ENETUNREACH\n4  connect(3, {sa_family=AF_INET, sin_port=htons(5037), '
            'sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n')
    assert non_loopback_connects(line) == ['AF_INET sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")']


@pytest.mark.slow
def test_build_and_bench_open_no_socket_beyond_loopback(tmp_path):
    why = _netns_available()
    if why:
        pytest.skip(why)
    trace = tmp_path / "connects"
    out = tmp_path / "out"
    py = sys.executable
    script = (
        "ip link set lo up && "
        f"strace -f -qq -e trace=connect -o {trace} sh -c '"
        f"{py} -m edgeconv.cli build tinynet-e --out {out} --formats openvino --precisions fp32,int8 "
        "--calib-size 8 -q && "
        f"{py} -m edgeconv.cli bench --artifacts {out}/tinynet-e --runtime openvino,onnxruntime "
        f"--precisions fp32 --runs 5 --warmup 1 --db {tmp_path}/r.db'"
    )
    # as a user's shell would have it: not in CI (NNCF and OpenVINO send nothing when CI=true)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "ORT_DISABLE_TELEMETRY")}
    r = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = trace.read_text()
    assert "connect(" in text  # strace saw the processes (adb-free: their AF_UNIX lookups at least)
    assert (out / "tinynet-e" / "openvino" / "int8.xml").exists()
    assert non_loopback_connects(text) == []
