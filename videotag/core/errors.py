"""Errors with a machine-readable code and a human reason, so bad input is reported, never dropped."""

from __future__ import annotations


class VideotagError(Exception):
    """Base class for all errors raised on purpose by videotag."""


class VideoError(VideotagError):
    """A video could not be turned into features. `code` is stable; `reason` says what/where/why."""

    CODES = (
        "missing",  # path does not exist
        "empty",  # zero-byte file
        "unreadable",  # permission / I/O error
        "not_a_video",  # not a media container at all
        "audio_only",  # container has no video stream
        "unsupported_codec",  # video stream whose codec cannot be decoded
        "truncated",  # container/stream cut short; decoding failed part-way
        "no_frames",  # a video stream, but zero decodable frames
        "download_failed",  # http(s) input could not be fetched
        "invalid_input",  # anything else wrong with the input itself
    )

    def __init__(self, source: str, code: str, reason: str) -> None:
        assert code in self.CODES, code
        self.source, self.code, self.reason = source, code, reason
        super().__init__(f"{source}: {code}: {reason}")

    def to_dict(self) -> dict:
        return {"source": self.source, "code": self.code, "reason": self.reason}


class ModelMismatchError(VideotagError):
    """A model, a weights file, a vocabulary or a feature store do not belong together."""


class ManifestError(VideotagError):
    """A model manifest is missing, malformed, or does not match its weights file."""


class StoreError(VideotagError):
    """A feature store file is malformed, or a record is missing."""


class StageTimeout(VideotagError):
    """A stage ran past its time limit; the work was cancelled (str: what exceeded which limit)."""
