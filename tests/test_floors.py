"""Every import runs downward (docs/architecture.md).

    3 doors     videotag.cli (+ videotag.__main__), workers, api
    2 pipeline  videotag.* other than core and cli (inputs, pipeline, tagger, visualize, datasets, ...)
    1 stages    extractor, predictor            (siblings: neither imports the other)
    0 ground    videotag.core

A module may import its own floor or a lower one. Among the doors, `workers` is the bottom one: it imports neither
`api` nor `videotag.cli`, and those two do not import each other. Every Import/ImportFrom statement counts,
inside functions and `if TYPE_CHECKING:` blocks too, and each of ours must name a module that exists (an import
of an old path, say `videotag.jobs`, fails here rather than at run time).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("videotag", "extractor", "predictor", "workers", "api")
FLOOR_NAMES = {0: "ground (videotag.core)", 1: "extractor/predictor", 2: "pipeline (videotag.*)", 3: "doors"}


def floor_of(module: str) -> int | None:
    """0 ground, 1 extractor/predictor, 2 pipeline, 3 doors; None for anything not ours (stdlib, third party)."""
    top = module.split(".", 1)[0]
    if top not in PACKAGES:
        return None
    if module == "videotag.core" or module.startswith("videotag.core."):
        return 0
    if top in ("extractor", "predictor"):
        return 1
    if top in ("workers", "api") or module in ("videotag.cli", "videotag.__main__") or module.startswith(
        "videotag.cli."
    ):
        return 3
    return 2


def door_of(module: str) -> str | None:
    """Which door a floor-3 module belongs to: workers, api or cli."""
    if module.startswith(("videotag.cli", "videotag.__main__")):
        return "cli"
    top = module.split(".", 1)[0]
    return top if top in ("workers", "api") else None


def _is_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in `tree`; `from pkg import name` counts as `pkg.name` when that is a module."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if a.name != "*" and _is_module(sub) else base))
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports in `source` (the text of `module`) that break the floor rules, as readable lines."""
    mine = floor_of(module)
    assert mine is not None, module
    bad = []
    for line, target in imported_modules(ast.parse(source), module, is_package):
        theirs = floor_of(target)
        if theirs is None:
            continue
        why = None
        if not _is_module(target):
            why = "no such module (moved? see docs/architecture.md)"
        elif theirs > mine:
            why = f"{FLOOR_NAMES[mine]} imports {FLOOR_NAMES[theirs]}"
        elif mine == theirs == 1 and module.split(".")[0] != target.split(".")[0]:
            why = "extractor and predictor are siblings: neither imports the other"
        elif mine == theirs == 3 and door_of(module) != door_of(target) and door_of(target) != "workers":
            why = f"door {door_of(module)} imports door {door_of(target)} (only workers is imported by doors)"
        if why:
            bad.append(f"{module}:{line} imports {target}: {why}")
    return bad


def our_modules() -> list[tuple[str, Path]]:
    """Every .py file of our packages with its dotted module name."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return out


def test_classifier() -> None:
    assert floor_of("videotag.core.errors") == floor_of("videotag.core") == 0
    assert floor_of("extractor.decode") == floor_of("predictor.onnx_predictor") == 1
    assert floor_of("videotag") == floor_of("videotag.pipeline") == floor_of("videotag.inputs") == 2
    assert floor_of("videotag.importers.paddle_videotag") == 2
    assert floor_of("videotag.cli.core") == floor_of("workers.submit") == floor_of("api.main") == 3
    assert floor_of("videotag.__main__") == 3
    assert floor_of("numpy") is None and floor_of("videotagger") is None and floor_of("apis") is None


@pytest.mark.parametrize(
    ("module", "source", "needle"),
    [
        ("videotag.core.settings", "def f():\n    from videotag.pipeline import tag_sources\n", "ground"),
        ("videotag.core.results", "import extractor.decode\n", "ground"),
        ("videotag.core.netguard", "from videotag import pipeline\n", "ground"),
        ("predictor.data", "from workers.jobstore import JobStore\n", "extractor/predictor imports doors"),
        ("predictor.data", "from extractor.decode import probe\n", "siblings"),
        ("extractor.engine", "import predictor.onnx_predictor as p\n", "siblings"),
        ("videotag.pipeline", "from videotag.cli.common import fail\n", "pipeline"),
        ("videotag.tagger", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import api.main\n", "pipeline"),
        ("workers.tasks", "from api.deps import AppState\n", "door workers imports door api"),
        ("api.routes.jobs", "from videotag.cli import main\n", "door api imports door cli"),
        ("videotag.core.vocab", "from . import hashing\nfrom .. import tagger\n", "videotag.tagger"),
        ("videotag.cli.stage2", "def f():\n    from videotag.manifest import read_manifest\n", "no such module"),
        ("api.deps", "from videotag.jobs import JobStore\n", "no such module"),
    ],
)
def test_a_violation_is_caught(module: str, source: str, needle: str) -> None:
    bad = violations(source, module)
    assert bad and needle in bad[-1], bad


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("videotag.core.feature_store", "from videotag.core.errors import StoreError\nimport h5py\n"),
        ("predictor.train", "from videotag.core.vocab import Vocabulary\nfrom predictor.models import create_model\n"),
        ("videotag.pipeline", "from extractor.engine import extract_many\nfrom predictor import onnx_predictor\n"),
        ("api.routes.batches", "from workers.submit import submit_batch\nfrom videotag.inputs import is_url\n"),
        ("videotag.cli.service_commands", "def f():\n    from workers.supervisor import Service\n"),
    ],
)
def test_downward_imports_pass(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_no_module_imports_a_higher_floor() -> None:
    modules = our_modules()
    assert len(modules) > 50 and any(m == "videotag.core.settings" for m, _ in modules)
    bad = []
    for module, path in modules:
        bad += violations(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
    assert not bad, "imports against the floors (docs/architecture.md):\n" + "\n".join(bad)


def test_importing_the_ground_loads_nothing_above_it() -> None:
    """`videotag/__init__.py` is lazy: importing every videotag.core module loads no higher floor."""
    names = sorted(m for m, _ in our_modules() if floor_of(m) == 0)
    code = (
        f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'extractor', 'predictor', 'workers', 'api'}"
        " or (m.startswith('videotag.') and not m.startswith('videotag.core'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
