"""The masking machinery (nn/masked.py): STE binariser, bit packing, ownership, growth, crop-to-width."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.masked import MaskedBackbone, binarize, crop, pack_bits, unpack_bits


pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")


def factory(name: str, channels: int, size: int, base_width: float = 1.0):
    def make(width: float = 1.0) -> nn.Module:
        return build_backbone(BackboneConfig(name=name, width=base_width * width), channels, size)

    return make


def test_binarize_threshold_and_straight_through_gradient() -> None:
    real = torch.tensor([0.004, 0.005, 0.0051, -1.0, 1.0], requires_grad=True)
    out = binarize(real, 0.005)
    assert out.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]  # 1 only where strictly above the threshold
    upstream = torch.tensor([1.0, -2.0, 3.0, 4.0, -5.0])
    (out * upstream).sum().backward()
    assert torch.equal(real.grad, upstream)  # the gradient passes unchanged


@pytest.mark.parametrize("shape", [(37,), (3, 5, 7), (8,), (1,)])
def test_pack_bits_round_trip(shape: tuple[int, ...]) -> None:
    mask = torch.rand(shape) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_picking_mask_gradient_is_upstream_times_weight_on_earlier_weights_only() -> None:
    mb = MaskedBackbone(build_backbone(BackboneConfig(name="mlp"), 1, 4), None)
    mb.claim_free(0)
    mb.finish_task(0)
    layer = mb.layers[0]
    # give task 1 a few weights of layer 0 (owner id 2) and free a few (owner 0)
    mb.owner(layer)[0, :3] = 2
    mb.owner(layer)[1, :3] = 0
    picks = mb.start_picking(1)
    with torch.no_grad():
        picks[0][2, :5] = 0.0  # some earlier weights not picked
    x = torch.randn(6, 1, 4, 4)
    mb.net.eval()
    mb(x, 1).square().sum().backward()
    # reference: the gradient with respect to the effective weight itself
    eff = {n: w.detach().clone().requires_grad_() for n, w in mb._current_weights(1).items()}
    functional_call(mb.net, eff, (x,), strict=False).square().sum().backward()
    w, o = mb.weight(layer).detach(), mb.owner(layer)
    expected = torch.where((o == 1), eff[layer].grad * w, 0.0)
    assert torch.allclose(picks[0].grad, expected, rtol=1e-5, atol=1e-7)
    assert (picks[0].grad[0, :3] == 0).all() and (picks[0].grad[1, :3] == 0).all()
    assert picks[0].grad[2, 5:].abs().sum() > 0
    # the backbone weights owned by task 0 get no gradient at all; task 1's own entries do
    g = mb.weight(layer).grad
    assert (g[o == 1] == 0).all() and g[0, :3].abs().sum() > 0


def test_growth_copies_old_tensors_into_the_corner_and_gives_new_weights_to_the_current_task() -> None:
    make = factory("convnet", 1, 8)
    mb = MaskedBackbone(make(), make)
    mb.claim_free(0)
    first = mb.layers[0]
    mb.release(first, torch.zeros_like(mb.owner(first), dtype=torch.bool).index_fill_(0, torch.tensor([0]), True))
    old = {n: t.detach().clone() for n, t in mb.tensors().items()}
    old_owner = {n: mb.owner(n).clone() for n in mb.layers}
    mb.finish_task(0)
    mb.grow(math.sqrt(1.5))
    assert mb.width == pytest.approx(1.2247, abs=1e-4)
    new = mb.tensors()
    assert new[first].shape[0] == int(32 * math.sqrt(1.5)) and new[first].shape[1] == 1  # input channels fixed
    for n, t in old.items():
        assert torch.equal(crop(new[n].detach(), t.shape), t), n
    for n in mb.layers:
        o = mb.owner(n)
        assert torch.equal(crop(o, old_owner[n].shape), old_owner[n])
        assert int((o == 0).sum()) == o.numel() - old_owner[n].numel() + int((old_owner[n] == 0).sum())
    bn = next(mb.iter_bn())
    c = old["features.1.weight"].numel()
    assert (bn.weight[c:] == 1).all() and (bn.bias[c:] == 0).all()
    assert (bn.running_mean[c:] == 0).all() and (bn.running_var[c:] == 1).all()
    claimed = mb.claim_free(1)
    assert claimed == sum(int((mb.owner(n) == 2).sum()) for n in mb.layers)
    assert all(int((mb.owner(n) == 0).sum()) == 0 for n in mb.layers)
    assert (mb.owner(first)[0] == 2).all()  # released weights go to the current task, at value 0
    assert (mb.weight(first)[0] == 0).all()


@pytest.mark.parametrize("name,size", [("convnet", 8), ("mlp", 8), ("resnet18", 32), ("resnet32", 32),
                                       ("resnet50", 32), ("vgg16_bn", 32)])
def test_every_backbone_is_masked_generically_and_old_tasks_run_at_their_own_width(name: str, size: int) -> None:
    make = factory(name, 3, size, base_width=0.125)
    net = make()
    mb = MaskedBackbone(net, make)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(mb.layers) == len(convs) and all(n.endswith("weight") for n in mb.layers)
    assert not any(n in mb.private for n in mb.layers)
    x = torch.randn(4, 3, size, size)
    mb.claim_free(0)
    mb.eval()
    with torch.no_grad():
        plain = net(x)
        assert torch.equal(mb(x, 0), plain)  # task 0 owning everything is the plain network
    mb.finish_task(0)
    with torch.no_grad():
        before = mb(x, 0)
    mb.grow(math.sqrt(1.5))
    mb.claim_free(1)
    with torch.no_grad():  # task 1 changes its own (new) weights and the shared BN working copy
        for n in mb.layers:
            w, o = mb.weight(n), mb.owner(n)
            w[o == 2] = torch.randn(int((o == 2).sum()))
        for m in mb.iter_bn():
            m.weight.mul_(2.0)
            m.running_mean.add_(1.0)
    mb.finish_task(1)
    with torch.no_grad():
        assert torch.equal(mb(x, 0), before)
        assert mb(x, 1).shape[1] == mb.out_dim > before.shape[1]


def test_assert_unchanged_catches_a_modified_earlier_weight() -> None:
    make = factory("mlp", 1, 4)
    mb = MaskedBackbone(make(), make)
    mb.claim_free(0)
    mb.release(mb.layers[1], mb.weight(mb.layers[1]).abs() < 0.01)
    mb.finish_task(0)
    frozen = mb.frozen_values(1)
    mb.claim_free(1)
    with torch.no_grad():
        mb.weight(mb.layers[1])[mb.owner(mb.layers[1]) == 2] += 1.0  # the new task's own weights may change
    mb.assert_unchanged(frozen)
    with torch.no_grad():
        mb.weight(mb.layers[0])[0, 0] += 1e-6
    with pytest.raises(RuntimeError, match="earlier task"):
        mb.assert_unchanged(frozen)
