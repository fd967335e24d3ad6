"""Vocabularies: one class name per line, id = 0-based line number (VideoTag's label file format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from videotag.core.hashing import sha256_bytes


def _labels_dir() -> Path:
    """The shipped vocabularies: the checkout's `labels/` (source, editable install), else the copy a wheel
    installs as package data (`videotag/_labels/`, mapped from `labels/` in setup.py)."""
    checkout = Path(__file__).resolve().parents[2] / "labels"
    if (checkout / "imagenet1k.txt").is_file():
        return checkout
    return Path(__file__).resolve().parents[1] / "_labels"


LABELS_DIR = _labels_dir()
# VideoTag's 3396 labels as released (Chinese) and our English translation: same ids, line for line.
VIDEOTAG_LABELS = {"zh": LABELS_DIR / "videotag_3396_zh.txt", "en": LABELS_DIR / "videotag_3396_en.txt"}


@dataclass(frozen=True)
class Vocabulary:
    names: tuple[str, ...]

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        text = Path(path).read_text(encoding="utf-8-sig")
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # tolerate trailing blank lines only
            lines.pop()
        names = tuple(line.strip() for line in lines)
        if not names:
            raise ValueError(f"vocabulary {path} is empty")
        if any(not n for n in names):
            i = next(i for i, n in enumerate(names) if not n)
            raise ValueError(f"vocabulary {path}: line {i + 1} is blank (ids are line numbers)")
        return cls(names)

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.names) + "\n", encoding="utf-8")

    @property
    def sha256(self) -> str:
        """Identity of the label set: independent of trailing newline / CRLF."""
        return sha256_bytes("\n".join(self.names).encode("utf-8"))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> str:
        return self.names[i]

    def ids_of(self, name: str) -> list[int]:
        """All ids carrying `name` (VideoTag's label_3396 has 10 duplicated names)."""
        return [i for i, n in enumerate(self.names) if n == name]
