"""APD and CCGN on the LASEM conv nets: APD's composed kernel, its penalties and consolidation against hand
computation; CCGN's gates (softmax sums to 1 and its sparsity term is constant; Gumbel gates are binary at
evaluation), kernel freezing; both end to end with exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lifelong
from lifelong.engine.loop import Batch
from lifelong.methods.apd import APD
from lifelong.methods.base import TaskMeta
from lifelong.methods.ccgn import CCGN
from lifelong.nn.apd import APDLayer, consolidate, kmeans
from lifelong.nn.gated import gate_values
from lifelong.nn.lasem_cnn import LasemCNN, LasemSpec

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")
RUN = dict(benchmark="digits", setting="task", backbone="lasem_cnn", device="cpu", batch_size=32, epochs=1,
           backbone__width=0.25, optimizer="adam", lr=1e-2)


def small_spec(layers: int = 2) -> LasemSpec:
    return LasemSpec("cifar4", 1, 8, (3,) * layers, (4, 6, 6, 8)[:layers], (1, 2, 1, 2)[:layers], (5,),
                     ((2, 3),) * layers, ((3, 4),) * layers, 0.0)


def make(cls, spec: LasemSpec, tasks: int = 2, **cfg):
    config = cls.Config()
    for k, v in cfg.items():
        setattr(config, k, v)
    m = cls(config, "task", lambda width=1.0: LasemCNN(spec))
    for t in range(tasks):
        m.begin_task(TaskMeta(t, f"t{t}", 3))
    return m


def batch(n: int = 6) -> Batch:
    return Batch(torch.randn(n, 1, 8, 8), torch.arange(n) % 3, None, torch.arange(n))


# ------------------------------------------------------------------ APD
def test_apd_composed_kernel_by_hand() -> None:
    layer = APDLayer(1, 2, 1, 1)
    layer.add_task(0)
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([2.0, -4.0]).view(2, 1, 1, 1))
        layer.mask["0"].copy_(torch.tensor([0.0, math.log(3.0)]).view(2, 1, 1, 1))  # sigmoid: 0.5, 0.75
        layer.tau["0"].copy_(torch.tensor([0.5, 0.25]).view(2, 1, 1, 1))
        layer.bias.copy_(torch.tensor([0.0, 3.0]))
    assert layer.weight(0).flatten().tolist() == pytest.approx([2 * 0.5 + 0.5, -4 * 0.75 + 0.25])
    # relu(W x + b) on a constant input 1: relu(1.5) and relu(-2.75 + 3)
    assert layer(torch.ones(1, 1, 1, 1), 0).flatten().tolist() == pytest.approx([1.5, 0.25])
    layer.resize_consolidation(1, 1)
    layer.local.fill_(1.0)
    assert layer.weight(0).flatten().tolist() == pytest.approx([2.5, -1.75])  # + the group's local kernel
    ch = APDLayer(2, 3, 3, 1, mask_shape="channel")
    ch.add_task(0)
    assert ch.mask["0"].shape == (3, 1, 1, 1)
    expected = ch.sigma * torch.sigmoid(ch.mask["0"]).view(3, 1, 1, 1) + ch.tau["0"]  # one logit per output filter
    assert torch.equal(ch.weight(0), expected)


def test_apd_penalties_against_hand_computed_values() -> None:
    m = make(APD, small_spec())
    with torch.no_grad():
        m.layers[0].tau["1"].fill_(0.1)
        m.layers[1].tau["1"].fill_(-0.3)
    assert m.tau_penalty(1).item() == pytest.approx((0.1 + 0.3) / 2)  # mean over layers of mean|tau|
    prev = [p.detach().clone() for p in m.shared_parameters()]
    targets = [[layer.weight(0).detach().clone() for layer in m.layers]]
    with torch.no_grad():
        m.layers[0].sigma.add_(0.2)
    # 1/2 * 0.2^2 * n / n for sigma_0, 0 for bias_0, sigma_1, bias_1: mean 0.02 / 4
    assert m.drift_penalty(prev).item() == pytest.approx(0.02 / 4, rel=1e-5)
    s = torch.sigmoid(m.layers[0].mask["0"])  # task 1's layer-0 kernel moved by 0.2 * sigmoid(M)
    assert m.retro_penalty(targets).item() == pytest.approx(0.5 * (0.2 * s).square().sum().item(), rel=1e-5)
    b = batch()
    m.eval()
    ce = F.cross_entropy(m.predict(b.x, 1), b.y).item()
    lasem = m.loss(b, 1, prev, None).loss.item()
    assert lasem == pytest.approx(ce + 4e-4 * 0.2 + 100 * 0.005, rel=1e-5)  # lambda1 4e-4, lambda2 100
    retro = m.loss(b, 1, prev, targets).loss.item()
    assert retro == pytest.approx(lasem + 100 * m.retro_penalty(targets).item() + 4e-4 * m.tau_penalty(0).item(), rel=1e-5)


def test_apd_consolidation_by_hand() -> None:
    full = torch.tensor([[1.0, 1.0], [1.004, 1.5], [-3.0, -3.0], [-3.0, -3.002], [9.0, 9.0]])
    assign = kmeans(full, 3, 100, torch.Generator().manual_seed(0))
    groups = {frozenset(torch.nonzero(assign == g).flatten().tolist()) for g in range(3)}
    assert groups == {frozenset({0, 1}), frozenset({2, 3}), frozenset({4})}
    local, residual = consolidate(full, assign, 3, 1e-2)
    ga, gb, gc = (int(assign[i]) for i in (0, 2, 4))
    # tasks 0 and 1 agree on element 0 only (gap 0.004): midpoint 1.002 shared, zeroed in both residuals
    assert local[ga].tolist() == pytest.approx([1.002, 0.0]) and residual[:2].flatten().tolist() == pytest.approx([0, 1.0, 0, 1.5])
    assert local[gb].tolist() == pytest.approx([-3.0, -3.001]) and residual[2:4].abs().sum() == 0
    assert local[gc].abs().sum() == 0 and residual[4].tolist() == [9.0, 9.0]  # a single task keeps its full tau
    rebuilt = local[assign] + residual
    assert (rebuilt - full).abs().max() <= 1e-2 / 2 + 1e-7  # every kernel moves by at most e_gap / 2


def test_apd_end_to_end_retroactive_and_consolidation_resume_exactly(tmp_path: Path) -> None:
    kw = dict(method="apd", variant="apd", consolidate_every=2, **RUN)
    full = lifelong.run(out=tmp_path / "run", **kw)
    assert full.method.config.retroactive and full.method.config.mask_shape == "channel"  # variant=apd's defaults
    infos = [t["info"] for t in full.metrics["tasks"]]
    assert [("consolidation" in i) for i in infos] == [False, True, False, True, False]
    assert infos[3]["consolidation"]["k"] == 4 and infos[0]["drift"] is None and infos[1]["retro"] > 0
    for i in (3, 4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{i}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy and [t["info"] for t in resumed.metrics["tasks"]] == infos


@pytest.mark.parametrize("retroactive", [False, True])
def test_apd_older_tasks_masks_stay_and_their_taus_move_only_retroactively(retroactive: bool) -> None:
    scen = lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=5)
    m, ctx = lifelong.create_method("apd", scen, device="cpu", epochs=1, backbone__name="lasem_cnn", backbone__width=0.25,
                                    optimizer="adam", lr=1e-2, retroactive=retroactive)
    for task in scen.tasks[:2]:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        if task.id == 1:
            mask0 = [layer.mask["0"].detach().clone() for layer in m.layers]
            tau0 = [layer.tau["0"].detach().clone() for layer in m.layers]
        m.fit_task(task, ctx)
    assert all(torch.equal(a, layer.mask["0"]) for a, layer in zip(mask0, m.layers))
    assert all(torch.equal(a, layer.tau["0"]) for a, layer in zip(tau0, m.layers)) == (not retroactive)


# ------------------------------------------------------------------ CCGN
def test_ccgn_softmax_gates_sum_to_one_so_the_sparsity_term_is_constant() -> None:
    m = make(CCGN, small_spec())
    b = batch()
    out, gates = m.forward_gates(b.x, 1)
    for g in gates:
        assert torch.allclose(g.sum(1), torch.ones(len(b.x)), atol=1e-6)
    term = m.sparsity(gates)
    assert term.item() == pytest.approx((1 / 4 + 1 / 6) / 2, rel=1e-6)  # mean_l 1/C_l whatever the input
    term.backward()
    grads = [p.grad for p in m.net.gates["1"].parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-6  # no gradient: the term has no effect
    fixed = make(CCGN, small_spec(), gate="sigmoid")
    fixed.sparsity(fixed.forward_gates(b.x, 1)[1]).backward()
    assert max(p.grad.abs().max().item() for p in fixed.net.gates["1"].parameters()) > 1e-4  # the fix: it counts open gates


def test_ccgn_gumbel_gates_are_binary_at_evaluation_and_straight_through_in_training() -> None:
    m = make(CCGN, small_spec(), gate="gumbel", temperature=2 / 3)
    b = batch(32)
    m.eval()
    logits = m.net.gates["1"][0](b.x)
    gates = m.forward_gates(b.x, 1)[1]
    assert all(set(g.unique().tolist()) <= {0.0, 1.0} for g in gates)
    assert torch.equal(gates[0], (logits > 0).float())  # deterministic: open where the logit is positive
    m.train()
    torch.manual_seed(3)
    gates = m.forward_gates(b.x, 1)[1]
    assert all(set(g.detach().unique().tolist()) <= {0.0, 1.0} for g in gates)  # hard samples in the forward pass
    m.sparsity(gates).backward()
    assert m.net.gates["1"][0].fc2.weight.grad.abs().sum() > 0  # the relaxed gates carry the gradient
    soft = gate_values(torch.zeros(4, 3), "softmax", 0.1, False)
    assert torch.allclose(soft, torch.full((4, 3), 1 / 3))


@pytest.mark.parametrize("freeze", [True, False])
def test_ccgn_frozen_kernels_keep_the_old_tasks_validation_outputs_bit_identical(freeze: bool) -> None:
    scen = lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=5)
    gate = dict(gate="gumbel") if freeze else {}
    m, ctx = lifelong.create_method("ccgn", scen, device="cpu", epochs=1, backbone__name="lasem_cnn",
                                    backbone__width=0.25, optimizer="adam", lr=1e-2, **gate)
    t0, t1 = scen.tasks[:2]
    ctx.start_task(0, t0.mean, t0.std)
    m.begin_task(TaskMeta.of(t0))
    m.fit_task(t0, ctx)
    if freeze:  # half of every layer's gates always open for task 1, the other half always shut
        with torch.no_grad():
            for gate_mlp, conv in zip(m.net.gates["0"], m.net.convs):
                gate_mlp.fc2.weight.zero_()
                gate_mlp.fc2.bias.copy_(torch.tensor([5.0, -5.0]).repeat(conv.frozen.numel() // 2))
                conv.frozen.zero_()
        m.freeze_relevant(m.gate_rates(0, t0, ctx))
        assert [int(c.frozen.sum()) for c in m.net.convs] == [c.frozen.numel() // 2 for c in m.net.convs]
    m.eval()
    before = ctx.outputs(lambda x: m.predict(x, 0), t0.val, mean=t0.mean, std=t0.std)
    kernels = [c.weight.detach().clone() for c in m.net.convs]
    if freeze:
        m.config.lr = 1e-9  # training barely moves a weight: what changes the free kernels is their re-initialisation
    ctx.start_task(1, t1.mean, t1.std)
    m.begin_task(TaskMeta.of(t1))
    info = m.fit_task(t1, ctx)
    m.eval()
    after = ctx.outputs(lambda x: m.predict(x, 0), t0.val, mean=t0.mean, std=t0.std)
    assert torch.equal(before, after) == freeze  # LASEM's form: the shared convs drift
    if freeze:
        for old, conv in zip(kernels, m.net.convs):
            assert torch.equal(old[::2], conv.weight[::2]) and (old[1::2] - conv.weight[1::2]).abs().max() > 1e-3
        assert all(f >= c.frozen.numel() // 2 for f, c in zip(info["frozen"], m.net.convs))  # frozen kernels stay frozen
    else:
        assert info["sparsity_term_constant"] is True


def test_ccgn_end_to_end_gumbel_variant_resumes_exactly(tmp_path: Path) -> None:
    kw = dict(method="ccgn", gate="gumbel", **RUN)
    full = lifelong.run(out=tmp_path / "run", **kw)
    cfg = full.method.config
    assert (cfg.temperature, cfg.gate_input, cfg.gate_hidden, cfg.sparsity_weight, cfg.freeze) == (2 / 3, "pool", 16, 0.5, True)
    infos = [t["info"] for t in full.metrics["tasks"]]
    assert all(len(i["frozen"]) == 4 and i["sparsity_term_constant"] is False for i in infos)
    assert infos[0]["frozen"] == infos[0]["open"]  # after task 1: exactly the kernels that fired on its validation set
    for prev, info in zip(infos, infos[1:]):  # frozen kernels accumulate: at least the earlier ones and this task's
        assert all(max(a, o) <= f for a, o, f in zip(prev["frozen"], info["open"], info["frozen"]))
    for i in (3, 4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{i}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy and [t["info"] for t in resumed.metrics["tasks"]] == infos
