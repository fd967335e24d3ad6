"""Ensemble: weighted average of member probabilities, in torch and as one merged ONNX graph built by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import vt

from predictor.checkpoint import save_checkpoint
from predictor.export import export_predictor
from predictor.models import SequenceModel, create_model
from predictor.onnx_predictor import OnnxPredictor
from videotag.core.feature_store import FeatureRecord, write_shard
from videotag.core.vocab import Vocabulary

D, C = 16, 6
LSTM = {"embedding_size": 8, "lstm_size": 8, "fc1_size": 16, "fc2_size": 16}
VLAD = {"groups": 4, "clusters": 4, "hidden": 16, "gating_reduction": 4}
BACKBONE = {"name": "test-backbone", "sha256": "ab" * 32, "feature_dim": D}
VOCAB = Vocabulary(tuple(f"class_{i}" for i in range(C)))




def _model(name: str, cfg: dict, seed: int) -> SequenceModel:
    torch.manual_seed(seed)
    return create_model(name, feature_dim=D, num_classes=C, **cfg).eval()


def _checkpoint(model: SequenceModel, path: Path, vocab: Vocabulary = VOCAB, backbone: dict = BACKBONE) -> Path:
    return save_checkpoint(
        path,
        {
            "model": model.name,
            "model_config": model.config,
            "state_dict": model.state_dict(),
            "epoch": 1,
            "metrics": {"gap@20": 0.5},
            "vocab": {"names": list(vocab.names), "sha256": vocab.sha256},
            "backbone": dict(backbone),
            "run_config": {},
        },
    )


def _sequences(n: int = 7, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(t), D)).astype(np.float32) for t in rng.integers(1, 40, n)]


def test_probabilities_are_the_weighted_average() -> None:
    torch.manual_seed(0)
    ens = create_model(
        "ensemble",
        feature_dim=D,
        num_classes=C,
        members=[{"name": "nextvlad", "config": VLAD}, {"name": "frame_pool", "config": {}}],
        weights=[3, 1],
    ).eval()
    x, lens = torch.randn(3, 10, D), torch.tensor([10, 4, 1])
    with torch.no_grad():
        p = ens.probabilities(x, lens)
        want = 0.75 * ens.members[0].probabilities(x, lens) + 0.25 * ens.members[1].probabilities(x, lens)
        torch.testing.assert_close(p, want)
        torch.testing.assert_close(torch.sigmoid(ens(x, lens)), p, atol=1e-6, rtol=1e-5)
    assert ens.config["weights"] == [3, 1]
    assert ens.output_layer_names() == ["members.0.classifier.", "members.1.classifier."]


def test_bad_ensemble_configs() -> None:
    members = [{"name": "frame_pool", "config": {}}, {"name": "frame_pool", "config": {}}]
    with pytest.raises(ValueError, match="2 members but 1 weights"):
        create_model("ensemble", feature_dim=D, num_classes=C, members=members, weights=[1])
    with pytest.raises(ValueError, match="finite, >= 0 and not all zero"):
        create_model("ensemble", feature_dim=D, num_classes=C, members=members, weights=[1, -1])
    with pytest.raises(ValueError, match="at least one member"):
        create_model("ensemble", feature_dim=D, num_classes=C, members=[])
    bad = [{"name": "frame_pool", "config": {"feature_dim": 99}}]
    with pytest.raises(ValueError, match="feature_dim=99"):
        create_model("ensemble", feature_dim=D, num_classes=C, members=bad)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("ensemble", feature_dim=D, num_classes=C, members=[{"name": "nope", "config": {}}])


def test_cli_builds_merged_ensemble_from_dirs_and_checkpoints(tmp_path: Path) -> None:
    lstm, vlad = _model("attention_lstm", LSTM, 1), _model("nextvlad", VLAD, 2)
    lstm_dir = export_predictor(lstm, tmp_path / "lstm", VOCAB, BACKBONE, metrics={"gap@20": 0.7})
    vlad_ckpt = _checkpoint(vlad, tmp_path / "vlad.pt")
    vt("ensemble", lstm_dir, vlad_ckpt, "--weights", "3,1", "--out", tmp_path / "ens")

    m = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert m["architecture"] == "ensemble" and m["kind"] == "predictor"
    assert m["config"]["weights"] == [3.0, 1.0] and m["fusion_weights"] == [0.75, 0.25]
    assert [x["name"] for x in m["config"]["members"]] == ["attention_lstm", "nextvlad"]
    assert m["backbone"] == {"name": BACKBONE["name"], "sha256": BACKBONE["sha256"]}
    assert m["vocabulary"]["sha256"] == VOCAB.sha256 and m["num_classes"] == C
    assert m["members"][0]["metrics"] == {"gap@20": 0.7}

    seqs = _sequences()
    ens = OnnxPredictor(tmp_path / "ens").predict(seqs)  # the stock predictor serves the merged graph
    p_lstm = OnnxPredictor(lstm_dir).predict(seqs)
    vt("export", "--checkpoint", vlad_ckpt, "--out", tmp_path / "vlad")
    p_vlad = OnnxPredictor(tmp_path / "vlad").predict(seqs)
    np.testing.assert_allclose(ens, 0.75 * p_lstm + 0.25 * p_vlad, atol=1e-5)

    # The manifest's config rebuilds the torch ensemble; with the members' weights it matches ONNX.
    torch_ens = create_model("ensemble", **m["config"]).eval()
    torch_ens.members[0].load_state_dict(lstm.state_dict())
    torch_ens.members[1].load_state_dict(vlad.state_dict())
    lens = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(lens.max()), D)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.from_numpy(s)
    with torch.no_grad():
        np.testing.assert_allclose(torch_ens.probabilities(x, lens).numpy(), ens, atol=1e-4)


def test_cli_ensemble_evaluates_into_its_manifest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recs = [
        FeatureRecord(f"v{i}", rng.standard_normal((int(rng.integers(3, 20)), D)).astype(np.float32), f"/x/{i}.mp4",
                      backbone=BACKBONE["name"], backbone_sha256=BACKBONE["sha256"])
        for i in range(12)
    ]  # fmt: skip
    store = write_shard(tmp_path / "f.h5", recs)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"v{i} {i % C}\n" for i in range(12)))
    a, b = (
        _checkpoint(_model("frame_pool", {}, 3), tmp_path / "a.pt"),
        _checkpoint(_model("frame_pool", {}, 4), tmp_path / "b.pt"),
    )
    out = vt("ensemble", a, b, "--out", tmp_path / "ens", "--eval-features", store, "--eval-labels", labels)
    assert "gap@20" in out
    m = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert m["fusion_weights"] == [0.5, 0.5]
    assert m["metrics"]["num_videos"] == 12 and 0.0 <= m["metrics"]["gap@20"] <= 1.0
    OnnxPredictor(tmp_path / "ens")  # manifest sha256 still matches the weights


def test_cli_refuses_incompatible_members(tmp_path: Path) -> None:
    a = _checkpoint(_model("frame_pool", {}, 1), tmp_path / "a.pt")
    other_vocab = Vocabulary(tuple(f"other_{i}" for i in range(C)))
    b = _checkpoint(_model("frame_pool", {}, 2), tmp_path / "b.pt", vocab=other_vocab)
    out = vt("ensemble", a, b, "--out", tmp_path / "e1", code=2)
    assert "different vocabularies" in out
    c = _checkpoint(_model("frame_pool", {}, 3), tmp_path / "c.pt", backbone={**BACKBONE, "name": "resnet101"})
    out = vt("ensemble", a, c, "--out", tmp_path / "e2", code=2)
    assert "different backbones" in out
    out = vt("ensemble", a, a, "--weights", "1,x", "--out", tmp_path / "e3", code=2)
    assert "--weights must be comma-separated numbers" in out
    out = vt("ensemble", a, tmp_path / "missing.pt", "--out", tmp_path / "e4", code=2)
    assert "missing.pt" in out and "not found" in out
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_simplex_grid() -> None:
    from predictor.ensemble_builder import simplex_grid

    assert simplex_grid(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    grid = simplex_grid(3, 0.05)
    assert len(grid) == 231 and all(abs(sum(w) - 1) < 1e-9 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.0, 0.0, 1.0) in grid
    with pytest.raises(ValueError, match="must divide 1"):
        simplex_grid(2, 0.3)


def test_tune_weights_never_below_the_best_member_and_breaks_ties_sensibly() -> None:
    from predictor.ensemble_builder import tune_weights
    from predictor.metrics import gap

    rng = np.random.default_rng(0)
    y = np.zeros((40, C), np.float32)
    y[np.arange(40), rng.integers(0, C, 40)] = 1
    good = np.clip(y * 0.9 + rng.random(y.shape) * 0.05, 0, 1)  # ranks every video right, confident
    noise = rng.random(y.shape).astype(np.float32)
    t = tune_weights([noise, good], y)
    assert t["gap@20"] >= max(t["members_gap@20"]) == pytest.approx(gap(good, y))
    assert t["weights"][1] > t["weights"][0]
    assert t["equal_weights_gap@20"] <= t["gap@20"]
    # Both rank perfectly: GAP ties everywhere, the log-loss picks the better-calibrated member.
    timid = 0.4 + 0.2 * good
    t2 = tune_weights([timid, good], y)
    assert t2["gap@20"] == pytest.approx(1.0) and t2["weights"] == [0.0, 1.0]
    # Identical members: every weight is as good; the nearest to equal wins.
    assert tune_weights([good, good], y)["weights"] == [0.5, 0.5]


def _perfect_frame_pool(seed: int) -> SequenceModel:
    m = _model("frame_pool", {}, seed)
    with torch.no_grad():
        m.classifier.weight.zero_()
        m.classifier.weight[:, :C] = 6 * torch.eye(C)
        m.classifier.bias.fill_(-3.0)
    return m


def test_cli_ensemble_tunes_its_weights_on_held_out_videos(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    recs, lines = [], []
    for i in range(30):
        c = int(rng.integers(0, C))
        x = 0.1 * rng.standard_normal((int(rng.integers(3, 12)), D)).astype(np.float32)
        x[:, c] += 1.0
        recs.append(FeatureRecord(f"v{i}", x, f"/x/{i}.mp4", backbone=BACKBONE["name"],
                                  backbone_sha256=BACKBONE["sha256"]))  # fmt: skip
        lines.append(f"v{i} {c}\n")
    store = write_shard(tmp_path / "val.h5", recs)
    labels = tmp_path / "val.txt"
    labels.write_text("".join(lines))
    noisy = _checkpoint(_model("frame_pool", {}, 5), tmp_path / "noisy.pt")
    good = _checkpoint(_perfect_frame_pool(6), tmp_path / "good.pt")
    out = vt("ensemble", noisy, good, "--out", tmp_path / "ens", "--tune-features", store, "--tune-labels", labels,
             "--eval-features", store, "--eval-labels", labels)  # fmt: skip
    assert "fusion weights" in out and "chosen on 30 videos" in out
    m = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    t = m["fusion_tuning"]
    assert t["videos"] == 30 and t["labels"] == str(labels) and t["grid_step"] == 0.05
    assert m["fusion_weights"] == pytest.approx(t["weights"]) and t["weights"][1] > t["weights"][0]
    assert m["metrics"]["gap@20"] >= max(t["members_gap@20"]) - 1e-6 and t["members_gap@20"][1] == pytest.approx(1.0)
    out = vt("ensemble", noisy, good, "--out", tmp_path / "e2", "--weights", "1,1", "--tune-features", store,
             "--tune-labels", labels, code=2)  # fmt: skip
    assert "not both" in out
    out = vt("ensemble", noisy, good, "--out", tmp_path / "e3", "--tune-features", store, code=2)
    assert "go together" in out
