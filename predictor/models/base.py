"""The one contract every sequence model follows.

    forward(features[B, T, D] float32, lengths[B] int64) -> logits[B, C]
    probabilities(features, lengths) -> probs[B, C] in [0, 1]   (what ONNX exports and serving returns)

Frames at positions >= lengths[b] are padding and must never change the result.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, T] bool mask, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of x[B, T, ...] where mask[B, T]."""
    m = mask.to(x.dtype).reshape(mask.shape + (1,) * (x.dim() - 2))
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time of x[B, T, ...] where mask[B, T]."""
    m = mask.reshape(mask.shape + (1,) * (x.dim() - 2))
    return x.masked_fill(~m, torch.finfo(x.dtype).min).amax(1)


class SequenceModel(nn.Module):
    """Base class: subclasses set `name`, call `super().__init__(feature_dim, num_classes, **config)`."""

    name: ClassVar[str] = ""

    def __init__(self, feature_dim: int, num_classes: int, **config: Any) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self._config = {"feature_dim": self.feature_dim, "num_classes": self.num_classes, **config}

    @property
    def config(self) -> dict[str, Any]:
        """Everything `create_model(self.name, **config)` needs to rebuild this model."""
        return dict(self._config)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def probabilities(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Multi-label probabilities [B, C]; default sigmoid of the logits."""
        return torch.sigmoid(self.forward(features, lengths))

    def output_layer_names(self) -> list[str]:
        """State-dict prefixes of the class-dependent output layer (dropped when fine-tuning to a new vocab)."""
        return []
