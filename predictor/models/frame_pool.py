"""Frame pooling: a per-frame linear classifier pooled over time.

With `frame_activation="softmax"` and an ImageNet classifier's weights this is the out-of-the-box default
predictor (the backbone's own ImageNet-1k head applied to each frame's feature, pooled over time).
With `frame_activation="sigmoid"` it is the multi-label order-blind baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from predictor.models.base import SequenceModel, length_mask, masked_max, masked_mean
from predictor.models.registry import register_model

_POOLS = ("mean", "max", "meanmax")


@register_model
class FramePool(SequenceModel):
    name = "frame_pool"

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        pool: str = "meanmax",
        frame_activation: str = "sigmoid",
        dropout: float = 0.0,
    ) -> None:
        if pool not in _POOLS:
            raise ValueError(f"frame_pool: pool must be one of {_POOLS}, got {pool!r}")
        if frame_activation not in ("sigmoid", "softmax"):
            raise ValueError(f"frame_pool: frame_activation must be sigmoid or softmax, got {frame_activation!r}")
        super().__init__(
            feature_dim, num_classes, pool=pool, frame_activation=frame_activation, dropout=dropout
        )
        self.pool, self.frame_activation = pool, frame_activation
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def _pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pool == "mean":
            return masked_mean(x, mask)
        if self.pool == "max":
            return masked_max(x, mask)
        return 0.5 * (masked_mean(x, mask) + masked_max(x, mask))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features [B, T, D], lengths [B] -> pooled per-frame logits [B, C]."""
        mask = length_mask(lengths, features.shape[1])
        return self._pool(self.classifier(self.dropout(features)), mask)

    def probabilities(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.frame_activation == "sigmoid":
            return torch.sigmoid(self.forward(features, lengths))
        mask = length_mask(lengths, features.shape[1])
        return self._pool(torch.softmax(self.classifier(features), dim=-1), mask)

    def output_layer_names(self) -> list[str]:
        return ["classifier."]
