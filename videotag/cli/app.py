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
    rich_markup_mode=None,  # help texts are plain: "[default: 300]" must print as written
)


def _version(value: bool) -> None:
    """`--version`: print it and stop."""
    if value:
        from videotag import __version__

        typer.echo(f"videotag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Large-scale video tagging: decode, sample frames, CNN features (HDF5), sequence model, ranked tags."""
