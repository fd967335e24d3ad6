"""The preview strip: made once per job even when the API and the extract worker ask for it at the same time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import videogen

from videotag.thumbnails import cached_thumbnails, thumbnails


def test_concurrent_makers_of_one_strip_all_succeed(tmp_path: Path) -> None:
    clip = videogen.make_video(tmp_path / "v.mp4", frames=30, size=(160, 120), fps=10)
    for trial in range(6):
        out = tmp_path / "thumbs" / f"job{trial}"
        with ThreadPoolExecutor(4) as pool:  # the API's first request + the worker (+ page reloads)
            strips = list(pool.map(thumbnails, [str(clip)] * 4, [out] * 4))
        assert all(len(s) == 8 for s in strips)
        assert [i for i, _ in cached_thumbnails(out)] == [i for i, _ in strips[0]]
        assert sorted(p.name for p in out.parent.iterdir()) == [f"job{t}" for t in range(trial + 1)]  # no .tmp left
