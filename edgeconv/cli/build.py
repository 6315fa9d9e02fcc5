"""``edgeconv build``: every artifact of one model, parity-checked against PyTorch."""
from __future__ import annotations

import click

from .common import (
    Command,
    calib_options,
    console,
    echo_json,
    formats_option,
    json_option,
    library_output_to_stderr,
    out_option,
    precisions_option,
    progress_printer,
    quiet_option,
    weights_option,
)


@click.command("build", cls=Command)
@click.argument("name")
@weights_option
@formats_option
@precisions_option
@calib_options
@click.option("--int8-io", is_flag=True, help="Full-int8 TFLite with int8 input/output (default float I/O).")
@out_option
@click.option("--force", is_flag=True, help="Rebuild even if artifacts are up to date.")
@json_option
@quiet_option
def build_cmd(name, weights, formats, precisions, calib, calib_size, int8_io, out, force, as_json, quiet):
    """Convert NAME to ONNX, TFLite and OpenVINO; check every artifact against PyTorch.

    \b
    Writes OUT/NAME/NAME.onnx, OUT/NAME/tflite/{fp32,fp16,dynamic,int8}.tflite,
    OUT/NAME/openvino/{fp32,fp16,int8}.xml and OUT/NAME/manifest.json."""
    from ..build import build

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
