"""``edgeconv recipe ...``: new recipes from the paper's formulas."""
from __future__ import annotations

import click

from .common import Group, echo_json, json_option, warn


@click.group("recipe", cls=Group)
def recipe_cmd() -> None:
    """Make new recipes."""


def _budget_options(flops_help: str, default_name: str):
    """--flops, --name, -o and --json: what every recipe-for-a-budget command takes."""
    def wrap(f):
        f = json_option(f)
        f = click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the recipe YAML here.")(f)
        f = click.option("--name", help=f"Name of the new recipe (default {default_name}).")(f)
        return click.option("--flops", required=True, help=flops_help)(f)
    return wrap


@recipe_cmd.command("tiny")
@_budget_options("MACs budget, e.g. 50M, 0.1G, 24000000.", "tinynet-<budget>")
def recipe_tiny(flops: str, name: str | None, output: str | None, as_json: bool) -> None:
    """A TinyNet-style recipe for a FLOPs budget (the paper's tiny formula).

    Resolution and depth are chosen first (r > d > w in importance), interpolated from TinyNet-A..E;
    then w = sqrt(c / (r^2 d)) relative to EfficientNet-B0. The MACs actually reached are measured
    from the built model and reported."""
    from ..tiny import parse_flops, tiny_recipe

    budget = parse_flops(flops)
    res = tiny_recipe(budget, name=name)
    _finish(res, output, as_json, [
        f"budget {budget / 1e6:.1f}M MACs (c = {res.c:.4f} of EfficientNet-B0)",
        f"r = {res.r:.4f} (input {res.recipe.resolution})  d = {res.d:.4f}  "
        f"w = sqrt(c / (r^2 d)) = {res.w_formula:.4f}",
        f"reached {res.macs / 1e6:.2f}M MACs ({100 * (res.macs / budget - 1):+.1f} % vs budget), "
        f"{res.params / 1e6:.2f}M params"])


@recipe_cmd.command("inverse")
@_budget_options("MACs budget, at most EfficientNet-B0's, e.g. 24M, 0.1G.", "efficientnet-inv-<budget>")
def recipe_inverse(flops: str, name: str | None, output: str | None, as_json: bool) -> None:
    """EfficientNet-B0 downsized to a FLOPs budget by the inverse giant formula (the paper's B^-n).

    One phi < 0 scales depth 1.2^phi, width 1.1^phi and resolution 1.15^phi (input rounded to a
    multiple of 8, TinyNet building rules); phi is chosen so the MACs measured on the built model
    are closest to the budget. If that is more than 6 % off, width alone is fitted at the same r and
    d, and the output says so."""
    from ..inverse import inverse_recipe
    from ..tiny import parse_flops

    res = inverse_recipe(parse_flops(flops, floor=0), name=name)
    _finish(res, output, as_json, res.lines())


def _finish(res, output: str | None, as_json: bool, lines: list[str]) -> None:
    """Warnings, the recipe written to ``output`` (atomically), then the JSON or the lines and the
    recipe itself (YAML on stdout when there is no ``output``)."""
    from ..recipe import recipe_to_yaml

    for message in res.warnings:
        warn(message)
    _write(res.recipe, output)
    if as_json:
        echo_json(res.to_dict() | {"output": output})
        return
    for line in lines:
        click.echo(line)
    click.echo(f"wrote {output}" if output else recipe_to_yaml(res.recipe))


def _write(recipe, output: str | None) -> None:
    if output:
        from ..recipe import recipe_to_yaml
        from ..util import atomic_write_text

        atomic_write_text(output, recipe_to_yaml(recipe))
