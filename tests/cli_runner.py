"""Run `videotag` commands in process (typer's CliRunner), failing the test with the traceback of any error that
is not a clean exit, and on an unexpected exit code."""

from __future__ import annotations

import traceback

from typer.testing import CliRunner

from videotag.cli import _load, app

_load()


def vt(*args: object, code: int = 0) -> str:
    """`videotag ARGS...` -> its output; asserts the exit code is `code`."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(r.exception)) + r.output)
    assert r.exit_code == code, r.output
    return r.output
