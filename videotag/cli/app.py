"""The typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="videotag",
    help=(
        "Large-scale video tagging: decode, sample frames, CNN features (HDF5), sequence model, ranked tags.\n\n"
        "Start with `videotag setup` (exports the default model to weights/), then `videotag tag VIDEO...`."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
