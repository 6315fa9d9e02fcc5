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
# folder in the repository -> folder inside the installed package
_PACKAGED = {"recipes": "recipes", "devices": "device_profiles"}


def _in_checkout() -> bool:
    pyproject = _CHECKOUT / "pyproject.toml"
    return pyproject.is_file() and 'name = "edgeconv"' in pyproject.read_text(errors="replace")


def bundled_dir(kind: str) -> Path:
    """The shipped ``recipes`` or ``devices`` folder (a real folder: wheels install unzipped)."""
    if kind not in _PACKAGED:
        raise ValueError(f"unknown data folder {kind!r}")
    if _in_checkout():
        return _CHECKOUT / kind
    return Path(str(resources.files("edgeconv") / _PACKAGED[kind]))
