"""``edgeconv farm ...``: a device farm on Ray (head, join, devices, stop). The work is done by
:mod:`edgeconv.bench.farm`; Ray is imported by these commands only."""
from __future__ import annotations

from pathlib import Path

import click

from .common import Group, echo_json, json_option

token_option = click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
                            help="The farm's token (default: the token file in this host's farm folder).")


def _token(token_file: str | None) -> Path | None:
    return Path(token_file) if token_file else None


@click.group("farm", cls=Group)
def farm_cmd() -> None:
    """A farm of devices attached to many hosts (Ray). Start a head, join hosts with devices, then
    `edgeconv bench NAME --farm HEAD:PORT`."""


@farm_cmd.command("head")
@click.option("--listen", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address to listen on; use the host's LAN address so that other hosts can join.")
@click.option("--port", default=6380, show_default=True, type=click.IntRange(1, 65535))
@token_option
@json_option
def farm_head(listen: str, port: int, token_file: str | None, as_json: bool) -> None:
    """Start this host's farm head (no dashboard, token authentication on)."""
    from ..bench.farm import start_head

    rec = start_head(listen, port, _token(token_file))
    if as_json:
        echo_json({k: rec[k] for k in ("address", "pid", "token_file", "log")})
        return
    click.echo(f"farm head at {rec['address']} (pid {rec['pid']}, log {rec['log']})")
    if rec["token"]:
        click.echo(f"token (shown once; kept in {rec['token_file']}, mode 0600): {rec['token']}")
    click.echo(f"on each host with devices: copy the token file there, then\n"
               f"  edgeconv farm join {rec['address']} --token-file TOKEN_FILE")


@farm_cmd.command("join")
@click.argument("address")
@token_option
@json_option
def farm_join(address: str, token_file: str | None, as_json: bool) -> None:
    """Offer this host's ADB devices (its adb server's) to the farm at ADDRESS (HOST:PORT)."""
    from ..bench.farm import join

    rec = join(address, _token(token_file))
    if as_json:
        echo_json({"address": rec["address"], "pid": rec["pid"], "log": rec["log"], "devices": rec["devices"]})
        return
    serials = ", ".join(d["serial"] for d in rec["devices"])
    click.echo(f"joined {address} (pid {rec['pid']}): {len(rec['devices'])} device(s): {serials}")


@farm_cmd.command("devices")
@click.option("--farm", "address", required=True, metavar="HOST:PORT", help="The farm's head.")
@token_option
@json_option
def farm_devices_cmd(address: str, token_file: str | None, as_json: bool) -> None:
    """Every device of the farm: host, serial, model, SoC, ABI, profile, busy."""
    from ..bench.farm import connected, farm_devices

    with connected(address, _token(token_file)) as ray:
        rows = farm_devices(ray)
    if as_json:
        echo_json({"farm": address, "devices": rows})
        return
    from rich.table import Table

    from .common import console

    table = Table(title=f"farm {address}: {len(rows)} device(s)")
    for col in ("host", "serial", "state", "model", "soc", "abi", "profile", "busy"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c) if r.get(c) is not None else "-") for c in
                        ("host", "serial", "state", "model", "soc", "abi", "profile")),
                      "busy" if r["busy"] else "free")
    console().print(table)


@farm_cmd.command("stop")
@json_option
def farm_stop(as_json: bool) -> None:
    """Stop the farm head and nodes that this host started (by their process ids only)."""
    from ..bench.farm import stop

    stopped = stop()
    if as_json:
        echo_json({"stopped": [{k: r.get(k) for k in ("role", "pid", "address")} for r in stopped]})
        return
    if not stopped:
        click.echo("no farm process started here is running")
    for r in stopped:
        click.echo(f"stopped {r['role']} pid {r['pid']} ({r['address']})")
