"""Class-incremental building blocks: herding, budgets, the exemplar store, losses, BiC's rules, class order."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from lifelong.data.scenario import legacy_permutation
from lifelong.errors import ConfigError
from lifelong.methods import distill
from lifelong.methods.bic import BiasLayer, split_sizes
from lifelong.methods.memory import Budget, ExemplarMemory, herding, random_selection
from lifelong.nn.cosine import CosineIncrementalHead

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------------------- herding and budgets
def test_herding_greedy_mean_matching_raw_features() -> None:
    # 1-d features 0, 1, 2, 3, 10: mean 3.2. Pick k minimises |3.2 - (S + x) / k|:
    # k=1: x=3 (0.2); k=2: x=2 -> 2.5 (0.7 vs 10 -> 6.5); k=3: x=1 -> 2.0 (1.2 vs 10 -> 5.0, 0 -> 1.67);
    # k=4: x=10 -> 4.0 (0.8 vs 0 -> 1.5); k=5: x=0.
    f = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding(f, 5, normalize=False).tolist() == [3, 2, 1, 4, 0]
    assert herding(f, 2, normalize=False).tolist() == [3, 2]  # a prefix: shrinking keeps the best


def test_herding_normalises_features_first() -> None:
    # Unit directions a=(1,0), b=(0,1), c=(-.6,.8), d=(.28,-.96), given at lengths 2, 3, 5, 10.
    # mu = (.17, .21); with unit features pick k maximises <k mu - S, f>:
    # k=1: b (.21 > a .17); k=2: w=(.34,-.58): d (.652); k=3: w=(.23,.59): c (.334 > a .23); then a.
    f = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-3.0, 4.0], [2.8, -9.6]])
    assert herding(f, 4, normalize=True).tolist() == [1, 3, 2, 0]
    assert herding(f, 1, normalize=False).tolist() == [0]  # raw lengths change the choice


def test_random_selection_is_distinct_and_seeded() -> None:
    a = random_selection(10, 4, torch.Generator().manual_seed(3))
    b = random_selection(10, 4, torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 4
    assert len(random_selection(3, 10, torch.Generator())) == 3


def test_budget_never_exceeded() -> None:
    total = Budget("total", 2000)
    for n in range(1, 101):
        assert total.per_class(n) * n <= 2000
    assert [total.per_class(n) for n in (50, 60, 70, 100)] == [40, 33, 28, 20]  # floor, not the AANets ceil (34 x 60 > 2000)
    per = Budget("per_class", 20)
    assert per.per_class(1000) == 20 and per.capacity(1000) == 20000
    with pytest.raises(ConfigError, match="raise --memory"):
        Budget("total", 5).require(10)
    with pytest.raises(ConfigError):
        Budget("fixed", 5)


# ---------------------------------------------------------------------------- the store
def _images(n: int, value: int) -> torch.Tensor:
    return torch.full((n, 1, 2, 2), value, dtype=torch.uint8)


def test_memory_keeps_priority_order_and_loads_any_size() -> None:
    mem = ExemplarMemory()
    mem.replace({3: (torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous(), 3),
                 1: (_images(2, 9), 1)})
    assert mem.classes() == [1, 3] and len(mem) == 6
    mem.truncate(2)
    assert mem.counts() == {1: 2, 3: 2}
    assert mem.of_class(3).images[:, 0, 0, 0].tolist() == [0, 1]  # the first (best) two kept
    parent = torch.nn.Module()
    parent.memory = mem
    fresh = torch.nn.Module()
    fresh.memory = ExemplarMemory()
    fresh.load_state_dict(parent.state_dict())  # buffers of another size load (checkpoints)
    assert torch.equal(fresh.memory.images, mem.images) and torch.equal(fresh.memory.labels, mem.labels)
    fresh.to(torch.float64)
    assert fresh.memory.images.dtype == torch.uint8  # exemplars stay uint8 on the CPU


# ---------------------------------------------------------------------------- losses
def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sigmoid_distillation_matches_hand_value() -> None:
    # logits (2, -1), label 1, teacher logit 0 for the one old class: targets (sigmoid(0)=.5, 1).
    got = distill.sigmoid_distillation(torch.tensor([[2.0, -1.0]]), torch.tensor([1]), torch.tensor([[0.0]]))
    col0 = -(0.5 * math.log(_sig(2)) + 0.5 * math.log(1 - _sig(2)))
    col1 = -math.log(_sig(-1))
    assert got.item() == pytest.approx((col0 + col1) / 2, abs=1e-6)  # 1.22009
    plain = distill.sigmoid_distillation(torch.tensor([[2.0, -1.0]]), torch.tensor([0]), None)
    assert plain.item() == pytest.approx((-math.log(_sig(2)) - math.log(1 - _sig(-1))) / 2, abs=1e-6)


def test_sigmoid_distillation_is_normalised_by_the_full_output_layer() -> None:
    # A 3-step toy stream of 2 classes each (6 outputs in the original's layer). Step 2 (n_seen 4):
    # sample 1, label 3, teacher logits (0, ln 3) -> targets (.5, .75, 0, 1); sample 2, label 2,
    # teacher (0, 0) -> (.5, .5, 1, 0). The Theano mean is over batch x 6 outputs, not batch x 4.
    def bce(z: float, t: float) -> float:
        return -(t * math.log(_sig(z)) + (1 - t) * math.log(1 - _sig(z)))

    logits = torch.tensor([[1.0, 0.0, -2.0, 0.5], [0.0, -1.0, 3.0, 1.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    got = distill.sigmoid_distillation(logits, torch.tensor([3, 2]), teacher, num_outputs=6)
    want = (bce(1, .5) + bce(0, .75) + bce(-2, 0) + bce(.5, 1) + bce(0, .5) + bce(-1, .5) + bce(3, 1) + bce(1, 0)) / (2 * 6)
    assert got.item() == pytest.approx(want, abs=1e-6)
    # step 1 (2 outputs seen of 6) is scaled by 2/6, not left at the seen-class mean
    first = distill.sigmoid_distillation(logits[:, :2], torch.tensor([0, 1]), None, num_outputs=6)
    assert first.item() == pytest.approx((bce(1, 1) + bce(0, 0) + bce(0, 0) + bce(-1, 1)) / 12, abs=1e-6)


def test_kl_and_soft_cross_entropy_match_hand_values() -> None:
    s, t = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    p = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax([0, 2] / 2)
    kl = 0.5 * math.log(0.5 / p[0]) + 0.5 * math.log(0.5 / p[1])
    assert distill.kl_distillation(s, t, 2.0).item() == pytest.approx(4 * kl, abs=1e-6)  # T^2 x 0.12011
    assert distill.soft_cross_entropy(s, t, 2.0).item() == pytest.approx(-(0.5 * math.log(p[0]) + 0.5 * math.log(p[1])), abs=1e-6)


def test_less_forget_matches_hand_value() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ref = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert distill.less_forget(f, ref).item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 2.0) / 2, abs=1e-6)


def test_margin_ranking_matches_hand_value() -> None:
    cos = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.2],    # old class 0: gt .9, top-2 new .7 .5 -> .3, .1
                        [0.2, 0.3, 0.95, 0.0, -0.1],  # old class 1: gt .3, top-2 new .95 0 -> 1.15, .2
                        [0.9, 0.9, 0.9, 0.1, 0.0]])   # new class 3: ignored
    y = torch.tensor([0, 1, 3])
    assert distill.margin_ranking(cos, y, n_old=2, k=2, margin=0.5).item() == pytest.approx(1.75 / 4, abs=1e-6)
    assert distill.margin_ranking(cos[2:], y[2:], n_old=2, k=2, margin=0.5).item() == 0.0


def test_cosine_head_scales_cosines_and_imprints() -> None:
    head = CosineIncrementalHead(2, sigma=3.0)
    head.add(1)
    head.add(2)
    with torch.no_grad():
        head.chunks[0].weight.copy_(torch.tensor([[0.0, 2.0]]))
    head.imprint(1, torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    assert torch.allclose(head.chunks[1].weight, torch.tensor([[2.0, 0.0], [1.2, 1.6]]))  # x mean old norm 2
    out = head(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(out, 3.0 * torch.tensor([[0.8, 0.6, 1.0]]), atol=1e-6)  # sigma x cosines to (.6, .8)
    assert torch.allclose(head.cosines(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.8, 0.6, 1.0]]), atol=1e-6)


# ---------------------------------------------------------------------------- BiC
def test_bias_layer_has_two_parameters_and_touches_only_its_classes() -> None:
    layer = BiasLayer()
    assert sum(p.numel() for p in layer.parameters()) == 2
    with torch.no_grad():
        layer.alpha.fill_(0.5)
        layer.beta.fill_(-1.0)
    z = torch.arange(12.0).view(2, 6)
    out = layer(z, 2, 4)
    assert torch.equal(out[:, :2], z[:, :2]) and torch.equal(out[:, 4:], z[:, 4:])
    assert torch.equal(out[:, 2:4], 0.5 * z[:, 2:4] - 1.0)


@pytest.mark.parametrize("classes,memory,val_sizes", [
    (100, 2000, [200, 400, 300, 240, 250, 240, 210, 160, 180, 200]),  # bic.md 1.1, ImageNet-100 log
    (1000, 20000, [2000, 4000, 3000, 2400, 2500, 2400, 2100, 1600, 1800, 2000]),  # ImageNet-1000 log
])
def test_bic_validation_split_sizes_match_the_logs(classes: int, memory: int, val_sizes: list[int]) -> None:
    budget, step = Budget("total", memory), classes // 10
    reserve = split_sizes(budget, step)[1]
    assert reserve == 20  # max_val = int(0.1 * nb_groups * nb_proto)
    got, exemplars = [reserve * step], []
    for s in range(1, 10):
        e, v = split_sizes(budget, s * step)  # n_old = s * C classes in memory at step s
        got.append(v * (s + 1) * step)
        exemplars.append(e)
        assert s * step * (e + v) <= memory  # training + validation exemplars within the budget
    assert got == val_sizes
    assert exemplars == [180, 90, 60, 45, 36, 30, 26, 22, 20]
    # step 3 with 1,300 images per class: (1300 - 20) x C new + 30 x 60 = 14,600 training samples (log).
    assert (1300 - reserve) * 10 + 30 * split_sizes(Budget("total", 2000), 30)[0] == 14600


def test_bic_val_min_keeps_one_image_per_class_within_budget() -> None:
    assert split_sizes(Budget("total", 40), 8, 0.1, 0) == (4, 0)  # the code's rule: no validation image
    e, v = split_sizes(Budget("total", 40), 8, 0.1, 1)
    assert (e, v) == (4, 1) and 8 * (e + v) <= 40


# ---------------------------------------------------------------------------- class order and presets
def test_seed_1993_class_order() -> None:
    order = legacy_permutation(100, 1993)
    assert order[:50] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38, 58, 70, 77, 1, 85,
                          19, 17, 50, 28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44, 91, 41, 72, 60, 79, 52, 20, 10, 31, 54]
    assert legacy_permutation(1000, 1993)[:20] == [54, 7, 894, 512, 126, 337, 988, 11, 284, 493, 133, 783, 192, 979, 622,
                                                   215, 240, 548, 238, 419]


def test_presets_resolve_with_the_papers_protocols() -> None:
    from lifelong.config import resolve

    names = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name.split("-")[0] in ("icarl", "lucir", "bic"))
    for m in ("icarl", "lucir", "bic"):
        for k in ("b50-5steps", "b50-10steps", "b50-25steps", "b0-10steps"):
            assert f"{m}-cifar100-{k}.yaml" in names
    assert {"bic-imagenet100-10steps.yaml", "bic-imagenet1000-10steps.yaml"} <= set(names)
    increments = {"b50-5steps": (50, 10), "b50-10steps": (50, 5), "b50-25steps": (50, 2), "b0-10steps": (10, 10)}
    for name in names:
        cfg = resolve(config_file=CONFIGS / name)
        assert cfg.setting == "class"
        key = next((k for k in increments if f"-{k}" in name), None)
        if key:
            assert (cfg.benchmark_options.base, cfg.benchmark_options.increment) == increments[key]
        if "imagenet" in name:
            n = 1000 if "1000" in name else 100
            raw = yaml.safe_load((CONFIGS / name).read_text())
            assert raw["benchmark_options"]["class_order"] == legacy_permutation(n, 1993)
            assert cfg.backbone.name == "preact_resnet18" and cfg.hparams.memory == 20 * n
        text = (CONFIGS / name).read_text()
        # Each preset states its budget and cites only numbers obtained with it (issue: PODNet = 20/class).
        if "-20pc" in name:
            assert (cfg.hparams.budget, cfg.hparams.memory) == ("per_class", 20) and "PODNet" in text
        elif "cifar100" in name and not name.startswith("lucir") and "fixed2000" not in name:
            assert (cfg.hparams.budget, cfg.hparams.memory) == ("total", 2000)
            assert "PODNet" not in text or "uses 20" in text
        if name.startswith("icarl") and "aanets" not in name:
            assert cfg.hparams.variant == "original" and "AANets" not in text
            assert cfg.backbone.shortcut == "A" and cfg.backbone.last_relu is False  # iCaRL's Theano ResNet-32
        if name.startswith("icarl-aanets"):
            assert cfg.hparams.variant == "aanets" and cfg.hparams.epochs == 160 and cfg.hparams.lr == 0.1
    lucir = resolve(config_file=CONFIGS / "lucir-cifar100-b50-5steps.yaml")
    assert lucir.backbone.last_relu is False and (lucir.hparams.budget, lucir.hparams.memory) == ("per_class", 20)
    fixed = resolve(config_file=CONFIGS / "lucir-cifar100-b50-5steps-fixed2000.yaml")
    assert (fixed.hparams.budget, fixed.hparams.memory) == ("total", 2000)


def test_icarl_aanets_variant_carries_its_own_schedule() -> None:
    from lifelong.config import resolve

    orig = resolve("icarl", "cifar100", "class")
    assert (orig.hparams.epochs, orig.hparams.lr, orig.hparams.milestones, orig.hparams.weight_decay) == (70, 2.0, [49, 63], 1e-5)
    aan = resolve("icarl", "cifar100", "class", sets=["variant=aanets"])
    h = aan.hparams
    assert (h.epochs, h.lr, h.milestones, h.gamma, h.weight_decay, h.nesterov) == (160, 0.1, [80, 120], 0.1, 5e-4, False)
    mine = resolve("icarl", "cifar100", "class", sets=["variant=aanets", "lr=0.05"], overrides={"epochs": 40})
    assert mine.hparams.lr == 0.05 and mine.hparams.epochs == 40 and mine.hparams.milestones == [20, 30]
