"""The library door: `from videotag import Tagger` on generated clips, the device setting, and a wheel install.

The Tagger must be the CLI's pipeline (tag_sources / predict_store / load_models), so these tests check the
library's contract: one result per input in order, errors as records, extract + predict == tag, models loaded once,
strict devices, no `.env` from the working directory, and a non-editable install run from elsewhere.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from videotag import Tag, Tagger, VideoResult, VideotagError, pipeline
from videotag.core import onnx_sessions, settings
from videotag.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
FRAMES = 8


@pytest.fixture(scope="module")
def tagger(default_weights: Path) -> Tagger:
    return Tagger(frames=FRAMES, topk=5, weights_dir=default_weights, device="auto")


@pytest.fixture(scope="module")
def clips(video_factory) -> dict[str, Path]:
    return {
        "a": video_factory("tagger_a.mp4", codec="h264", frames=20),
        "b": video_factory("tagger_b.mp4", codec="h264", frames=30, size=(128, 96), pattern="noise"),
    }


def test_package_exports_tagger_lazily() -> None:
    import videotag

    assert {"Tagger", "VideoResult", "Tag", "VideotagError"} <= set(videotag.__all__)
    assert videotag.Tagger is Tagger
    assert "Tagger(" in (Tagger.__doc__ or "") and "device" in (Tagger.__doc__ or "")
    out = subprocess.run(
        [sys.executable, "-c", "import sys, videotag.core.settings; print('onnxruntime' in sys.modules)"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "False"  # importing settings (API, workers) does not load the runtime


def test_tag_one(tagger: Tagger, clips: dict[str, Path], tmp_path: Path) -> None:
    r = tagger.tag(clips["a"])
    assert isinstance(r, VideoResult) and r.ok and r.error is None
    assert r.source == str(clips["a"]) and len(r.video_id) == 32 and r.model == "imagenet_framepool"
    assert len(r.tags) == 5 and all(isinstance(t, Tag) for t in r.tags)
    probs = [p for _, _, p in r.tags]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    cid, name, p = r.tags[0]
    assert tuple(r.tags[0]) == (cid, name, p) and r.tags[0][1] == name
    assert tagger.class_names[cid] == name
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d and d["tags"][0] == {"class_id": cid, "class_name": name, "probability": p}
    assert VideoResult.model_validate(d) == r
    saved = json.loads(r.save_json(tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved == d
    vt = json.loads(r.save_json(tmp_path / "v.json", format="videotag").read_text(encoding="utf-8"))
    assert vt[0] == r.source and vt[1] == {"class_name": name, "probability": p, "class_id": cid}
    assert name in str(r)
    assert tagger.device == "cpu" or onnx_sessions._gpu_usable()
    assert "imagenet_framepool" in repr(tagger)


def test_tag_many_streams_in_order(tagger: Tagger, clips: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(clips["b"], folder / "z.mp4")
    shutil.copy(clips["a"], folder / "y.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4000))
    inputs = [clips["b"], str(bad), folder, tmp_path / "missing.mp4", str(clips["a"])]
    results = tagger.tag(inputs)
    assert isinstance(results, Iterator)  # streamed, not a list
    first = next(results)
    assert first.ok and first.source == str(clips["b"])
    rest = list(results)
    got = [first, *rest]
    want = [str(clips["b"]), str(bad), str(folder / "y.mp4"), str(folder / "z.mp4"), str(tmp_path / "missing.mp4"),
            str(clips["a"])]  # fmt: skip
    assert [r.source for r in got] == want
    assert [r.ok for r in got] == [True, False, True, True, False, True]
    assert got[1].error["code"] == "not_a_video" and got[4].error["code"] == "missing"
    assert got[1].tags == [] and got[1].to_dict()["error"]["reason"]
    # the same bytes get the same tags, whichever door or name
    assert got[3].tags == got[0].tags and got[2].tags == got[5].tags == tagger.tag(clips["a"]).tags


def test_tag_with_pictures(tagger: Tagger, clips: dict[str, Path], tmp_path: Path) -> None:
    """`visualize=DIR` writes a contact sheet per tagged video (and the tagged MP4 with `visualize_video`)."""
    from PIL import Image

    res = tagger.tag(clips["a"], visualize=tmp_path / "pics", visualize_video=True)
    assert res.ok
    (png,) = (tmp_path / "pics").glob("*.png")
    (mp4,) = (tmp_path / "pics").glob("*.tagged.mp4")
    assert Image.open(png).size[0] > 300 and mp4.stat().st_size > 1000
    many = list(tagger.tag([clips["a"], tmp_path / "missing.mp4"], visualize=tmp_path / "more"))
    assert [r.ok for r in many] == [True, False] and len(list((tmp_path / "more").glob("*.png"))) == 1


def test_tag_one_directory_is_a_clear_error(tagger: Tagger, tmp_path: Path) -> None:
    with pytest.raises(VideotagError, match=r"is a directory.*tag\(\["):
        tagger.tag(tmp_path)


def test_extract_then_predict_equals_tag(tagger: Tagger, clips: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "features.h5"
    ex = list(tagger.extract([clips["a"], clips["b"]], store))
    assert [r.ok for r in ex] == [True, True] and all(r.tags == [] for r in ex)
    assert ex[0].features == {"path": str(store), "video_id": ex[0].video_id}
    predicted = {r.source: r for r in tagger.predict(store)}
    for clip in (clips["a"], clips["b"]):
        tagged = tagger.tag(clip)
        assert predicted[str(clip)].ok and predicted[str(clip)].tags == tagged.tags
    # one video, into a directory of shards; predict by id, with per-call options
    one = tagger.extract(clips["a"], tmp_path / "shards")
    assert one.ok and Path(one.features["path"]).is_file()
    (again,) = tagger.predict(tmp_path / "shards", ids=[one.video_id], topk=2)
    assert again.tags == tagger.tag(clips["a"]).tags[:2]
    (unknown,) = tagger.predict(store, ids=["nope"])
    assert not unknown.ok and unknown.error["code"] == "not_in_store"


def test_lang(tagger: Tagger, clips: dict[str, Path], default_weights: Path) -> None:
    assert tagger.languages == ["en"]
    en = Tagger(frames=FRAMES, topk=5, weights_dir=default_weights, lang="en").tag(clips["a"])
    assert en.tags == tagger.tag(clips["a"]).tags
    with pytest.raises(VideotagError, match=r"no 'zh' class names \(it has: en\)"):
        Tagger(frames=FRAMES, weights_dir=default_weights, lang="zh")
    with pytest.raises(VideotagError, match="'zh'"):
        list(tagger.tag([clips["a"]], lang="zh"))


def test_models_load_once(tagger: Tagger, clips: dict[str, Path], default_weights: Path) -> None:
    ex, pr = tagger.models.extractor, tagger.models.predictor
    before = (pipeline._load_extractor.cache_info().misses, pipeline._load_predictor.cache_info().misses)
    tagger.tag(clips["a"])
    list(tagger.tag([clips["a"], clips["b"]], topk=3, lang="en"))
    other = Tagger(frames=FRAMES, topk=3, weights_dir=default_weights)
    after = (pipeline._load_extractor.cache_info().misses, pipeline._load_predictor.cache_info().misses)
    assert after == before
    assert other.models.extractor is ex and other.models.predictor is pr
    assert pipeline.get_extractor(tagger.settings) is ex and pipeline.get_predictor(tagger.settings) is pr


def test_device_setting(default_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_sessions.providers_for("cpu") == ("CPUExecutionProvider",)
    assert onnx_sessions.providers_for("cuda") == ("CUDAExecutionProvider",)
    assert onnx_sessions.providers_for("tensorrt") == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert onnx_sessions.providers_for("auto", ["CPUExecutionProvider"]) == ("CPUExecutionProvider",)
    assert Settings(_env_file=None).onnx_providers == onnx_sessions.DEFAULT_PROVIDERS
    cpu = Tagger(frames=FRAMES, weights_dir=default_weights, device="cpu")
    assert cpu.device == "cpu" and cpu.provider == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="gpu"):
        Tagger(weights_dir=default_weights, device="gpu")
    monkeypatch.setenv("VIDEOTAG_DEVICE", "cpu")
    assert Tagger(frames=FRAMES, weights_dir=default_weights).settings.device == "cpu"


@pytest.mark.skipif(onnx_sessions._gpu_usable(), reason="a GPU is visible here")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_device_without_gpu_is_a_clear_error(default_weights: Path, device: str) -> None:
    with pytest.raises(VideotagError, match=rf"device '{device}': .*no NVIDIA GPU is visible.*'auto' or 'cpu'"):
        Tagger(weights_dir=default_weights, device=device)


@pytest.mark.skipif(onnx_sessions._gpu_usable(), reason="a GPU is visible here")
def test_cuda_provider_that_cannot_start_is_an_error_not_a_cpu_run(
    default_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend a GPU node exists: ONNX Runtime then fails to load its CUDA provider here and would run on the CPU.
    monkeypatch.setattr(onnx_sessions, "_gpu_usable", lambda: True)
    with pytest.raises(VideotagError, match=r"device 'cuda': CUDAExecutionProvider could not start .*LD_LIBRARY_PATH"):
        onnx_sessions.get_session(default_weights / "imagenet_framepool" / "model.onnx", ("CUDAExecutionProvider",))


def test_cli_device_option(default_weights: Path, clips: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from videotag.cli import _load, app

    _load()
    run = CliRunner().invoke
    ok = run(app, ["tag", "--device", "cpu", "--frames", str(FRAMES), str(clips["a"])])
    assert ok.exit_code == 0, ok.output
    bad = run(app, ["tag", "--device", "gpu", str(clips["a"])])
    assert bad.exit_code == 2 and "'gpu' is not one of" in " ".join(bad.output.split())
    for cmd in ("tag", "extract", "predict", "serve", "worker"):
        assert "--device" in run(app, [cmd, "--help"]).output, cmd
    if not onnx_sessions._gpu_usable():
        err = run(app, ["tag", "--device", "cuda", "--frames", str(FRAMES), str(clips["a"])])
        assert err.exit_code == 2 and "device 'cuda': no NVIDIA GPU is visible" in " ".join(err.output.split())


def test_settings_come_from_args_and_env_not_dotenv(
    default_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("VIDEOTAG_TOPK=3\nVIDEOTAG_DEVICE=cuda\n", encoding="utf-8")
    t = Tagger(weights_dir=default_weights)
    assert t.settings.topk == 20 and t.settings.device == "auto"
    monkeypatch.setenv("VIDEOTAG_TOPK", "4")
    assert Tagger(weights_dir=default_weights).settings.topk == 4
    assert Tagger(weights_dir=default_weights, topk=5).settings.topk == 5  # explicit beats env


def test_weights_and_labels_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from videotag import defaults
    from videotag.core import vocab

    monkeypatch.delenv("VIDEOTAG_WEIGHTS_DIR", raising=False)
    assert settings.is_source_checkout() and Settings(_env_file=None).weights_dir == REPO / "weights"
    assert vocab.LABELS_DIR == REPO / "labels" and defaults.IMAGENET_LABELS.is_file()
    assert all(p.is_file() for p in vocab.VIDEOTAG_LABELS.values())
    # installed (no checkout around the package): a per-user directory
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings(_env_file=None).weights_dir == tmp_path / "xdg" / "videotag" / "weights"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings(_env_file=None).weights_dir == tmp_path / "home" / ".local" / "share" / "videotag" / "weights"
    monkeypatch.setenv("VIDEOTAG_WEIGHTS_DIR", str(tmp_path / "w"))
    assert Settings(_env_file=None).weights_dir == tmp_path / "w"


def _readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_wheel_install_runs_the_readme_example_elsewhere(video_factory, tmp_path: Path) -> None:
    """Build a wheel, install it (no deps) into a fresh venv that borrows this venv's dependencies, and run the
    README's example from a temporary directory: labels come from package data, the default models are exported
    into the per-user data directory on first use, and the checkout is nowhere on sys.path."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("videotag", "extractor", "predictor", "api", "workers", "labels"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOTAG_", "PYTHON"))}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        check=True, cwd=tmp_path, env=env, capture_output=True,
    )  # fmt: skip
    (wheel,) = dist.glob("videotag-*.whl")

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    py = fresh / "bin" / "python"
    fresh_site = Path(subprocess.check_output([py, "-c", "import site; print(site.getsitepackages()[0])"], text=True)
                      .strip())  # fmt: skip
    ours = site.getsitepackages()[0]  # this venv's dependencies (its editable videotag is a finder .pth: not seen)
    (fresh_site / "_deps_from_dev_venv.pth").write_text(ours + "\n", encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip

    work = tmp_path / "work"
    (work / "clips").mkdir(parents=True)
    shutil.copy(video_factory("wheel_a.mp4", codec="h264", frames=12), work / "a.mp4")
    shutil.copy(video_factory("wheel_b.mp4", codec="h264", frames=16), work / "clips" / "b.mp4")
    script = (
        "import sys, videotag, videotag.core.vocab, videotag.core.settings\n"
        "print('FILE', videotag.__file__); print('LABELS', videotag.core.vocab.LABELS_DIR)\n"
        "print('WEIGHTS', videotag.core.settings.Settings(_env_file=None).weights_dir)\n"
        f"assert all(p == {ours!r} or not p.startswith({str(REPO)!r}) for p in sys.path), sys.path\n"
        + _readme_example()
    )
    home = tmp_path / "home"
    run_env = {**env, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache")}
    out = subprocess.run([py, "-c", script], cwd=work, env=run_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"FILE {fresh_site / 'videotag' / '__init__.py'}"
    assert lines[1] == f"LABELS {fresh_site / 'videotag' / '_labels'}"
    weights = home / "data" / "videotag" / "weights"
    assert lines[2] == f"WEIGHTS {weights}"
    assert (weights / "imagenet_framepool" / "manifest.json").is_file()
    assert (weights / "efficientnet_lite0" / "manifest.json").is_file()
    tagged = lines[3:]
    assert [line.split(" ", 1)[0] for line in tagged] == ["a.mp4", "clips/b.mp4"], out.stdout
    for line in tagged:  # e.g. a.mp4 ['envelope', 'digital clock', 'web site']
        names = ast.literal_eval(line.split(" ", 1)[1])
        assert isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) and n for n in names)
