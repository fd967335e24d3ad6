"""`videotag train / evaluate / export` through the real CLI on small synthetic HDF5 stores.

Proves the sequence models learn (order task: Attention-LSTM yes, frame pooling no; multi-label: NeXtVLAD),
resume reproduces an uninterrupted run, a changed config is refused, fine-tuning to a new vocabulary keeps
everything but the output layer, and bad input gets one clear error line.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from predictor.synthetic import SyntheticTask, make_multilabel_task, make_order_task
from videotag.cli import _load, app
from videotag.store import FeatureRecord, write_shard
from videotag.vocab import Vocabulary

_load()
RUNNER = CliRunner()
SMALL_LSTM = ["-s", "embedding_size=32", "-s", "lstm_size=32", "-s", "fc1_size=64", "-s", "fc2_size=64"]
SMALL_VLAD = ["-s", "groups=4", "-s", "clusters=16", "-s", "hidden=128"]
TINY_VLAD = ["-m", "nextvlad", "-s", "groups=2", "-s", "clusters=4", "-s", "hidden=16", "-s", "gating_reduction=4"]


def vt(*args: object, code: int | None = 0) -> str:
    """Run `videotag ARGS` in-process; bad input must end in SystemExit (a message), never another exception."""
    r = RUNNER.invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(r.exception)) + r.output)
    if code is not None:
        assert r.exit_code == code, r.output
    return r.output


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticTask]:
    d = tmp_path_factory.mktemp("synthetic")
    sizes = {"train": 600, "test": 200}
    return {
        "order": make_order_task(d, sizes, max_len=50),
        "multilabel": make_multilabel_task(d, sizes, max_len=50),
    }


def _train_args(task: SyntheticTask, out: Path, *extra: object) -> list[object]:
    return ["train", "-f", task.stores["train"], "-l", task.labels["train"], "-v", task.vocab, "-o", out,
            "--batch-size", 32, "--threads", 1, "--no-progress", *extra]  # fmt: skip


def _test_gap(task: SyntheticTask, model: Path, tmp: Path) -> dict:
    report = tmp / f"report_{model.parent.name}_{model.name}.json"
    vt("evaluate", "-m", model, "-f", task.stores["test"], "-l", task.labels["test"], "-o", report)
    return json.loads(report.read_text())["metrics"]


@pytest.fixture(scope="module")
def nextvlad_run(tasks: dict[str, SyntheticTask], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "nextvlad"
    vt(*_train_args(tasks["multilabel"], out, "-m", "nextvlad", *SMALL_VLAD, "--epochs", 12, "--lr", "1e-3",
                    "--lr-step", 0))  # fmt: skip
    return out


def test_attention_lstm_learns_order_frame_pool_cannot(tasks: dict[str, SyntheticTask], tmp_path: Path) -> None:
    task = tasks["order"]
    vt(*_train_args(task, tmp_path / "lstm", "-m", "attention_lstm", *SMALL_LSTM, "--epochs", 12, "--lr", "2e-3",
                    "--lr-step", 0))  # fmt: skip
    vt(*_train_args(task, tmp_path / "pool", "-m", "frame_pool", "--epochs", 12, "--lr", "5e-3"))
    lstm = _test_gap(task, tmp_path / "lstm" / "best.pt", tmp_path)
    pool = _test_gap(task, tmp_path / "pool" / "best.pt", tmp_path)
    assert lstm["gap@20"] >= 0.9, lstm
    assert lstm["hit@1"] >= 0.85, lstm
    # Both classes contain the same frames; only the order differs: pooling can only guess (chance ~0.5).
    assert pool["gap@20"] <= 0.65, pool
    assert pool["hit@1"] <= 0.65, pool


def test_nextvlad_learns_multilabel_exports_and_serves(
    tasks: dict[str, SyntheticTask], nextvlad_run: Path, tmp_path: Path
) -> None:
    task = tasks["multilabel"]
    torch_m = _test_gap(task, nextvlad_run / "best.pt", tmp_path)
    assert torch_m["gap@20"] >= 0.9, torch_m
    for f in ["run_config.json", "history.json", "last.pt", "best.pt", *(f"checkpoint_epoch{i}.pt" for i in (1, 12))]:
        assert (nextvlad_run / f).is_file(), f
    history = json.loads((nextvlad_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert all("gap@20" in h["val"] for h in history)

    model_dir = tmp_path / "exported"
    out = vt("export", "--checkpoint", nextvlad_run, "--out", model_dir)
    assert "exported nextvlad" in out
    manifest = json.loads((model_dir / "manifest.json").read_text())
    best = torch.load(nextvlad_run / "best.pt", weights_only=True)
    assert manifest["architecture"] == "nextvlad" and manifest["feature_dim"] == 32
    assert manifest["metrics"]["gap@20"] == pytest.approx(best["metrics"]["gap@20"])
    assert manifest["backbone"]["name"] == "synthetic-multilabel" and manifest["backbone"]["sha256"]
    assert manifest["vocabulary"]["sha256"] == Vocabulary.load(task.vocab).sha256
    assert manifest["onnx_parity_max_abs_diff"] <= 1e-4
    onnx_m = _test_gap(task, model_dir, tmp_path)
    for key in ("gap@20", "hit@1", "mAP"):
        assert onnx_m[key] == pytest.approx(torch_m[key], abs=1e-4)

    # Serving refuses features from another backbone and labels of another vocabulary, clearly.
    other = tasks["order"]
    out = vt("evaluate", "-m", model_dir, "-f", other.stores["test"], "-l", task.labels["test"], code=2)
    assert "error:" in out
    out = vt("evaluate", "-m", model_dir, "-f", task.stores["test"], "-l", other.labels["test"], "-v", other.vocab,
             code=2)  # fmt: skip
    assert "vocabulary" in out


def _params(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["state_dict"]


def test_resume_reproduces_uninterrupted_run_and_refuses_config_change(
    tasks: dict[str, SyntheticTask], tmp_path: Path
) -> None:
    task = tasks["multilabel"]
    common = [*TINY_VLAD, "--val-fraction", 0.2, "--lr", "3e-3"]
    vt(*_train_args(task, tmp_path / "a", *common, "--epochs", 3))
    vt(*_train_args(task, tmp_path / "b", *common, "--epochs", 2))
    assert not (tmp_path / "b" / "checkpoint_epoch3.pt").exists()
    out = vt(*_train_args(task, tmp_path / "b", *common, "--epochs", 3, "--resume"))
    assert "resuming" in out and "epoch 3/3" in out
    a, b = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Another seed is another run (and --keep-checkpoints prunes old epochs, never last.pt / best.pt).
    vt(*_train_args(task, tmp_path / "c", *common, "--epochs", 2, "--seed", 1, "--keep-checkpoints", 1))
    assert sorted(p.name for p in (tmp_path / "c").glob("*.pt")) == ["best.pt", "checkpoint_epoch2.pt", "last.pt"]
    a2, c2 = _params(tmp_path / "a" / "checkpoint_epoch2.pt"), _params(tmp_path / "c" / "last.pt")
    assert not torch.equal(a2["classifier.weight"], c2["classifier.weight"])
    _params(tmp_path / "c" / "best.pt")

    # A resume with another config is refused and says what changed; the run dir is left alone.
    saved = (tmp_path / "b" / "run_config.json").read_text()
    out = vt(*_train_args(task, tmp_path / "b", *TINY_VLAD, "--val-fraction", 0.2, "--lr", "1e-2", "--epochs", 4,
                          "--resume"), code=2)  # fmt: skip
    assert "refusing to resume" in out and "lr: 0.003 -> 0.01" in out
    assert (tmp_path / "b" / "run_config.json").read_text() == saved
    out = vt(*_train_args(task, tmp_path / "b", *common, "--epochs", 3), code=2)
    assert "already holds a training run" in out
    out = vt(*_train_args(task, tmp_path / "empty", *common, "--resume"), code=2)
    assert "nothing to resume" in out


def test_finetune_to_a_new_vocabulary_keeps_all_but_the_output_layer(
    tasks: dict[str, SyntheticTask], nextvlad_run: Path, tmp_path: Path
) -> None:
    task = tasks["multilabel"]
    vocab = tmp_path / "vocab3.txt"
    Vocabulary(("first", "second", "third")).save(vocab)
    labels = tmp_path / "labels3.csv"  # the CSV format, with class names
    rows = ["id,labels"]
    for line in task.labels["train"].read_text().splitlines():
        vid, *ids = line.split()
        rows.append(f"{vid}," + ";".join(("first", "second", "third")[int(i)] for i in ids if int(i) < 3))
    labels.write_text("\n".join(rows) + "\n")
    src = nextvlad_run / "best.pt"
    out = vt("train", "-f", task.stores["train"], "-l", labels, "-v", vocab, "-o", tmp_path / "ft",
             "--init-from", src, "--epochs", 1, "--optimizer", "sgd", "--lr", "1e-12", "--threads", 1,
             "--no-progress")  # fmt: skip
    assert "new output layer" in out
    before, after = torch.load(src, weights_only=True), torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert after["model"] == "nextvlad" and after["model_config"]["num_classes"] == 3
    assert after["model_config"]["clusters"] == 16  # architecture inherited from the checkpoint
    assert after["vocab"]["names"] == ["first", "second", "third"]
    assert after["state_dict"]["classifier.weight"].shape == (3, 128)
    params = {n for n, _ in torch.nn.Module.named_parameters(_module(after))}
    for name in params - {"classifier.weight", "classifier.bias"}:
        torch.testing.assert_close(after["state_dict"][name], before["state_dict"][name], atol=1e-6, rtol=0)
    rc = json.loads((tmp_path / "ft" / "run_config.json").read_text())
    assert rc["init_from"] == str(src.resolve()) and rc["vocab_sha256"] == Vocabulary.load(vocab).sha256

    # Fine-tuning onto features of another backbone is refused.
    other = tasks["order"]
    out = vt(*_train_args(other, tmp_path / "ft2", "--init-from", src, "--epochs", 1), code=2)
    assert "synthetic-multilabel" in out and "synthetic-order" in out


def _module(ckpt: dict) -> torch.nn.Module:
    from predictor.models import create_model

    return create_model(ckpt["model"], **ckpt["model_config"])


def test_bad_input_is_one_clear_error(tasks: dict[str, SyntheticTask], tmp_path: Path) -> None:
    task = tasks["multilabel"]
    bad = tmp_path / "bad.txt"
    bad.write_text("multilabel-train-000000 1 2\nmultilabel-train-000001 99\nno-such-video 1\n")
    out = vt("train", "-f", task.stores["train"], "-l", bad, "-v", task.vocab, "-o", tmp_path / "r", code=2)
    assert f"{bad}:2: label id 99" in out and "out of range" in out
    assert f"{bad}:3: 'no-such-video' is not in the feature store" in out
    out = vt(*_train_args(task, tmp_path / "r2", "-m", "nosuchmodel"), code=2)
    assert "unknown model 'nosuchmodel'" in out
    # Stores from two backbones are never mixed.
    mixed = ["train", "-f", task.stores["train"], "-f", tasks["order"].stores["train"], "-l", task.labels["train"],
             "-v", task.vocab, "-o", tmp_path / "r3"]  # fmt: skip
    out = vt(*mixed, code=2)
    assert "different backbones" in out
    out = vt(*_train_args(task, tmp_path / "r4", "-m", "nextvlad", "-s", "groups=5"), code=2)
    assert "not divisible by groups" in out
    # NaN features (which a foreign writer can leave) stop training with the video's id, not a NaN loss.
    recs = [FeatureRecord(f"n{i}", np.ones((4, 32), np.float32) * i, f"/n/{i}", backbone="nan-test") for i in range(4)]
    store = write_shard(tmp_path / "nan.h5", recs)
    with h5py.File(store, "r+") as f:
        f["videos/n2"][1, 1] = np.nan
    (tmp_path / "nan.txt").write_text("n0 0\nn1 1\nn2 2\nn3 3\n")
    out = vt("train", "-f", store, "-l", tmp_path / "nan.txt", "-v", task.vocab, "-o", tmp_path / "r5", "-m",
             "frame_pool", "--epochs", 1, "--val-fraction", 0, code=2)  # fmt: skip
    assert "video 'n2': features contain NaN" in out
