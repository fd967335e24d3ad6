"""`videotag train / evaluate / export` through the real CLI on small synthetic HDF5 stores.

Proves the sequence models learn (order task: Attention-LSTM yes, frame pooling no; multi-label: NeXtVLAD),
resume reproduces an uninterrupted run, a changed config is refused, fine-tuning to a new vocabulary keeps
everything but the output layer, checkpoints stay lean, the frame-sampling policy travels into the exported
manifest, a run that does not learn says so, and bad input gets one clear error line.
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
from videotag.core.feature_store import FeatureRecord, write_shard
from videotag.core.vocab import Vocabulary

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
    return ["train", "-f", task.stores["train"], "-l", task.labels["train"], "--vocab", task.vocab, "-o", out,
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
    for f in ["run_config.json", "history.json", "curves.png", "last.pt", "best.pt"]:
        assert (nextvlad_run / f).is_file(), f
    assert not list(nextvlad_run.glob("checkpoint_epoch*.pt"))  # lean by default: best + last only
    history = json.loads((nextvlad_run / "history.json").read_text())
    epochs = history["epochs"]
    assert [h["epoch"] for h in epochs] == list(range(1, len(epochs) + 1)) and len(epochs) >= 6
    assert all("gap@20" in h["val"] for h in epochs)
    assert history["warnings"] == [] and history["constant_predictor_gap@20"] < history["best"]["gap@20"]
    # best.pt: weights + what export needs, no optimiser state; last.pt: everything a resume needs.
    best_ckpt = torch.load(nextvlad_run / "best.pt", weights_only=True)
    last_ckpt = torch.load(nextvlad_run / "last.pt", weights_only=True)
    assert best_ckpt["kind"] == "weights" and "optimizer" not in best_ckpt
    assert last_ckpt["kind"] == "full" and last_ckpt["optimizer"]["state"]
    assert best_ckpt["sampling"] == last_ckpt["sampling"] == "synthetic"

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
    assert manifest["sampling"] == "synthetic"  # the frame-sampling rule travels with the model
    onnx_m = _test_gap(task, model_dir, tmp_path)
    for key in ("gap@20", "hit@1", "mAP"):
        assert onnx_m[key] == pytest.approx(torch_m[key], abs=1e-4)

    # Serving refuses features from another backbone and labels of another vocabulary, clearly.
    other = tasks["order"]
    out = vt("evaluate", "-m", model_dir, "-f", other.stores["test"], "-l", task.labels["test"], code=2)
    assert "error:" in out
    out = vt("evaluate", "-m", model_dir, "-f", task.stores["test"], "-l", other.labels["test"], "--vocab", other.vocab,
             code=2)  # fmt: skip
    assert "vocabulary" in out


def _params(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["state_dict"]


class _Interrupt(Exception):
    pass


def _interrupt_after(epoch: int):  # noqa: ANN202 - a log callback that "kills" the run after an epoch's save
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):
            raise _Interrupt(line)

    return log


def test_resume_reproduces_uninterrupted_run_and_refuses_config_change(
    tasks: dict[str, SyntheticTask], tmp_path: Path
) -> None:
    from predictor.train import TrainConfig, train

    task = tasks["multilabel"]
    common = [*TINY_VLAD, "--val-fraction", 0.2, "--lr", "3e-3", "--patience", 0]
    vt(*_train_args(task, tmp_path / "a", *common, "--epochs", 3))
    # Interrupted after epoch 2 (warm-up, then the plateau schedule: lr from the step and the validation history),
    # then resumed: bit-exact.
    cfg = TrainConfig(
        features=[str(task.stores["train"])], labels=str(task.labels["train"]), vocab=str(task.vocab),
        model="nextvlad", model_config={"groups": 2, "clusters": 4, "hidden": 16, "gating_reduction": 4},
        val_fraction=0.2, epochs=3, batch_size=32, lr=3e-3, patience=0,
    )  # fmt: skip
    with pytest.raises(_Interrupt):
        train(cfg, tmp_path / "b", progress=False, log=_interrupt_after(2), threads=1)
    assert not (tmp_path / "b" / "checkpoint_epoch3.pt").exists()
    out = vt(*_train_args(task, tmp_path / "b", *common, "--epochs", 3, "--resume"))
    assert "resuming" in out and "epoch 3/3" in out
    a, b = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lr_a, lr_b = (torch.load(tmp_path / r / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]
                  for r in ("a", "b"))  # fmt: skip
    assert lr_a == lr_b
    # Another seed is another run; --keep-checkpoints N keeps N full per-epoch checkpoints besides last/best.
    vt(*_train_args(task, tmp_path / "c", *common, "--epochs", 3, "--seed", 1, "--keep-checkpoints", 1))
    assert sorted(p.name for p in (tmp_path / "c").glob("*.pt")) == ["best.pt", "checkpoint_epoch3.pt", "last.pt"]
    a2, c2 = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "c" / "last.pt")
    assert not torch.equal(a2["classifier.weight"], c2["classifier.weight"])
    _params(tmp_path / "c" / "best.pt")
    vt(*_train_args(task, tmp_path / "d", *common, "--epochs", 2, "--keep-checkpoints", "all"))
    assert sorted(p.name for p in (tmp_path / "d").glob("checkpoint_epoch*.pt")) == [
        "checkpoint_epoch1.pt", "checkpoint_epoch2.pt"
    ]  # fmt: skip

    # A resume with another config is refused and says what changed; the run dir is left alone.
    saved = (tmp_path / "b" / "run_config.json").read_text()
    out = vt(*_train_args(task, tmp_path / "b", *TINY_VLAD, "--val-fraction", 0.2, "--lr", "1e-2", "--epochs", 4,
                          "--patience", 0, "--resume"), code=2)  # fmt: skip
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
    out = vt("train", "-f", task.stores["train"], "-l", labels, "--vocab", vocab, "-o", tmp_path / "ft",
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
    out = vt("train", "-f", task.stores["train"], "-l", bad, "--vocab", task.vocab, "-o", tmp_path / "r", code=2)
    assert f"{bad}:2: label id 99" in out and "out of range" in out
    assert f"{bad}:3: 'no-such-video' is not in the feature store" in out
    out = vt(*_train_args(task, tmp_path / "r2", "-m", "nosuchmodel"), code=2)
    assert "unknown model 'nosuchmodel'" in out
    # Stores from two backbones are never mixed.
    mixed = ["train", "-f", task.stores["train"], "-f", tasks["order"].stores["train"], "-l", task.labels["train"],
             "--vocab", task.vocab, "-o", tmp_path / "r3"]  # fmt: skip
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
    out = vt("train", "-f", store, "-l", tmp_path / "nan.txt", "--vocab", task.vocab, "-o", tmp_path / "r5", "-m",
             "frame_pool", "--epochs", 1, "--val-fraction", 0, code=2)  # fmt: skip
    assert "video 'n2': features contain NaN" in out


def _flat_store(
    tmp: Path, n: int = 24, sampling: dict[int, str] | None = None, easy: bool = False
) -> tuple[Path, Path, Path]:
    """n videos, labels 0/1/2 in turn, 3-class vocab. Features all the same (nothing to learn from), or with
    `easy` pointing at their class."""
    sampling = sampling or {}
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        x = np.ones((6, 8), np.float32)
        if easy:
            x = rng.standard_normal((6, 8)).astype(np.float32) * 0.3
            x[:, i % 3] += 3.0
        recs.append(FeatureRecord(f"f{i:03d}", x, f"/flat/{i}.mp4", backbone="flat",
                                  sampling=sampling.get(i, "segment")))  # fmt: skip
    store = write_shard(tmp / "flat.h5", recs)
    labels = tmp / "flat.txt"
    labels.write_text("".join(f"f{i:03d} {i % 3}\n" for i in range(n)))
    vocab = tmp / "flat_vocab.txt"
    Vocabulary(("a", "b", "c")).save(vocab)
    return store, labels, vocab


def test_not_learning_is_reported_and_fails_on_request(tmp_path: Path) -> None:
    store, labels, vocab = _flat_store(tmp_path)
    base = ["train", "-f", store, "-l", labels, "--vocab", vocab, "-m", "frame_pool", "--val-fraction", 0.25,
            "--threads", 1, "--no-progress"]  # fmt: skip
    out = vt(*base, "-o", tmp_path / "r", "--epochs", 4, "--patience", 1)
    assert "warning: not learning" in out and "constant predictor" in out and "collapsed" in out
    assert "early stop:" not in out  # never stops early while still at the constant predictor's level
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert not history["stopped_early"] and len(history["epochs"]) == 4
    assert any("constant predictor" in w for w in history["warnings"])
    rc = json.loads((tmp_path / "r" / "run_config.json").read_text())
    assert rc["recipe"] == "default" and rc["sampling"] == "segment" and rc["batch_size"] == 2  # at least 2
    # For pipelines: a non-zero exit (3) with one line.
    out = vt(*base, "-o", tmp_path / "r2", "--epochs", 2, "--fail-if-not-learning", code=3)
    assert "error: training did not learn" in out
    assert (tmp_path / "r2" / "history.json").is_file() and (tmp_path / "r2" / "best.pt").is_file()


def test_early_stopping_once_learned(tmp_path: Path) -> None:
    store, labels, vocab = _flat_store(tmp_path, n=48, easy=True)
    base = ["train", "-f", store, "-l", labels, "--vocab", vocab, "-m", "frame_pool", "--val-fraction", 0.25,
            "--threads", 1, "--no-progress", "-o", tmp_path / "r", "--epochs", 12, "--patience", 2,
            "--lr", 0.1]  # fmt: skip
    out = vt(*base, "--fail-if-not-learning")
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert "early stop:" in out and history["stopped_early"] and history["warnings"] == []
    n = len(history["epochs"])
    assert 3 <= n < 12 and n == max(3, history["best"]["epoch"] + 2)  # not before a quarter of the 12 epochs
    assert history["best"]["gap@20"] > 0.9
    out = vt(*base, "--resume")
    assert "nothing to do: the run stopped early" in out


def test_divergence_stops_with_a_warning(tmp_path: Path) -> None:
    store, labels, vocab = _flat_store(tmp_path)
    out = vt("train", "-f", store, "-l", labels, "--vocab", vocab, "-o", tmp_path / "r", "-m", "frame_pool",
             "--optimizer", "sgd", "--lr", "1e38", "--clip-grad", 0, "--warmup-steps", 0, "--epochs", 5,
             "--threads", 1, "--no-progress", "--fail-if-not-learning", code=3)  # fmt: skip
    assert "diverged" in out
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert any(w.startswith("diverged") for w in history["warnings"])


def test_mixed_sampling_policies_are_refused(tmp_path: Path) -> None:
    store, labels, vocab = _flat_store(tmp_path, n=12, sampling={0: "uniform", 5: "uniform", 7: "timestamp"})
    out = vt("train", "-f", store, "-l", labels, "--vocab", vocab, "-o", tmp_path / "r", "-m", "frame_pool",
             "--epochs", 1, "--no-progress", code=2)  # fmt: skip
    assert "different frame-sampling policies" in out
    assert "9 video(s) 'segment'" in out and "2 video(s) 'uniform'" in out and "1 video(s) 'timestamp'" in out
    assert not (tmp_path / "r" / "run_config.json").exists()
