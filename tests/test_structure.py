"""The package as a user installs it and as a developer reads it: the wheel carries the recipes and
device profiles, written files get the umask's permissions, no import cycle, the channel rounding
rule at width 1.0, and a warm ``edgeconv models`` that needs no torch."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeconv.recipe import load_recipe, recipe_names, resolve, round_channels

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edgeconv"


def test_installed_wheel_finds_recipes_and_profiles_from_anywhere(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(wheels), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("edgeconv-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                    "--target", str(target), str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECONV_RECIPES", "EDGECONV_DEVICES")}
    env["PYTHONPATH"] = str(target)
    code = ("import edgeconv, sys; from edgeconv.devices import load_profiles\n"
            "print(edgeconv.__file__); print(sorted(p.name for p in load_profiles()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=elsewhere).stdout.splitlines()
    assert out[0].startswith(str(target))  # the installed copy, not this checkout
    assert json.loads(out[1].replace("'", '"')) == sorted(p.stem for p in (REPO / "devices").glob("*.yaml"))
    assert len(json.loads(out[1].replace("'", '"'))) == 3
    models = subprocess.run([sys.executable, "-m", "edgeconv.cli", "models", "--json"], capture_output=True,
                            text=True, env=env, cwd=elsewhere)
    assert models.returncode == 0, models.stderr
    names = [r["name"] for r in json.loads(models.stdout)]
    assert len(names) == 22 and sorted(names) == sorted(recipe_names())
    # a user's own recipe folder still wins
    own = tmp_path / "mine"
    own.mkdir()
    (own / "my-net.yaml").write_text((REPO / "recipes" / "tinynet-e.yaml").read_text().replace(
        "name: tinynet-e", "name: my-net"))
    mine = subprocess.run([sys.executable, "-m", "edgeconv.cli", "models", "--json"], capture_output=True,
                          text=True, env=dict(env, EDGECONV_RECIPES=str(own)), cwd=elsewhere, check=True)
    assert [r["name"] for r in json.loads(mine.stdout)] == ["my-net"]


def test_written_files_get_the_umask_permissions(tmp_path):
    from click.testing import CliRunner

    from edgeconv.cli import cli
    from edgeconv.util import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        r = CliRunner().invoke(cli, ["recipe", "tiny", "--flops", "50M", "-o", str(tmp_path / "r.yaml")])
        assert r.exit_code == 0, r.output
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.yaml").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "r.yaml"]  # no temp files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """edgeconv modules that ``module`` imports anywhere (also inside functions), except under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edgeconv"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("edgeconv"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_no_import_cycles():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how a package is assembled, not a cycle
    for m in graph:
        graph[m] = {i for i in graph[m] if not (modules[m].name == "__init__.py" and i.startswith(m + "."))}
    cycles = []
    state: dict[str, int] = {}

    def walk(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                walk(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert cycles == []
    assert len(graph) > 30 and any(graph.values())  # the walk saw the package


def test_import_cycle_detector_sees_one():
    """The checker above is not blind: the same walk over a made-up graph finds the cycle."""
    tree = ast.parse("from .b import x\n")
    assert "edgeconv.b" in _imports_from(tree, "edgeconv.a")


def _imports_from(tree: ast.AST, module: str) -> set[str]:
    path = REPO / "edgeconv" / "_probe.py"
    path.write_text(ast.unparse(tree))
    try:
        return _imports(path, module)
    finally:
        path.unlink()


def test_round_channels_rounds_at_width_one_as_timm():
    assert round_channels(20, 1.0) == 24 and round_channels(32, 1.0) == 32
    assert round_channels(20, 1.0, divisor=16) == 32 and round_channels(12, 1.0, divisor=8) == 16
    from dataclasses import replace

    r = load_recipe("efficientnet-b0")
    stages = list(r.stages)
    stages[0] = replace(stages[0], channels=20)
    arch = resolve(replace(r, stages=stages))
    assert arch.stages[0].out_chs == 24


@pytest.mark.parametrize("family", [None])
def test_warm_models_json_imports_no_torch(tmp_path, family):
    env = dict(os.environ, EDGECONV_CACHE=str(tmp_path / "cache"))
    code = ("import sys, json\nfrom edgeconv.cli import cli\n"
            "try:\n    cli(['models', '--json'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, file=sys.stderr)")
    cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "TORCH True" in cold.stderr and "TORCH False" in warm.stderr
    assert json.loads(cold.stdout) == json.loads(warm.stdout)  # the cache gives the measured counts
    assert len(json.loads(warm.stdout)) == 22
    # a recipe that changes is measured again (cache keyed by content)
    cache = json.loads((tmp_path / "cache" / "counts.json").read_text())
    assert len(cache["counts"]) == 22
