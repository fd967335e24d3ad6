"""setuptools hook; the metadata, packages and package data are in pyproject.toml.

The top-level `labels/` folder (the shipped vocabularies) is copied into built wheels as `videotag/_labels/`, so
`pip install videotag-*.whl` works outside the source tree: `videotag.core.vocab.LABELS_DIR` looks in the checkout
first, then there. (pyproject's `packages.find` cannot map a folder outside the packages; MANIFEST.in puts
labels/ in the sdist.) Editable installs skip the copy: they read the checkout's labels/.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

LABELS = Path(__file__).resolve().parent / "labels"


class BuildPyWithLabels(build_py):
    """build_py + labels/*.txt and labels/README.md -> <build>/videotag/_labels/."""

    def _label_files(self) -> list[Path]:
        if not LABELS.is_dir():  # e.g. the Dockerfile's dependency layer: no labels there
            return []
        return [p for p in sorted(LABELS.iterdir()) if p.is_file() and (p.suffix == ".txt" or p.name == "README.md")]

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "videotag" / "_labels"
        self.mkpath(str(dest))
        for f in self._label_files():
            self.copy_file(str(f), str(dest / f.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if getattr(self, "editable_mode", False) else self._label_files()
        dest = Path(self.build_lib) / "videotag" / "_labels"
        return [*super().get_outputs(include_bytecode), *(str(dest / f.name) for f in extra)]


setup(cmdclass={"build_py": BuildPyWithLabels})
