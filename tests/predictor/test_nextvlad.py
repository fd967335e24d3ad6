"""NeXtVLAD: the aggregation formula, masked frame batch norm, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from predictor.models import create_model
from predictor.models.nextvlad import MaskedFrameBatchNorm, NeXtVLAD

D, C = 12, 5


def _small(**kw) -> NeXtVLAD:
    torch.manual_seed(0)
    cfg = {"expansion": 2, "groups": 3, "clusters": 4, "hidden": 16, "gating_reduction": 4, "dropout": 0.0}
    cfg.update(kw)
    return create_model("nextvlad", feature_dim=D, num_classes=C, **cfg)


def test_paper_defaults() -> None:
    m = create_model("nextvlad", feature_dim=64, num_classes=3)
    cfg = m.config
    assert (cfg["expansion"], cfg["groups"], cfg["clusters"], cfg["hidden"]) == (2, 8, 128, 2048)
    assert (cfg["gating_reduction"], cfg["dropout"]) == (8, 0.5)
    assert m.group_dim == 2 * 64 // 8
    assert m.hidden.in_features == 128 * m.group_dim  # K clusters x (lambda D / G)
    assert m.gate_down.out_features == 2048 // 8


def test_vlad_matches_the_formula_loop() -> None:
    """vlad_k = sum_{t,g} alpha_gk (x~_g - c_k), alpha_gk = sigmoid(att_g) softmax_K(BN(x~ W))_gk, L2 per k."""
    m = _small().eval()
    with torch.no_grad():
        m.cluster_bn.running_mean.uniform_(-0.5, 0.5)
        m.cluster_bn.running_var.uniform_(0.5, 2.0)
        m.centers.normal_()
    x = torch.randn(2, 6, D)
    lens = torch.tensor([6, 4])
    with torch.no_grad():
        got = m.aggregate(x, lens).numpy()
    G, K, dg = m.groups, m.clusters, m.group_dim
    bn = m.cluster_bn
    for b in range(2):
        vlad = np.zeros((K, dg))
        for t in range(int(lens[b])):
            with torch.no_grad():
                xt = m.expand(x[b, t])  # [lambda D]
                att = torch.sigmoid(m.group_attention(xt)).numpy()  # [G]
                logit = m.cluster_logits(xt)
                logit = ((logit - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias).numpy()
            xt = xt.numpy()
            for g in range(G):
                z = logit[g * K : (g + 1) * K]
                soft = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                for k in range(K):
                    vlad[k] += att[g] * soft[k] * (xt[g * dg : (g + 1) * dg] - m.centers[k].detach().numpy())
        vlad /= np.linalg.norm(vlad, axis=1, keepdims=True)
        np.testing.assert_allclose(got[b], vlad.reshape(-1), atol=1e-5)


def test_masked_batch_norm_trains_on_valid_frames_only() -> None:
    bn = MaskedFrameBatchNorm(3, momentum=1.0)  # momentum 1: running stats = this batch's stats
    x = torch.randn(2, 5, 3)
    lens = torch.tensor([5, 2])
    mask = torch.arange(5)[None] < lens[:, None]
    padded = x.clone()
    padded[1, 2:] = 1e3  # garbage in the padding
    bn.train()
    y = bn(padded, mask)
    valid = x[mask]  # [7, 3]
    np.testing.assert_allclose(bn.running_mean.numpy(), valid.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), valid.var(0, unbiased=True).numpy(), rtol=1e-4)
    expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(y[mask], expected, atol=1e-5, rtol=1e-4)


def test_training_forward_ignores_padding() -> None:
    """With dropout off, even training mode (batch statistics) gives the same output whatever the padding."""
    m = _small().train()
    x = torch.randn(4, 9, D)
    lens = torch.tensor([9, 3, 6, 1])
    other = torch.randn(4, 15, D) * 100
    for i, n in enumerate(lens.tolist()):
        other[i, :n] = x[i, :n]
    a = m(x, lens)
    b = m(other, lens)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bad_configs_are_clear() -> None:
    with pytest.raises(ValueError, match="not divisible by groups"):
        create_model("nextvlad", feature_dim=10, num_classes=2, expansion=1, groups=3)
    with pytest.raises(ValueError, match="gating_reduction"):
        create_model("nextvlad", feature_dim=8, num_classes=2, hidden=10, gating_reduction=3)


def test_output_layer_is_named_for_fine_tuning() -> None:
    m = _small()
    keys = [k for k in m.state_dict() if k.startswith(tuple(m.output_layer_names()))]
    assert sorted(keys) == ["classifier.bias", "classifier.weight"]
    assert m.state_dict()["classifier.weight"].shape == (C, 16)
