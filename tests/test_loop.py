"""The shared loop: hooks run where they should, masked weights never move, schedules decay."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lifelong.data.augment import AugmentSpec
from lifelong.data.imageset import ImageSet
from lifelong.engine.loop import Batch, Phase, StepOutput, TrainContext
from lifelong.engine.optim import OptimConfig


def _data(n: int = 64) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _ctx() -> TrainContext:
    return TrainContext(torch.device("cpu"), AugmentSpec(size=4, mean=(0.5,), std=(0.5,)), seed=1)


def test_gradient_mask_hook_freezes_weights_under_momentum_and_decay() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    frozen = torch.zeros_like(net[1].weight, dtype=torch.bool)
    frozen[:, :8] = True
    before = net[1].weight.detach().clone()

    def mask() -> None:
        net[1].weight.grad[frozen] = 0

    def loss(b: Batch) -> StepOutput:
        out = net(b.x)
        return StepOutput(F.cross_entropy(out, b.y), out)

    cfg = OptimConfig("sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    _ctx().fit(Phase("p", _data(), net.parameters(), 3, cfg, loss, 8, after_backward=mask, modules=[net]))
    after = net[1].weight.detach()
    assert torch.equal(after[frozen], before[frozen])
    assert not torch.equal(after[~frozen], before[~frozen])


def test_epochs_logging_and_early_stop() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    rows: list[dict] = []
    ctx = TrainContext(torch.device("cpu"), AugmentSpec(size=4), seed=0, epoch_log=rows.append)
    loss = lambda b: StepOutput(F.cross_entropy(net(b.x), b.y))
    hist = ctx.fit(Phase("a", _data(), net.parameters(), 5, OptimConfig(milestones=[2]), loss, 16, modules=[net],
                         on_epoch_end=lambda e, s: e == 3))
    assert [h.epoch for h in hist] == [1, 2, 3] and len(rows) == 3
    assert hist[0].lr == 0.01 and hist[2].lr == 0.01 * 0.1  # lr recorded before the epoch's schedule step
    assert all(h.samples_per_s > 0 for h in hist) and hist[0].accuracy is None


def test_plateau_stops_after_max_decays() -> None:
    net = torch.nn.Linear(16, 3)
    constant = lambda b: StepOutput((net.weight * 0).sum() + 1.0)
    cfg = OptimConfig(schedule="plateau", patience=1, max_decays=2, lr=1.0)
    hist = _ctx().fit(Phase("p", _data(8), net.parameters(), 100, cfg, constant, 8, modules=[net]))
    # loss never improves: epoch 1 sets the best, epochs 2 and 3 each decay (patience 1 bad epoch, as
    # CPG's ImageNet/face code), the phase stops one epoch after the 2nd decay
    assert len(hist) == 4 and abs(hist[-1].lr - 0.01) < 1e-12


def test_same_seed_same_batches() -> None:
    seen = []
    for _ in range(2):
        ctx = _ctx()
        ctx.start_task(2)
        order = []
        net = torch.nn.Linear(16, 3)

        def loss(b: Batch) -> StepOutput:
            order.append(b.index.tolist())
            return StepOutput(net(b.x.flatten(1)).sum())

        ctx.fit(Phase("p", _data(), net.parameters(), 1, OptimConfig(), loss, 16, modules=[net]))
        seen.append(order)
    assert seen[0] == seen[1] and sorted(sum(seen[0], [])) == list(range(64))
