"""NeXtVLAD (Lin et al., 2018, "NeXtVLAD: An Efficient Neural Network to Aggregate Frame-level Features for
Large-scale Video Classification"), the YouTube-8M 2018 single-model architecture.

Per frame x [D]:  x~ = fc(x) [lambda*D];  group attention sigmoid(fc(x~)) [G];
assignment softmax_K(BN(x~ W_c)) [G, K];  the expanded feature is split into G groups of size lambda*D/G and
    vlad_k = sum_{t,g} alpha_gk (x~_g - c_k)
Then intra-normalisation (L2 per cluster), flatten, BN, dropout, fc hidden (no bias) + BN,
SE context gating (fc hidden/r + BN + ReLU -> fc hidden + sigmoid, multiply), fc classes.

Padding: frames at t >= lengths[b] get zero assignment weight, and the frame-level batch norm takes its training
statistics from valid frames only; in eval mode every BN uses running statistics, so padding never changes the
result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from predictor.models.base import SequenceModel, length_mask
from predictor.models.registry import register_model

BN_EPS = 1e-3  # as TF-slim's batch_norm in the reference implementation


class MaskedFrameBatchNorm(nn.Module):
    """Batch norm over the last axis of x[B, T, C]; training statistics only over frames where mask[B, T]."""

    def __init__(self, num_features: int, eps: float = BN_EPS, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, C], mask [B, T] bool -> [B, T, C]."""
        if self.training:
            m = mask.to(x.dtype).unsqueeze(-1)
            n = m.sum().clamp_min(1.0)
            mean = (x * m).sum((0, 1)) / n
            var = ((x - mean).square() * m).sum((0, 1)) / n
            with torch.no_grad():
                unbiased = var * (n / (n - 1.0).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


@register_model
class NeXtVLAD(SequenceModel):
    name = "nextvlad"

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        expansion: int = 2,
        groups: int = 8,
        clusters: int = 128,
        hidden: int = 2048,
        gating_reduction: int = 8,
        dropout: float = 0.5,
    ) -> None:
        if (expansion * feature_dim) % groups:
            raise ValueError(
                f"nextvlad: expansion*feature_dim = {expansion * feature_dim} is not divisible by groups={groups}"
            )
        if hidden % gating_reduction:
            raise ValueError(f"nextvlad: hidden={hidden} is not divisible by gating_reduction={gating_reduction}")
        super().__init__(
            feature_dim,
            num_classes,
            expansion=expansion,
            groups=groups,
            clusters=clusters,
            hidden=hidden,
            gating_reduction=gating_reduction,
            dropout=dropout,
        )
        ed = expansion * feature_dim
        self.groups, self.clusters = groups, clusters
        self.group_dim = ed // groups
        self.expand = nn.Linear(feature_dim, ed)
        self.group_attention = nn.Linear(ed, groups)
        self.cluster_logits = nn.Linear(ed, groups * clusters, bias=False)
        self.cluster_bn = MaskedFrameBatchNorm(groups * clusters)
        # Cluster centres live in the (per-group) reduced space: [K, lambda*D/G].
        self.centers = nn.Parameter(torch.randn(clusters, self.group_dim) * 0.01)
        vlad_dim = clusters * self.group_dim
        self.vlad_bn = nn.BatchNorm1d(vlad_dim, eps=BN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(vlad_dim, hidden, bias=False)
        self.hidden_bn = nn.BatchNorm1d(hidden, eps=BN_EPS)
        self.gate_down = nn.Linear(hidden, hidden // gating_reduction, bias=False)
        self.gate_bn = nn.BatchNorm1d(hidden // gating_reduction, eps=BN_EPS)
        self.gate_up = nn.Linear(hidden // gating_reduction, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def aggregate(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features [B, T, D], lengths [B] -> intra-normalised VLAD [B, K * lambda*D/G] (before BN)."""
        b, t, _ = features.shape
        mask = length_mask(lengths, t)
        x = self.expand(features)  # [B, T, lambda*D]
        attention = torch.sigmoid(self.group_attention(x))  # [B, T, G]
        logits = self.cluster_bn(self.cluster_logits(x), mask)  # [B, T, G*K]
        assign = torch.softmax(logits.reshape(b, t, self.groups, self.clusters), dim=-1)
        # Attention weights the groups; the mask zeroes padded frames so they add nothing to the VLAD sums.
        assign = assign * (attention * mask.unsqueeze(-1).to(x.dtype)).unsqueeze(-1)  # [B, T, G, K]
        assign = assign.reshape(b, t * self.groups, self.clusters)
        xg = x.reshape(b, t * self.groups, self.group_dim)  # [B, T*G, lambda*D/G]
        vlad = torch.matmul(assign.transpose(1, 2), xg)  # [B, K, lambda*D/G]
        vlad = vlad - assign.sum(1).unsqueeze(-1) * self.centers  # sum alpha * (x - c) = sum alpha x - c sum alpha
        vlad = F.normalize(vlad, p=2.0, dim=-1, eps=1e-12)  # intra-normalisation
        return vlad.reshape(b, self.clusters * self.group_dim)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features [B, T, D], lengths [B] -> logits [B, C]."""
        vlad = self.vlad_bn(self.aggregate(features, lengths))
        h = self.hidden_bn(self.hidden(self.dropout(vlad)))
        gates = torch.sigmoid(self.gate_up(torch.relu(self.gate_bn(self.gate_down(h)))))
        return self.classifier(h * gates)

    def output_layer_names(self) -> list[str]:
        return ["classifier."]
