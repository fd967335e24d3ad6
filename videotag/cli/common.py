"""Helpers shared by command modules: logging, settings overrides, error exits."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from videotag.errors import VideotagError
from videotag.settings import Device, Settings

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


def setup_logging(verbose: int = 0) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)], force=True
    )


def make_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with command-line overrides (None = not given)."""
    base = Settings()
    given = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=given) if given else base


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def guard(fn):
    """Turn expected errors (bad files, mismatched models) into one clear line, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VideotagError as e:
            fail(str(e))
        except KeyboardInterrupt:
            console.print("interrupted")
            sys.exit(130)

    return wrapper
