"""Shared fixtures: generated test clips (tests/videogen.py) and the real clips in ../shared/videos.

Test helpers import as `from videogen import make_video` (pytest puts this folder on sys.path because it holds
a conftest.py and no __init__.py) or as `from tests.videogen import make_video` (the repository root is added
below). Do not add __init__.py files under tests/: tests/extractor/__init__.py would shadow the real `extractor`
package. Test file basenames must therefore be unique across tests/.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import videogen  # noqa: E402  (needs the path set-up above when run from elsewhere)

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"

# Standard generated clips: name -> make_video keyword arguments (file suffix = container).
SAMPLE_SPECS: dict[str, dict] = {
    "h264.mp4": {"codec": "h264"},
    "h264.mov": {"codec": "h264"},
    "h264.mkv": {"codec": "h264"},
    "hevc.mp4": {"codec": "hevc"},
    "hevc.mkv": {"codec": "hevc"},
    "vp8.webm": {"codec": "vp8"},
    "vp9.webm": {"codec": "vp9"},
    "mpeg4.avi": {"codec": "mpeg4"},
    "h264_audio.mp4": {"codec": "h264", "audio": True},
    "rot90.mp4": {"codec": "h264", "rotation": 90},
    "vfr.mp4": {"codec": "h264", "vfr": True, "frames": 60},
    "short.mp4": {"codec": "h264", "frames": 7},
}


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for generated clips."""
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def video_factory(video_dir: Path) -> Callable[..., Path]:
    """`video_factory(name, **make_video_kwargs) -> Path`: make (once per session, cached by name+args) a clip.

    The name's suffix picks the container, e.g. video_factory("a.webm", codec="vp8", frames=20).
    Skips the test when this FFmpeg build lacks the encoder.
    """
    made: dict[tuple, Path] = {}

    def make(name: str, **kwargs) -> Path:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in made:
            codec = kwargs.get("codec")
            if codec and not videogen.encoder_available(codec):
                pytest.skip(f"this FFmpeg build has no encoder for {codec}")
            stem, suffix = Path(name).stem, Path(name).suffix
            path = video_dir / f"{stem}_{len(made)}{suffix}"
            made[key] = videogen.make_video(path, **kwargs)
        return made[key]

    return make


@pytest.fixture(scope="session")
def sample_videos(video_factory: Callable[..., Path]) -> dict[str, Path]:
    """name -> Path of the standard clips in SAMPLE_SPECS (40 frames, 160x120, 25 fps unless stated).

    A codec whose encoder is missing (libx265 in some builds) is left out of the dict, not failed.
    """
    out = {}
    for name, spec in SAMPLE_SPECS.items():
        if videogen.encoder_available(spec.get("codec", "h264")):
            out[name] = video_factory(name, **spec)
    return out


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """Path of the real clips (../shared/videos beside the checkout); skips when that folder is absent."""
    if not (SHARED_VIDEOS / "README.md").is_file():
        pytest.skip(f"real clips not found at {SHARED_VIDEOS} (expected ../shared/videos beside the checkout)")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def default_weights() -> Path:
    """The default models under weights/ (exported once, as `videotag setup` does)."""
    from videotag.defaults import export_defaults

    weights = REPO / "weights"
    export_defaults(weights)
    return weights
