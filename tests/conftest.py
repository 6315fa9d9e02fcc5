"""Shared fixtures. The shared ImageNet sample is found at $EDGECONV_SAMPLE or ../shared/data/imagenet-sample."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_adb"]

REPO = Path(__file__).resolve().parent.parent

# Several tests press Ctrl-C on an edgeconv child process (SIGINT) and expect exit code 130. A
# process started in the background of a non-interactive shell (`make test &`) has SIGINT ignored,
# children inherit "ignored" and Python then installs no KeyboardInterrupt handler: those children
# would finish with 0. The test session restores the default so its children see what a user's
# terminal gives them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def sample_dir() -> Path:
    env = os.environ.get("EDGECONV_SAMPLE")
    p = Path(env) if env else REPO.parent / "shared" / "data" / "imagenet-sample"
    if not (p / "labels.tsv").exists():
        pytest.fail(f"shared ImageNet sample not found at {p} (set EDGECONV_SAMPLE)")
    return p


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    return sample_dir()


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Never touch the user's results DB or build folder from tests."""
    monkeypatch.setenv("EDGECONV_DB", str(tmp_path_factory.mktemp("db") / "results.db"))
    monkeypatch.setenv("EDGECONV_CACHE", str(tmp_path_factory.mktemp("cache")))
