"""`videotag` command line. Each module in _COMMAND_MODULES registers its commands on `app`."""

from __future__ import annotations

import importlib

from videotag.cli.app import app

# One module per group of commands; add yours here.
_COMMAND_MODULES = [
    "videotag.cli.core",  # setup, tag, extract, predict
    "videotag.cli.stage2",  # train, evaluate, export, check-dataset, ensemble
    "videotag.cli.service_commands",  # serve, worker, submit, status
    "videotag.cli.import_videotag",  # import-videotag
    "videotag.cli.dataset",  # dataset
    "videotag.cli.optimize",  # optimize
    "videotag.cli.gc",  # gc
]


def _load() -> None:
    """Import every command module so its commands register on `app`."""
    for name in _COMMAND_MODULES:
        importlib.import_module(name)


def main() -> None:
    """The `videotag` console script: register the commands, run typer."""
    _load()
    app()


__all__ = ["app", "main"]
