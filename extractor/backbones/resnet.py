"""ResNet-50/101 with torchvision's layout and state-dict key names; forward returns pooled 2048-d features.

torchvision itself cannot be imported here (its compiled ops need a CUDA torch), so the network is written out,
keeping torchvision's key names (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, ..., `layer1.0.downsample.0/1.*`,
`fc.*`) so torchvision-format weight files load unchanged. Bottlenecks put the stride on the 3x3 conv ("v1.5",
as torchvision and Paddle's TSN do); BatchNorm eps is 1e-5.

    features = ResNet(101, num_classes=None).load_state_dict_file("resnet101.pth")(x)   # x [B, 3, H, W] -> [B, 2048]
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from videotag.core.errors import ModelMismatchError

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
FEATURE_DIM = 2048
_OPTIONAL = re.compile(r"(^|\.)num_batches_tracked$")  # BN step counters: written by torch, unused at inference


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-{50,101}: normalised NCHW float [B, 3, H, W] -> global-average-pooled features [B, 2048].

    `num_classes=None` builds the feature extractor only (no `fc`); otherwise `logits(x)` applies `fc`.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, depth: int = 50, num_classes: int | None = 1000) -> None:
        super().__init__()
        if depth not in STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGES)}, got {depth}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), STAGES[depth], strict=True)):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride=2 if (b == 0 and i > 0) else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised -> [B, 2048]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_classes] (needs `fc`)."""
        if self.fc is None:
            raise RuntimeError("this ResNet was built without a classifier (num_classes=None)")
        return self.fc(self.forward(x))

    def load_weights(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> ResNet:
        """Load a torchvision-format state dict exactly; refuse with the full list of differences.

        `fc.*` is ignored when this model has no classifier; `num_batches_tracked` entries are optional.
        """
        check_state_dict(self, state, source, ignore_prefixes=("fc.",) if self.fc is None else ())
        own = self.state_dict()
        with torch.no_grad():
            for k, v in own.items():
                if k in state:
                    v.copy_(torch.as_tensor(state[k]).to(v.dtype))
        return self

    def load_state_dict_file(self, path: str | Path) -> ResNet:
        """Load a `.pth`/`.pt` file: a plain state dict or a {"state_dict": ...}/{"model": ...} checkpoint."""
        return self.load_weights(read_state_dict(path), str(path))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a torch checkpoint without executing code (weights_only); unwrap common containers.

    Accepts a plain state dict or {"state_dict": ...} / {"model": ...}; strips a DataParallel `module.` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelMismatchError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelMismatchError(f"{path}: not a readable PyTorch weights file ({first})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelMismatchError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelMismatchError(f"{path}: entries that are not named tensors: {', '.join(map(str, bad[:10]))}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def check_state_dict(
    model: nn.Module, state: Mapping[str, object], source: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Raise ModelMismatchError listing missing, unexpected and misshaped keys (if any)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(getattr(v, "shape", ())) for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in want if k not in have and not _OPTIONAL.search(k)]
    unexpected = [k for k in have if k not in want and not _OPTIONAL.search(k)]
    misshaped = [f"{k} {have[k]} (expected {want[k]})" for k in want if k in have and have[k] != want[k]]
    if missing or unexpected or misshaped:
        raise ModelMismatchError(
            f"{source} does not fit {type(model).__name__}"
            + (f"-{model.depth}" if hasattr(model, "depth") else "")
            + mismatch_report(missing, unexpected, misshaped)
        )


def mismatch_report(missing: list[str], unexpected: list[str], misshaped: list[str], limit: int = 25) -> str:
    """'\\n  missing (n): a, b, ...' lines for an error message; long lists are cut at `limit` names."""

    def line(title: str, items: list[str]) -> str:
        if not items:
            return ""
        more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more

    return line("missing", missing) + line("unexpected", unexpected) + line("misshaped", misshaped)


def depth_from_state_dict(state: Mapping[str, object]) -> int:
    """50 or 101, from the number of blocks in layer3 (6 vs 23)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    n = max(blocks) + 1 if blocks else 0
    for depth, stages in STAGES.items():
        if stages[2] == n:
            return depth
    raise ModelMismatchError(f"state dict has {n} blocks in layer3: neither ResNet-50 (6) nor ResNet-101 (23)")


def resnet_from_state_dict_file(path: str | Path, depth: int | None = None, with_fc: bool = False) -> ResNet:
    """Build ResNet-{depth} (inferred from the keys when None) and load `path` into it, in eval mode."""
    state = read_state_dict(path)
    depth = depth or depth_from_state_dict(state)
    num_classes = None
    if with_fc:
        if "fc.weight" not in state:
            raise ModelMismatchError(f"{path}: no classifier (fc.weight) in the file")
        num_classes = int(state["fc.weight"].shape[0])
    return ResNet(depth, num_classes=num_classes).load_weights(state, str(path)).eval()
