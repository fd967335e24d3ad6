"""The one input parser (videotag.inputs) and the submit path's use of it: a directory, a filelist and a URL mean
the same for `tag`, `submit`, the Tagger and POST /v1/batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from videotag.core.errors import VideotagError
from videotag.inputs import expand_inputs, is_directory, is_url, parse_filelist, read_filelist
from workers.submit import NothingToSubmit, absolute_paths, batch_sources


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ("b.mp4", "a.MKV", "sub/c.webm", "sub/deeper/d.mov", "notes.txt", "sub/e.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_parse_filelist_skips_blank_and_comment_lines() -> None:
    text = "\ufeff# header\n/v/a b.mp4\r\n\n   \n  # indented comment\nvideos/视频.mkv\nhttps://h/x.webm\n"
    assert parse_filelist(text) == ["/v/a b.mp4", "videos/视频.mkv", "https://h/x.webm"]
    assert parse_filelist("") == [] and parse_filelist("# only\n") == []


def test_read_filelist_errors(tmp_path: Path) -> None:
    with pytest.raises(VideotagError, match="cannot read filelist"):
        read_filelist(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(VideotagError, match="not UTF-8"):
        read_filelist(tmp_path / "bin.txt")


def test_expand_inputs(tree: Path) -> None:
    flist = tree / "list.txt"
    flist.write_text(f"# from a list\n{tree / 'sub'}\nmissing.mp4\n", encoding="utf-8")
    got = expand_inputs([str(tree / "b.mp4"), "http://h/v.mp4", str(tree / "empty"), str(tree)], flist)
    every = sorted(str(tree / r) for r in ("a.MKV", "b.mp4", "sub/c.webm", "sub/deeper/d.mov"))
    sub = [str(tree / "sub/c.webm"), str(tree / "sub/deeper/d.mov")]
    assert got == [str(tree / "b.mp4"), "http://h/v.mp4", *every, *sub, "missing.mp4"]
    assert is_url("https://x") and not is_url("httpx/a.mp4")
    long = "0" * 5000  # ENAMETOOLONG: not a directory, kept as an item (reported as missing later)
    assert not is_directory(long) and expand_inputs([long]) == [long] and is_directory(str(tree / "sub"))


def test_batch_sources_is_the_same_expansion(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert batch_sources(["sub", "http://h/v.mp4"], check=absolute_paths) == [
        *expand_inputs([str(tree / "sub")]),
        "http://h/v.mp4",
    ]
    seen: list[tuple[list[str], str]] = []

    def check(items: list[str], what: str) -> list[str]:
        seen.append((list(items), what))
        return items

    assert batch_sources(["b.mp4"], check=check) == ["b.mp4"] and seen == [(["b.mp4"], "line")]
    seen.clear()
    assert batch_sources(["sub"], check=check) == expand_inputs(["sub"])
    assert [w for _, w in seen] == ["line", "found file"]  # what a directory held is checked too
    with pytest.raises(NothingToSubmit, match="no video files"):
        batch_sources(["empty"])
    with pytest.raises(NothingToSubmit):
        batch_sources([])
