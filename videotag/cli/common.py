"""Helpers shared by command modules: logging, settings overrides, error exits."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from videotag.core.errors import VideotagError
from videotag.core.settings import Device, Settings

console = Console(stderr=True)
out = Console()

DeviceOpt = Annotated[
    Device | None,
    typer.Option(
        "--device",
        help="Where the models run: auto (a GPU when usable, else the CPU), cpu, cuda or tensorrt; cuda/tensorrt "
        "are an error where unavailable, never a CPU fallback [default: VIDEOTAG_DEVICE, else auto].",
    ),
]

Decoders = Annotated[
    int | None,
    typer.Option(
        "--decoders", help="Videos decoded at once, feeding one CNN session with batches drawn across them "
        "[default: automatic: CPU 1 per 4 cores, GPU half the cores, 2-8].",
    ),
]
PredictBatch = Annotated[
    int | None,
    typer.Option(
        "--predict-batch", help="Waiting videos a predict worker runs as one model batch, one thread each "
        "[default: 16; 1 = one at a time, prefork processes].",
    ),
]

# -v means the same in every command: more log output (never a short form of another option).
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: info logs, -vv: debug.")]


def setup_logging(verbose: int = 0) -> None:
    """Log level from the -v count (none: warnings, -v: info, -vv: debug), printed through the shared console."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)], force=True
    )


def make_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with command-line overrides (None = not given), validated like the environment:
    a bad value (`--topk -1`, `--frames 0`, `--threshold 2`) exits 2 with one line naming it, before any work."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(Settings.model_fields)
    assert not unknown, f"not settings: {unknown}"  # a programming error, not a user's
    try:
        return Settings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        where = f"--{field.replace('_', '-')}" if field in given else f"VIDEOTAG_{field.upper()}"
        fail(f"{where}: {escape(err['msg'])} (got {err.get('input')!r})")
        raise AssertionError("unreachable") from None


def fail(message: str, code: int = 2) -> None:
    """Print one red error line and exit with `code` (2: bad usage or input)."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, however long
    raise typer.Exit(code)


def guard(fn):
    """The one error handler of every command: expected errors (bad input files and options, mismatched models,
    unreadable paths) -> one `error:` line and exit 2, never a traceback; Ctrl-C -> exit 130."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VideotagError, ValueError, OSError) as e:
            fail(escape(str(e)))
        except KeyboardInterrupt:
            console.print("interrupted")
            sys.exit(130)

    return wrapper
