"""Result schema shared by the CLI, the API and the workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field


class Tag(BaseModel):
    """One ranked class. Unpacks like the tuple `(class_id, class_name, probability)`:
    `cid, name, p = tag`, `tuple(tag)`, `tag[1]`."""

    class_id: int
    class_name: str
    probability: float

    def as_tuple(self) -> tuple[int, str, float]:
        return (self.class_id, self.class_name, self.probability)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  (pydantic iterates (field, value) pairs)
        return iter(self.as_tuple())

    def __getitem__(self, i: int) -> Any:
        return self.as_tuple()[i]

    def __len__(self) -> int:
        return 3


class VideoResult(BaseModel):
    """One video's outcome: `tags` when ok, `error` (code + reason) when not. Never both. `warnings` may come
    with either (only in `results.jsonl` and the API's result, not in VideoTag-format JSON)."""

    video_id: str
    source: str
    ok: bool
    tags: list[Tag] = Field(default_factory=list)
    error: dict[str, str] | None = None
    warnings: list[str] = Field(
        default_factory=list, description="What decoding found odd but survived (e.g. a file that looks truncated)."
    )
    model: str | None = None
    features: dict[str, Any] | None = Field(None, description="Store location {path, video_id} when kept.")
    timings: dict[str, float] = Field(default_factory=dict)

    def __str__(self) -> str:
        if not self.ok:
            err = self.error or {}
            return f"{self.source}: error {err.get('code', '?')}: {err.get('reason', '')}"
        top = ", ".join(f"{t.class_name} {t.probability:.3f}" for t in self.tags[:5])
        return f"{self.source}: {top or 'no tags'}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the `results.jsonl` / API record): video_id, source, ok, tags, error, ..."""
        return self.model_dump(mode="json")

    def save_json(self, path: str | Path, format: Literal["result", "videotag"] = "result") -> Path:
        """Write this result as JSON: `result` = `to_dict()`, `videotag` = VideoTag's per-video list. Returns path."""
        data = self.to_dict() if format == "result" else self.videotag_format()
        path = Path(path)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

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
