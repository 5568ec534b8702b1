"""DEN on the LASEM conv nets: breadth-first subnetwork selection on a hand-made sparse net, selective
retraining of exactly that subnetwork, expansion by k units with old tasks bit-identical, pruning, splitting
with timestamps, the loss threshold, the recorded events, footprint growth and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lifelong
from lifelong.methods.base import TaskMeta
from lifelong.methods.lasem_common import PeakTracker
from lifelong.nn.den import bfs_select

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")
# Adam at 1e-2 learns digits in an epoch at a quarter of the channels; l2 at the DEN code's 1e-4 (LASEM's 0.01
# with Adam at this lr flattens the toy net to a constant).
FAST = dict(device="cpu", epochs=1, backbone__name="lasem_cnn", backbone__width=0.25, optimizer="adam", lr=1e-2,
            hidden=[16], expansion=3, l2_lambda=1e-4)


@pytest.fixture(scope="module")
def scen():
    return lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=5)


def after_first_task(scen, **kw):
    torch.manual_seed(0)
    m, ctx = lifelong.create_method("den", scen, **{**FAST, **kw})
    task = scen.tasks[0]
    ctx.start_task(0, task.mean, task.std)
    m.begin_task(TaskMeta.of(task))
    m.fit_task(task, ctx)
    nxt = scen.tasks[1]
    ctx.start_task(1, nxt.mean, nxt.std)
    m.begin_task(TaskMeta.of(nxt))
    return m, ctx


def old_outputs(m, ctx, scen) -> torch.Tensor:
    m.eval()
    t0 = scen.tasks[0]
    return ctx.outputs(lambda x: m.predict(x, 0), t0.val, mean=t0.mean, std=t0.std)


def snapshot(m) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in m.net.layers]


# ------------------------------------------------------------------ selection
def test_bfs_selects_what_the_head_reaches_on_a_hand_made_sparse_net() -> None:
    w1 = torch.randn(4, 4, 1)  # inputs -> hidden 1 (the inputs are always used)
    w2 = torch.tensor([[0, 2, 0, 0.3], [0, 0, 5, 0], [1, 1, 1, 1]]).view(3, 4, 1)  # hidden 1 -> hidden 2
    head = torch.tensor([[1, 0, 0.005], [0.5, 0, 0]])  # hidden 2 -> 2 outputs; 0.005 is below the 0.01 threshold
    h1, h2 = bfs_select([w1, w2], head, zero=0.01, unit_sparsity=0.98)
    assert h2.tolist() == [True, False, False]  # only hidden-2 unit 0 feeds the head
    assert h1.tolist() == [False, True, False, True]  # ... and it reads hidden-1 units 1 and 3
    h1, h2 = bfs_select([w1, w2], head, zero=0.0, unit_sparsity=1.0)  # the DEN code: any exactly non-zero weight
    assert h2.tolist() == [True, False, True] and h1.tolist() == [True, True, True, True]
    # the unit threshold: a unit with 1 non-zero weight in 100 into the reached units is 99% sparse
    head = torch.zeros(100, 2)
    head[0, 0] = 1.0
    head[:10, 1] = 1.0
    assert bfs_select([torch.ones(2, 3, 1)], head, 0.01, 0.98)[0].tolist() == [False, True]
    assert bfs_select([torch.ones(2, 3, 1)], head, 0.01, 1.0)[0].tolist() == [True, True]
    assert bfs_select([torch.ones(2, 3, 1)], torch.zeros(4, 2), 0.01, 0.98)[0].tolist() == [False, False]


def test_selective_retraining_moves_exactly_the_selected_subnetwork(scen) -> None:
    m, ctx = after_first_task(scen)
    g = torch.Generator().manual_seed(1)
    sel = [torch.rand(n, generator=g) < 0.5 for n in m.net.widths]
    before = snapshot(m)
    m.stage(ctx, scen.tasks[1], PeakTracker(), "selective", m.masks(sel, False), 1, prev=before, count=True)
    for l, (layer, (w, b)) in enumerate(zip(m.net.layers, before)):
        below = torch.ones(layer.n_in, dtype=torch.bool) if l == 0 else sel[l - 1]
        inside = sel[l][:, None] & below[None, :]
        moved = (layer.weight != w).flatten(2).any(2)
        assert not moved[~inside].any()  # outside the subnetwork: bit for bit
        assert moved[inside].float().mean() > 0.5
        assert torch.equal(layer.bias[~sel[l]], b[~sel[l]])


# ------------------------------------------------------------------ expansion and pruning
def test_expansion_adds_exactly_k_units_per_layer_and_training_them_leaves_old_tasks_bit_identical(scen) -> None:
    m, ctx = after_first_task(scen, gl_lambda=0.0)
    before, old = old_outputs(m, ctx, scen), m.net.widths
    weights = snapshot(m)
    head0 = m.net.heads["0"].weight.detach().clone()
    m.expand(1, 3)
    assert m.net.widths == [n + 3 for n in old]
    assert m.net.heads["1"].weight.shape[1] == old[-1] + 3 and torch.equal(m.net.heads["0"].weight, head0)
    masks, born = m.born_masks(old)
    m.stage(ctx, scen.tasks[1], PeakTracker(), "expand", masks, 1, groups=[range(o, o + 3) for o in old])
    assert torch.equal(old_outputs(m, ctx, scen), before)  # only new units trained: task 1 is unchanged bit for bit
    for layer, (w, b), o in zip(m.net.layers, weights, old):
        assert torch.equal(layer.weight[:o, :w.shape[1]], w) and torch.equal(layer.bias[:o], b)
        assert (layer.weight[o:] != 0).any()
    with torch.no_grad():  # a new unit of layer 2 left with no incoming weights is useless; an old one never is
        m.net.layers[2].weight[old[2] + 1] = 0.0
        kept = m.net.layers[1].weight[0].clone()
        m.net.layers[1].weight[0] = 0.0
    drop = m.useless(old)
    with torch.no_grad():
        m.net.layers[1].weight[0] = kept
    assert [d.nonzero().flatten().tolist() for d in drop] == [[], [], [old[2] + 1], [], []]
    m.remove_units(1, drop)
    assert m.net.widths == [n + 3 - (l == 2) for l, n in enumerate(old)]
    assert torch.equal(old_outputs(m, ctx, scen), before)
    assert m.predict(torch.randn(2, 1, 8, 8), 1).shape == (2, 2)


def test_the_first_task_is_sparse_under_the_proximal_l1_step(scen) -> None:
    m, _ = after_first_task(scen, l1_lambda=1e4)  # threshold lr * l1 = 100 per step: every weight soft-thresholded to 0
    assert all(layer.weight.abs().sum() == 0 for layer in m.net.layers) and m.net.heads["0"].weight.abs().sum() == 0
    m, _ = after_first_task(scen)
    assert all((layer.weight != 0).float().mean() > 0.9 for layer in m.net.layers)  # 1e-6: next to nothing is cut


def test_group_lasso_empties_new_units_and_pruning_removes_them(scen) -> None:
    m, ctx = after_first_task(scen, gl_lambda=1e4)  # threshold lr * gl = 100: every new unit's row goes to zero
    before, old = old_outputs(m, ctx, scen), m.net.widths
    m.expand(1, 3)
    masks, _ = m.born_masks(old)
    m.stage(ctx, scen.tasks[1], PeakTracker(), "expand", masks, 1, groups=[range(o, o + 3) for o in old])
    assert all(layer.weight[o:].abs().sum() == 0 for layer, o in zip(m.net.layers, old))
    drop = m.useless(old)
    assert [int(d.sum()) for d in drop] == [3] * 5
    m.remove_units(1, drop)
    assert m.net.widths == old and m.net.heads["1"].weight.shape[1] == old[-1]
    assert torch.equal(old_outputs(m, ctx, scen), before)


# ------------------------------------------------------------------ split / duplication
def test_split_keeps_the_old_tasks_copy_and_timestamps_the_new_one(scen) -> None:
    m, ctx = after_first_task(scen, expansion=2)
    before, old, prev = old_outputs(m, ctx, scen), m.net.widths, snapshot(m)
    with torch.no_grad():  # drift: layer 1 unit 2 and layer 3 units 1, 4, 6 past sigma 0.05; layer 0 unit 0 below it
        m.net.layers[1].weight[2] += 0.5
        for u, d in ((1, 0.2), (4, 0.4), (6, 0.3)):
            m.net.layers[3].weight[u] += d
        m.net.layers[0].weight[0] += 0.001
    drifted = [layer.weight.detach().clone() for layer in m.net.layers]
    assert not torch.equal(old_outputs(m, ctx, scen), before)
    chosen, peaks = m.split(1, old, prev)
    assert chosen == [[], [2], [], [4, 6], []]  # at most k = 2 per layer, the largest drifts
    assert m.net.widths == [old[0], old[1] + 1, old[2] + 1 * 0, old[3] + 2, old[4]]
    w1, w3 = m.net.layers[1].weight, m.net.layers[3].weight
    assert torch.equal(w1[2, :old[0]], prev[1][0][2]) and torch.equal(w1[old[1], :old[0]], drifted[1][2])  # original restored, copy drifted
    assert torch.equal(w3[[4, 6], :old[2]], prev[3][0][[4, 6]]) and torch.equal(w3[old[3]:, :old[2]], drifted[3][[4, 6]])
    assert torch.equal(w3[1], drifted[3][1])  # under the cap: keeps its drift
    assert torch.equal(m.net.layers[2].weight[:, old[1]], m.net.layers[2].weight[:, 2])  # the copy feeds what it fed
    assert torch.equal(m.net.layers[0].weight[0], drifted[0][0])  # below sigma: not split
    with torch.no_grad():
        m.net.layers[3].weight[1] = prev[3][0][1]
        m.net.layers[0].weight[0] = prev[0][0][0]
    assert torch.equal(old_outputs(m, ctx, scen), before)  # task 1 reads the restored originals, never the copies
    assert m.stamps[0] == old and peaks[1] == pytest.approx(0.5 * drifted[1][2].numel() ** 0.5, rel=1e-4)


# ------------------------------------------------------------------ the stream
def test_loss_threshold_decides_the_expansion(scen) -> None:
    for threshold, expands in ((1e9, False), (0.0, True)):
        m, ctx = after_first_task(scen, loss_threshold=threshold)
        info = m.fit_task(scen.tasks[1], ctx)
        assert info["expanded"] is expands and info["loss_after_selective"] >= 0
        assert info["added"] == ([3] * 5 if expands else [0] * 5)


def test_den_stream_records_every_event_grows_its_footprint_and_resumes_exactly(tmp_path: Path) -> None:
    kw = dict(method="den", benchmark="digits", setting="task", backbone="lasem_cnn", batch_size=32,
              **{k: v for k, v in FAST.items() if k != "backbone__name"})
    full = lifelong.run(out=tmp_path / "run", **kw)
    infos = [t["info"] for t in full.metrics["tasks"]]
    widths = [i["widths"] for i in infos]
    assert infos[0]["selected"] is None and all(i["selected"] is not None for i in infos[1:])
    for prev, info in zip(widths, infos[1:]):
        grown = [b - a for a, b in zip(prev, info["widths"])]
        assert grown == info["born"] == [a - p + len(s) for a, p, s in zip(info["added"], info["pruned"], info["split"])]
    fp = full.footprint
    assert sum(fp["per_task_bytes"]) == fp["bytes"] and fp["parameters"] == sum(
        p.numel() for p in full.method.parameters())
    assert full.method.stamps == widths
    assert all(full.method.task_summary(i).startswith("widths ") for i in infos)
    for i in (3, 4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{i}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy and [t["info"] for t in resumed.metrics["tasks"]] == infos
    assert resumed.footprint == fp
