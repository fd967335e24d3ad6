"""Every registered model: the contract, padding invariance, config round trip, ONNX == torch on mixed lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from predictor.export import PARITY_TOL, export_onnx
from predictor.models import SequenceModel, create_model, list_models

D, C = 24, 7
SMALL_LSTM = {"embedding_size": 16, "lstm_size": 8, "fc1_size": 32, "fc2_size": 16}
SMALL_VLAD = {"groups": 4, "clusters": 8, "hidden": 32, "gating_reduction": 4}
# A small config for every registered model; a model registered without one here fails test_all_models_covered.
CONFIGS: dict[str, dict] = {
    "frame_pool": {},
    "nextvlad": SMALL_VLAD,
    "attention_lstm": SMALL_LSTM,
    "ensemble": {
        "members": [
            {"name": "attention_lstm", "config": SMALL_LSTM},
            {"name": "nextvlad", "config": SMALL_VLAD},
            {"name": "frame_pool", "config": {"pool": "max"}},
        ],
        "weights": [0.5, 0.3, 0.2],
    },
}


def _model(name: str) -> SequenceModel:
    torch.manual_seed(0)
    m = create_model(name, feature_dim=D, num_classes=C, **CONFIGS[name])
    # A few training-mode passes so batch-norm running statistics are not the identity.
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(6, 20, D) * 2 + 0.5, torch.tensor([20, 3, 11, 1, 7, 16]))
    return m.eval()


def _batch(lengths: list[int], t: int | None = None, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), t or max(lengths), D, generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x, lens


def test_all_models_covered() -> None:
    assert {"frame_pool", "nextvlad", "attention_lstm", "ensemble"} <= set(list_models())
    assert set(list_models()) <= set(CONFIGS), f"add a small config for {set(list_models()) - set(CONFIGS)}"


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nextvlad2'.*registered models: .*nextvlad"):
        create_model("nextvlad2", feature_dim=D, num_classes=C)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_contract_and_padding(name: str) -> None:
    m = _model(name)
    x, lens = _batch([13, 5, 1, 9])
    with torch.no_grad():
        logits = m(x, lens)
        probs = m.probabilities(x, lens)
        assert logits.shape == (4, C) and probs.shape == (4, C)
        assert torch.isfinite(logits).all() and ((probs >= 0) & (probs <= 1)).all()
        # Padding (of any content or length) never changes the result ...
        xp = torch.randn(4, x.shape[1] + 17, D) * 50
        for i, n in enumerate(lens.tolist()):
            xp[i, :n] = x[i, :n]
        assert torch.allclose(m.probabilities(xp, lens), probs, atol=1e-5)
        # ... and neither does the rest of the batch: each sequence alone gives the same answer.
        for i, n in enumerate(lens.tolist()):
            alone = m.probabilities(x[i : i + 1, :n], lens[i : i + 1])
            assert torch.allclose(alone, probs[i : i + 1], atol=1e-5), (name, i)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trip(name: str) -> None:
    m = _model(name)
    again = create_model(name, **m.config)
    again.load_state_dict(m.state_dict())
    again.eval()
    x, lens = _batch([8, 3])
    with torch.no_grad():
        assert torch.equal(again.probabilities(x, lens), m.probabilities(x, lens))
    assert m.config["feature_dim"] == D and m.config["num_classes"] == C


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_onnx_matches_torch_on_mixed_lengths(name: str, tmp_path: Path) -> None:
    m = _model(name)
    path = tmp_path / f"{name}.onnx"
    diff = export_onnx(m, path)  # asserts <= 1e-4 on the export's own mixed-length batch
    assert diff <= PARITY_TOL
    # And on other batches: longer than the export batch (dynamic time axis), other batch sizes.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for lengths, t in (([60, 2, 33], 64), ([1], 1), ([5, 5, 5, 5, 5, 4, 3, 2], 9)):
        x, lens = _batch(lengths, t, seed=len(lengths))
        with torch.no_grad():
            ref = m.probabilities(x, lens).numpy()
        out = sess.run(["probabilities"], {"features": x.numpy(), "lengths": lens.numpy()})[0]
        assert np.abs(out - ref).max() <= PARITY_TOL, (name, lengths)


@pytest.mark.parametrize("dim", [1280, 2048])
def test_feature_dim_is_configurable(dim: int) -> None:
    for name in ("frame_pool", "nextvlad"):
        cfg = {"groups": 8, "clusters": 8, "hidden": 64} if name == "nextvlad" else {}
        m = create_model(name, feature_dim=dim, num_classes=3, **cfg).eval()
        with torch.no_grad():
            assert m(torch.randn(2, 5, dim), torch.tensor([5, 2])).shape == (2, 3)
