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


def _train_conv(prefetch: bool, channels_last: bool, compile: str | None = None) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(64, 3))
    ctx = TrainContext(torch.device("cpu"), AugmentSpec(size=4, crop_padding=1, flip=True, mean=(0.5,) * 3,
                                                        std=(0.5,) * 3), seed=2, channels_last=channels_last,
                       compile=compile)
    ctx.model = net
    ctx.prefetch = prefetch
    order: list[list[int]] = []
    formats: list[bool] = []

    def loss(b: Batch) -> StepOutput:
        order.append(b.index.tolist())
        formats.append(b.x.is_contiguous(memory_format=torch.channels_last))
        return StepOutput(F.cross_entropy(net(b.x), b.y))

    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (64,), generator=g))
    ctx.fit(Phase("p", data, net.parameters(), 2, OptimConfig(lr=0.1), loss, 10, modules=[net]))
    assert all(formats) == channels_last and any(formats) == channels_last
    return order, {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_prefetching_loads_the_same_batches_and_trains_the_same_weights() -> None:
    order, state = _train_conv(prefetch=False, channels_last=False)
    order_p, state_p = _train_conv(prefetch=True, channels_last=False)
    assert order == order_p and len(order) == 14  # 64 rows in batches of 10, 2 epochs
    assert all(torch.equal(state[k], state_p[k]) for k in state)


def test_channels_last_feeds_nhwc_batches_and_trains_the_same_network_to_float_precision() -> None:
    order, state = _train_conv(prefetch=False, channels_last=False)
    order_c, state_c = _train_conv(prefetch=False, channels_last=True)
    assert order == order_c
    for k in state:
        torch.testing.assert_close(state_c[k].contiguous(), state[k], rtol=1e-4, atol=1e-5)


def test_compiled_loss_trains_the_same_weights() -> None:
    """``--compile``: torch.compile wraps the phase's loss (the eager backend runs the captured graph
    with the same kernels, so the weights are bit-identical; inductor fuses them)."""
    from torch._dynamo.utils import counters

    order, state = _train_conv(prefetch=False, channels_last=False)
    counters.clear()
    order_c, state_c = _train_conv(prefetch=False, channels_last=False, compile="eager")
    assert counters["stats"]["unique_graphs"] > 0  # the loss really went through torch.compile
    assert order == order_c and all(torch.equal(state[k], state_c[k]) for k in state)
