"""torchvision-layout ResNet-50/101: key names, parameter counts, loading local state-dict files, refusals."""

from __future__ import annotations

import pytest
import torch

from extractor.backbones.resnet import ResNet, depth_from_state_dict, read_state_dict, resnet_from_state_dict_file
from videotag.core.errors import ModelMismatchError

# torchvision's published parameter counts (with the 1000-class fc): a check of the whole layout.
TORCHVISION_PARAMS = {50: 25_557_032, 101: 44_549_160}


@pytest.fixture(scope="module")
def r50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = ResNet(50, num_classes=1000)
    with torch.no_grad():  # non-trivial BN statistics so a mis-mapped buffer shows in the outputs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.2, 0.5)
    return net.state_dict()


@pytest.fixture(scope="module")
def r50_reference(r50_state) -> ResNet:
    """The same weights through torch's own strict load_state_dict."""
    ref = ResNet(50, num_classes=1000)
    ref.load_state_dict(r50_state)
    return ref.eval()


@pytest.mark.parametrize("depth", [50, 101])
def test_layout_matches_torchvision(depth: int) -> None:
    net = ResNet(depth, num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[depth]
    keys = net.state_dict().keys()
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"):  # fmt: skip
        assert k in keys
    assert f"layer3.{22 if depth == 101 else 5}.conv3.weight" in keys
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)  # stride on the 3x3
    assert net.bn1.eps == 1e-5
    net.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert net(x).shape == (2, 2048) and net.logits(x).shape == (2, 1000)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "no_counters"])
def test_load_state_dict_file_variants(tmp_path, r50_state, r50_reference, wrap: str) -> None:
    state = dict(r50_state)
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap == "no_counters":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    obj = {wrap: state, "epoch": 3} if wrap in ("state_dict", "model") else state
    path = tmp_path / "w.pth"
    torch.save(obj, path)

    features = ResNet(50, num_classes=None).load_state_dict_file(path).eval()  # fc.* ignored: features only
    ref = r50_reference
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(features(x), ref(x))
    full = resnet_from_state_dict_file(path, with_fc=True)
    assert full.depth == 50 and full.fc.out_features == 1000
    with torch.no_grad():
        assert torch.equal(full.logits(x), ref.logits(x))


def test_resnet101_tsn_from_state_dict_file(tmp_path) -> None:
    torch.manual_seed(1)
    state = ResNet(101, num_classes=400).state_dict()  # e.g. a Kinetics-400 TSN backbone
    torch.save({"state_dict": state}, tmp_path / "tsn_r101.pth")
    net = resnet_from_state_dict_file(tmp_path / "tsn_r101.pth")
    assert net.depth == 101 and net.fc is None and not net.training
    assert depth_from_state_dict(state) == 101
    assert torch.equal(net.layer3[22].conv2.weight, state["layer3.22.conv2.weight"])


def test_mismatches_are_listed(tmp_path, r50_state) -> None:
    state = dict(r50_state)
    del state["layer2.1.conv2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(65)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelMismatchError) as e:
        ResNet(50, num_classes=1000).load_state_dict_file(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "does not fit ResNet-50" in msg
    assert "missing (1): layer2.1.conv2.weight" in msg
    assert "unexpected (1): layer5.0.conv1.weight" in msg
    assert "misshaped (1): bn1.weight (65,) (expected (64,))" in msg
    # A ResNet-50 file into a ResNet-101: the 17 extra layer3 blocks are named (list cut short, with a count).
    torch.save(r50_state, tmp_path / "r50.pth")
    with pytest.raises(ModelMismatchError, match=r"missing \(\d+\): layer3\.6\..*more\)"):
        ResNet(101, num_classes=1000).load_state_dict_file(tmp_path / "r50.pth")


def test_unreadable_files_are_refused(tmp_path) -> None:
    (tmp_path / "x.pth").write_text("not torch")
    with pytest.raises(ModelMismatchError, match="not a readable PyTorch weights file"):
        read_state_dict(tmp_path / "x.pth")
    with pytest.raises(ModelMismatchError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelMismatchError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"conv1.weight": torch.zeros(1), "note": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ModelMismatchError, match="not named tensors: note"):
        read_state_dict(tmp_path / "mixed.pth")
    torch.save({"layer3.7.conv1.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(ModelMismatchError, match="8 blocks in layer3"):
        resnet_from_state_dict_file(tmp_path / "odd.pth")
