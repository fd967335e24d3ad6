"""What a person sees in an 80-column terminal: `videotag tag DIR` under a real pseudo-terminal, rendered by a
terminal emulator (pyte). One live bar naming the file in hand; results above it with no stale bar copies."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import videogen

from videotag.cli.core import short_name

REPO = Path(__file__).resolve().parents[2]
COLS, ROWS = 80, 50


def run_in_terminal(args: list[str], timeout: float = 300) -> tuple[int, bytes]:
    """Run `python -m videotag ARGS` with stdout and stderr on one 80x50 pty; (exit code, raw bytes)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {**os.environ, "COLUMNS": str(COLS), "LINES": str(ROWS), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    p = subprocess.Popen([sys.executable, "-m", "videotag", *args], stdin=follower, stdout=follower,
                         stderr=follower, cwd=REPO, env=env, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return p.wait(timeout=30), b"".join(chunks)


def screen_lines(raw: bytes) -> list[str]:
    """Everything the terminal shows, scrollback included, as rendered lines."""
    screen = pyte.HistoryScreen(COLS, ROWS, history=10_000)
    stream = pyte.ByteStream(screen)
    screen.set_mode(pyte.modes.LNM)  # a pty turns \n into \r\n; keep it so without a tty layer here
    stream.feed(raw)
    top = ["".join(ch.data for ch in (row[x] for x in range(COLS))).rstrip() for row in screen.history.top]
    return [ln for ln in [*top, *(ln.rstrip() for ln in screen.display)] if ln]


def test_tag_dir_draws_one_bar_and_clean_results_at_80_columns(tmp_path: Path) -> None:
    clips = tmp_path / "a_rather_long_directory_name_for_clips"
    clips.mkdir()
    names = [f"clip_number_{i}_with_a_long_descriptive_name.mp4" for i in range(3)]
    for n in names:
        videogen.make_video(clips / n, frames=12)
    code, raw = run_in_terminal(["tag", str(clips), "--frames", "4", "--topk", "3"])
    lines = screen_lines(raw)
    text = "\n".join(lines)
    assert code == 0, text
    bars = [ln for ln in lines if ln.startswith("tagging ")]
    assert len(bars) == 1 and "3/3" in bars[0], text  # one bar left on screen, finished; no stale copies
    for n in names:
        src = [ln for ln in lines if ln.endswith(n)]
        assert len(src) == 1, text  # each result printed once, on a line of its own
        i = lines.index(src[0])
        assert " · imagenet_framepool" in lines[i + 1] and lines[i + 2].split() == [
            "rank", "class_id", "class_name", "probability"]  # fmt: skip
    assert text.rstrip().splitlines()[-1].startswith("3 video(s): 3 ok, 0 failed")
    # While it ran, the bar named the file in hand (middle-elided to fit).
    seen = raw.decode("utf-8", "replace")
    assert short_name(names[0]) in seen and len(short_name(names[0])) == 22 and "…" in short_name(names[0])
