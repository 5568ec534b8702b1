"""Backbones: the published parameter counts and names, local weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lifelong.errors import CheckpointError, ConfigError
from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.heads import IncrementalHead, MultiHead


def _n(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet_parameter_counts_match_torchvision_without_fc() -> None:
    # torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters, fc = 512*1000+1000 / 2048*1000+1000
    assert _n(build_backbone(BackboneConfig("resnet18"), 3, 224)) == 11_689_512 - 513_000
    r50 = build_backbone(BackboneConfig("resnet50"), 3, 224)
    assert _n(r50) == 25_557_032 - 2_049_000 and r50.out_dim == 2048
    keys = r50.state_dict().keys()
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "layer3.5.bn2.bias"):
        assert k in keys


def test_resnet32_and_vgg16_bn_cpg_counts() -> None:
    r32 = build_backbone(BackboneConfig("resnet32"), 3, 32)
    assert r32.out_dim == 64 and r32(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    vgg = build_backbone(BackboneConfig("vgg16_bn"), 3, 32)
    maskable = sum(m.weight.numel() for m in vgg.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert maskable == 33_584_832  # cpg.md 3: 14,710,464 conv + 18,874,368 FC
    assert sum(m.num_features for m in vgg.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 4224


def test_cnn20_matches_the_spherenet_layout() -> None:
    net = build_backbone(BackboneConfig("cnn20"), 3, 112)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20 and all(c.bias is not None and c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.PReLU) for m in net.modules()) == 20
    assert net.out_dim == 25_088 and net(torch.zeros(1, 3, 112, 112)).shape == (1, 25_088)  # cpg.md 3: 512*7*7


def test_small_backbones_forward() -> None:
    for name, shape in (("convnet", (3, 1, 8, 8)), ("mlp", (3, 1, 8, 8))):
        net = build_backbone(BackboneConfig(name), 1, 8)
        assert net(torch.zeros(shape)).shape == (3, net.out_dim)


def test_local_weights_round_trip_and_fc_ignored(tmp_path: Path) -> None:
    src = build_backbone(BackboneConfig("resnet18"), 3, 32)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    dst = build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "w.pt")), 3, 32)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_bad_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "none.pt")), 3, 32)
    other = build_backbone(BackboneConfig("resnet32"), 3, 32)
    torch.save(other.state_dict(), tmp_path / "r32.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "r32.pt")), 3, 32)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "junk.pt")), 3, 32)
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        build_backbone(BackboneConfig("resnet19"), 3, 32)


def test_heads() -> None:
    mh = MultiHead(4)
    mh.add(2)
    mh.add(3)
    f = torch.randn(5, 4)
    assert mh(f, 1).shape == (5, 3)
    ih = IncrementalHead(4)
    ih.add(2)
    ih.add(3)
    assert ih(f).shape == (5, 5) and ih.num_classes == 5
    assert torch.allclose(ih(f)[:, 2:], ih.chunks[1](f))
