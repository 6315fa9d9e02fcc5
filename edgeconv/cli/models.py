"""``edgeconv models`` and ``edgeconv models show``: the zoo and one model's resolved architecture."""
from __future__ import annotations

import click

from .common import Group, console, echo_json, json_option


@click.group("models", cls=Group, invoke_without_command=True)
@json_option
@click.option("--family", help="Only this family (tinynet, efficientnet, efficientnet-lite, ...).")
@click.pass_context
def models_cmd(ctx: click.Context, as_json: bool, family: str | None) -> None:
    """List the model zoo (params and MACs measured from the built PyTorch modules)."""
    if ctx.invoked_subcommand is not None:
        return
    from ..zoo import zoo_table

    rows = zoo_table(family=family)
    if as_json:
        echo_json(rows)
        return
    from rich.table import Table

    t = Table(title="edgeconv model zoo", title_justify="left")
    for col, just in (("name", "left"), ("family", "left"), ("input", "right"), ("params", "right"),
                      ("MACs", "right"), ("paper top-1", "right"), ("paper FLOPs", "right"),
                      ("source", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["name"], r["family"], str(r["resolution"]), f"{r['params'] / 1e6:.2f}M",
                  f"{r['macs'] / 1e6:.1f}M", f"{r['paper_top1']:.1f}" if r["paper_top1"] else "-",
                  r["paper_flops"] or "-", r["source"] or "")
    console().print(t)


@models_cmd.command("show")
@click.argument("name")
@json_option
def models_show(name: str, as_json: bool) -> None:
    """The resolved architecture of NAME (a zoo name or a recipe .yaml path)."""
    from ..zoo import describe

    info = describe(name)
    if as_json:
        echo_json(info)
        return
    from rich.table import Table

    c = console()
    c.print(f"[bold]{info['name']}[/bold]  ({info['family']})  {info['description']}")
    c.print(f"input {info['resolution']}x{info['resolution']}  width x{info['width']}  depth "
            f"x{info['depth']} ({info['depth_rounding']})  activation {info['activation']}  "
            f"padding {info['padding']}  BN eps {info['bn_eps']:g}")
    t = Table()
    for col in ("stage", "block", "repeats", "kernel", "stride", "expansion", "channels", "SE",
                "output"):
        t.add_column(col, justify="right")
    t.add_row("stem", "conv3x3", "1", "3", "2", "-", str(info["stem_channels"]), "-",
              f"{info['stem_output']}")
    for i, s in enumerate(info["stages"]):
        t.add_row(str(i), s["block"], str(s["repeats"]), str(s["kernel"]), str(s["stride"]),
                  f"{s['expansion']:g}", str(s["channels"]),
                  f"{s['se_ratio']:g} ({_span(s['se_channels'])})" if s["se_ratio"] else "-", s["output"])
    t.add_row("head", "conv1x1", "1", "1", "1", "-", str(info["head_channels"]), "-", "pool+fc "
              f"{info['num_classes']}")
    c.print(t)
    c.print(f"params {info['params']:,}   MACs {info['macs'] / 1e6:.2f}M")


def _span(xs: list[int]) -> str:
    return str(xs[0]) if min(xs) == max(xs) else f"{min(xs)}-{max(xs)}"
