"""Attention-LSTM: contract, Paddle semantics (vs an independent NumPy reference), padding, ONNX forms, training."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from predictor.export import export_onnx, onnx_parity, parity_batch
from predictor.models import create_model, list_models
from predictor.models.attention_lstm import AttentionLSTM
from tests.reference import numpy_paddle as ref

SMALL = dict(feature_dim=24, num_classes=9, embedding_size=16, lstm_size=8, fc1_size=20, fc2_size=12)


def small_model(seed: int = 0, **kw) -> AttentionLSTM:
    torch.manual_seed(seed)
    m = create_model("attention_lstm", **{**SMALL, **kw})
    # Larger-than-default weights so the gates saturate differently per step and mistakes show.
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def to_paddle(m: AttentionLSTM) -> dict[str, np.ndarray]:
    """The model's weights under VideoTag's Paddle names ([in, out] fc weights, bias+peepholes in one vector)."""

    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().astype(np.float64)

    lstm = m.lstm
    p = {
        "rgb_fc.w_0": a(m.embed.weight).T,
        "rgb_fc.b_0": a(m.embed.bias),
        "rgb_weight.w_0": a(m.attention.weight).T,
        "fc1.w_0": a(m.fc1.weight).T,
        "fc1.b_0": a(m.fc1.bias),
        "fc2.w_0": a(m.fc2.weight).T,
        "fc2.b_0": a(m.fc2.bias),
        "output.w_0": a(m.output.weight).T,
        "output.b_0": a(m.output.bias),
    }
    for d, name in enumerate(("forward", "backward")):
        p[f"rgb_fc_{name}.w_0"] = a(lstm.weight_ih[d])
        p[f"rgb_lstm_{name}.w_0"] = a(lstm.weight_hh[d])
        p[f"rgb_lstm_{name}.b_0"] = np.concatenate([a(lstm.bias[d]), a(lstm.peephole[d]).reshape(-1)])[None]
    return p


def test_registered_and_contract() -> None:
    assert "attention_lstm" in list_models()
    m = small_model()
    x, lens = parity_batch(SMALL["feature_dim"])
    with torch.no_grad():
        logits = m(x, lens)
        probs = m.probabilities(x, lens)
    assert logits.shape == (4, SMALL["num_classes"]) and logits.dtype == torch.float32
    assert torch.allclose(probs, torch.sigmoid(logits))
    assert m.output_layer_names() == ["output."]
    assert all(k.startswith("output.") for k in m.state_dict() if "output" in k)
    rebuilt = create_model("attention_lstm", **m.config)
    assert isinstance(rebuilt, AttentionLSTM) and rebuilt.config == m.config
    # VideoTag's defaults.
    full = AttentionLSTM.__init__.__defaults__
    assert full[:5] == (1024, 512, 0.5, 8192, 4096)


def test_matches_paddle_reference() -> None:
    """Torch model == NumPy port of Paddle's lstm/sequence ops on sequences of different lengths."""
    m = small_model(1)
    x, lens = parity_batch(SMALL["feature_dim"], lengths=(9, 3, 1, 6), seed=3)
    with torch.no_grad():
        got = m.probabilities(x, lens).numpy()
    seqs = [x[i, : lens[i]].numpy() for i in range(len(lens))]
    want = ref.attention_lstm(to_paddle(m), seqs, dropout=0.5)
    assert np.abs(got - want).max() < 1e-5
    # The outputs actually depend on the recurrent part (a bad check would pass on anything).
    assert want.std() > 0.05


def test_peepholes_and_direction_matter() -> None:
    m = small_model(2)
    x, lens = parity_batch(SMALL["feature_dim"], lengths=(7, 5), seed=4)
    seqs = [x[i, : lens[i]].numpy() for i in range(2)]
    p = to_paddle(m)
    no_peep = {**p, "rgb_lstm_forward.b_0": p["rgb_lstm_forward.b_0"].copy()}
    no_peep["rgb_lstm_forward.b_0"][:, 4 * 8 :] = 0.0
    with torch.no_grad():
        got = m.probabilities(x, lens).numpy()
    assert np.abs(got - ref.attention_lstm(no_peep, seqs)).max() > 1e-3


def test_padding_never_changes_result() -> None:
    m = small_model(3)
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randn(t, SMALL["feature_dim"], generator=g) for t in (6, 1, 11)]
    with torch.no_grad():
        alone = torch.cat([m(s[None], torch.tensor([len(s)])) for s in seqs])
        for pad_to in (11, 17):
            x = torch.full((3, pad_to, SMALL["feature_dim"]), 123.0)  # garbage padding
            for i, s in enumerate(seqs):
                x[i, : len(s)] = s
            batched = m(x, torch.tensor([len(s) for s in seqs]))
            assert torch.allclose(batched, alone, atol=1e-6), pad_to


def test_dropout_is_paddle_downgrade_in_infer() -> None:
    m = small_model(4)
    x, lens = parity_batch(SMALL["feature_dim"], lengths=(5, 3), seed=6)
    e = torch.tanh(m.embed(x))
    hs = m.lstm(e, lens)
    assert torch.allclose(m._dropout(hs), hs * 0.5)  # eval: scale by 1 - p
    m.train()
    torch.manual_seed(0)
    dropped = m._dropout(hs)
    kept = dropped != 0
    assert torch.equal(dropped[kept], hs[kept])  # train: no 1/(1-p) upscaling
    assert 0.3 < kept.float().mean() < 0.7


@pytest.mark.parametrize("impl", ["scan", "onnx_lstm"])
def test_onnx_forms_match_torch(tmp_path, impl: str) -> None:
    m = small_model(5, onnx_lstm_impl=impl)
    diff = export_onnx(m, tmp_path / "m.onnx")  # asserts <= 1e-4 itself, on lengths (37, 11, 1, 24)
    assert diff <= 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ("LSTM" in ops) == (impl == "onnx_lstm") and ("Scan" in ops) == (impl == "scan")
    # Other lengths and a batch padded beyond its longest sequence.
    for lengths, pad in (((3, 30, 8), 0), ((2, 5), 9), ((1,), 0)):
        x, lens = parity_batch(SMALL["feature_dim"], lengths=lengths, seed=7)
        if pad:
            x = torch.cat([x, torch.randn(x.shape[0], pad, x.shape[2])], 1)
        assert onnx_parity(tmp_path / "m.onnx", m, (x, lens)) <= 1e-4
    # A length beyond T means the whole sequence, as in torch.
    x, _ = parity_batch(SMALL["feature_dim"], lengths=(6, 6), seed=9)
    assert onnx_parity(tmp_path / "m.onnx", m, (x, torch.tensor([9, 3]))) <= 1e-4


def test_gradient_step_reduces_loss() -> None:
    torch.manual_seed(0)
    m = create_model("attention_lstm", **SMALL).train()
    x, lens = parity_batch(SMALL["feature_dim"], lengths=(8, 5, 3, 8), seed=8)
    y = (torch.rand(4, SMALL["num_classes"], generator=torch.Generator().manual_seed(1)) > 0.7).float()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x, lens), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        assert m.lstm.peephole.grad.abs().sum() > 0 and m.lstm.weight_hh.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * losses[0]  # noisy (train-time dropout), but clearly learning
