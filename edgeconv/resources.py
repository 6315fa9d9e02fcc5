"""Where the data files shipped with edgeconv live: the recipes (``recipes/*.yaml``) and the device
profiles (``devices/*.yaml``).

In a checkout they are the repository's top-level ``recipes/`` and ``devices/`` folders; the wheel
ships the same files as package data (``edgeconv/recipes``, ``edgeconv/device_profiles``, see
``pyproject.toml``), found with :mod:`importlib.resources` from any working directory.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
# folder in the repository -> package that carries it in the wheel
_PACKAGES = {"recipes": "edgeconv.recipes", "devices": "edgeconv.device_profiles"}


def _in_checkout() -> bool:
    pyproject = _CHECKOUT / "pyproject.toml"
    return pyproject.is_file() and 'name = "edgeconv"' in pyproject.read_text(errors="replace")


def bundled_dir(kind: str) -> Path:
    """The shipped ``recipes`` or ``devices`` folder (a real folder: wheels install unzipped)."""
    if kind not in _PACKAGES:
        raise ValueError(f"unknown data folder {kind!r}")
    if _in_checkout():
        return _CHECKOUT / kind
    try:
        return Path(str(resources.files(_PACKAGES[kind])))
    except ModuleNotFoundError:
        return _CHECKOUT / kind  # not installed and not a checkout: nothing there, callers say so
