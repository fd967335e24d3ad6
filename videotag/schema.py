"""Result schema shared by the CLI, the API and the workers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Tag(BaseModel):
    class_id: int
    class_name: str
    probability: float


class VideoResult(BaseModel):
    """One video's outcome: `tags` when ok, `error` (code + reason) when not. Never both."""

    video_id: str
    source: str
    ok: bool
    tags: list[Tag] = Field(default_factory=list)
    error: dict[str, str] | None = None
    model: str | None = None
    features: dict[str, Any] | None = Field(None, description="Store location {path, video_id} when kept.")
    timings: dict[str, float] = Field(default_factory=dict)

    def videotag_format(self) -> list:
        """VideoTag's per-video JSON: [path, {"class_name", "probability", "class_id"}, ...]."""
        return [self.source] + [
            {"class_name": t.class_name, "probability": t.probability, "class_id": t.class_id} for t in self.tags
        ]


def rank(probs, names, topk: int, threshold: float | None) -> list[Tag]:
    """Top-k classes of one probability vector [C], highest first, optionally thresholded."""
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    k = min(topk, probs.shape[0])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.lexsort((idx, -probs[idx]))]  # by probability desc, ties by id
    return [
        Tag(class_id=int(i), class_name=names[int(i)], probability=round(float(probs[i]), 6))
        for i in idx
        if threshold is None or probs[i] >= threshold
    ]
