"""PAE (packing and expanding, ICMR 2019): PackNet's packing, CPG's goals and growth, no picking.

Each test fails on a broken mechanism: a new task must compute with *every* weight of the earlier
tasks (no picking mask), never change them, grow when a goal is missed (up to P = 2), prune its own
weights gradually and per layer, and serve exactly the model it chose.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import lifelong
from lifelong.engine.runner import served_equals_trained
from lifelong.errors import ConfigError
from lifelong.methods.base import TaskMeta
from lifelong.methods.pae import PAE, PAEConfig
from lifelong.methods.pruning import cubic_sparsity
from lifelong.methods.registry import method_class
from lifelong.nn.masked import crop
from lifelong.report.footprint import footprint_table

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")

FAST: dict[str, Any] = {"prune_ratios": [0.5, 0.9]}  # one epoch per phase (``epochs=1``), two pruning steps
HIDDEN = 256  # the MLP 64-256-256 of permuted-digits


def train_stream(tasks: int = 3, **overrides: Any):
    """PAE task by task through the API; after each task, every task's logits on a fixed probe, the
    weights/owners and the runner's served-equals-trained check."""
    scen = lifelong.load_scenario("permuted-digits", tasks=tasks, val_fraction=PAE.val_fraction)
    m, ctx = lifelong.create_method("pae", scen, device="cpu", epochs=1, **{**FAST, **overrides})
    ctx.num_tasks = len(scen)
    probes = [t.test.subset(torch.arange(40)) for t in scen.tasks]
    history = []
    for task in scen.tasks:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        info = m.fit_task(task, ctx)
        served = served_equals_trained(m, task, ctx, info)
        m.eval()
        logits = [ctx.outputs(lambda x, j=j: m.predict(x, j), probes[j]) for j in range(task.id + 1)]
        weights = {n: (m.mb.weight(n).detach().clone(), m.mb.owner(n).clone()) for n in m.mb.layers}
        history.append({"logits": logits, "weights": weights, "info": info, "served": served})
    return m, ctx, scen, probes, history


@pytest.fixture(scope="module")
def streams() -> dict[str, tuple]:
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(0)
    packed = train_stream(goals=[0.0, 0.0, 0.0])  # goals met at width 1: every task prunes to 0.9
    torch.manual_seed(0)
    grown = train_stream(goals=[1.0, 1.0, 1.0])  # unreachable goals: grow to the cap, then reserve capacity
    return {"packed": packed, "grown": grown}


def probe_logits(m: PAE, ctx: Any, probes: list) -> list[torch.Tensor]:
    m.eval()
    return [ctx.outputs(lambda x, j=j: m.predict(x, j), probes[j]) for j in range(len(probes))]


# --------------------------------------------------------------------------- no picking
@pytest.mark.parametrize("stream", ["packed", "grown"])
def test_every_task_computes_with_every_weight_of_the_earlier_tasks(streams: dict, stream: str) -> None:
    """No picking mask (PAE_cifar100_scratch_mul_1.5.sh: lr_mask=0.0): the served effective weights of
    task k are exactly W wherever 1 <= owner <= k, at the task's own width, and nothing else."""
    m, *_ = streams[stream]
    assert m.mb.has_pick == [False, False, False] and m.mb.picks is None
    assert all(not n.startswith("pick.") for s in m.mb.stores for n in s._buffers)  # no mask stored
    for k in range(3):
        shapes, v = m.mb.shapes_at(m.mb.widths[k]), m.mb.owner_id(k)
        used = m.mb._finished_tensors(k)
        for name in m.mb.layers:
            w, o = crop(m.mb.weight(name).detach(), shapes[name]), crop(m.mb.owner(name), shapes[name])
            assert torch.equal(used[name], torch.where((o >= 1) & (o <= v), w, 0.0)), f"task {k + 1} {name}"
        if k:
            assert ((crop(m.mb.owner(m.mb.layers[0]), shapes[m.mb.layers[0]]) < v) &
                    (crop(m.mb.owner(m.mb.layers[0]), shapes[m.mb.layers[0]]) >= 1)).any()
    infos = [h["info"] for h in streams[stream][-1]]
    assert all(i["picked_fraction"] is None for i in infos)
    assert infos[1]["earlier_fraction"] > 0 and infos[2]["earlier_fraction"] > infos[1]["earlier_fraction"]


def test_zeroing_an_old_tasks_weights_changes_later_tasks_and_never_earlier_ones(streams: dict) -> None:
    """Behaviour, not bookkeeping: task 1's weights in any one layer feed tasks 2 and 3; task 3's own
    weights feed no earlier task."""
    m, ctx, scen, probes, history = streams["packed"]
    before = probe_logits(m, ctx, probes)
    for name in m.mb.layers:
        w, o = m.mb.weight(name), m.mb.owner(name)
        for owner, changed in ((1, [True, True, True]), (3, [False, False, True])):
            saved = w.detach().clone()
            with torch.no_grad():
                w[o == owner] = 0.0
            after = probe_logits(m, ctx, probes)
            with torch.no_grad():
                w.copy_(saved)
            assert [not torch.equal(a, b) for a, b in zip(before, after)] == changed, f"{name}, owner {owner}"
    assert all(torch.equal(a, b) for a, b in zip(before, probe_logits(m, ctx, probes)))  # restored


# --------------------------------------------------------------------------- unforgetting
@pytest.mark.parametrize("stream", ["packed", "grown"])
def test_old_task_logits_are_bit_identical_after_later_tasks(streams: dict, stream: str) -> None:
    m, ctx, scen, probes, history = streams[stream]
    final = history[-1]["logits"]
    for h in history[:-1]:
        for j, logits in enumerate(h["logits"]):
            assert torch.equal(final[j], logits), f"task {j + 1} changed"
    assert [h["served"] for h in history] == [True, True, True]
    assert all(h["info"]["chosen"]["split"] == "val" for h in history)


@pytest.mark.parametrize("stream", ["packed", "grown"])
def test_weights_owned_by_earlier_tasks_never_change(streams: dict, stream: str) -> None:
    history = streams[stream][-1]
    for before, after in zip(history, history[1:]):
        for name, (w0, o0) in before["weights"].items():
            w1, o1 = after["weights"][name]
            corner = tuple(slice(0, s) for s in w0.shape)
            owned = o0 > 0
            assert torch.equal(o1[corner][owned], o0[owned]) and torch.equal(w1[corner][owned], w0[owned]), name


def test_runner_verifies_unforgetting_and_the_served_model(tmp_path: Path) -> None:
    """``lifelong run --method pae --benchmark permuted-digits --tasks 3``, goals from independent networks."""
    r = lifelong.run(method="pae", benchmark="permuted-digits", tasks=3, epochs=1, out=tmp_path / "pae", **FAST)
    assert r.metrics["unforgetting_verified"] is True and all(f == 0 for f in r.forgetting[:-1])
    infos = [t["info"] for t in r.metrics["tasks"]]
    assert [i["served_equals_trained"] for i in infos] == [True, True, True]
    assert all(i["goal_source"] == "independent" for i in infos)
    json.dumps(infos)


# --------------------------------------------------------------------------- growing
def test_an_unreachable_goal_grows_the_network_up_to_the_cap(streams: dict) -> None:
    """Goal 1.0: P 1 -> 1.5 -> 2 (PAE.sh: max_allowed_network_width_multiplier=2.0, +0.5 per exit code 2),
    channels x sqrt(2); at the cap later tasks cannot grow; pruning stops at the reserved capacity."""
    m, ctx, scen, probes, history = streams["grown"]
    infos = [h["info"] for h in history]
    assert [a["param_multiplier"] for a in infos[0]["attempts"]] == [1.0, 1.5, 2.0]
    assert not any(a["goal_met"] for i in infos for a in i["attempts"])
    assert [len(i["attempts"]) for i in infos[1:]] == [1, 1] and infos[2]["param_multiplier"] == 2.0
    h = int(HIDDEN * math.sqrt(2.0))
    assert m.mb.width == pytest.approx(math.sqrt(2.0)) and m.mb.weight(m.mb.layers[0]).shape[0] == h == 362
    assert infos[0]["exp"] == (64 * h + h * h) / (64 * HIDDEN + HIDDEN * HIDDEN)
    # reserved capacity 1 - round(1/(R+1), 1): 0.7 for R = 2 -> the 0.5 run; R = 0 for the last task -> unpruned
    assert infos[0]["reserved_ratio"] == pytest.approx(0.7) and infos[0]["pruning_ratio"] == 0.5
    assert infos[2]["reserved_ratio"] == 0.0 and infos[2]["pruning_ratio"] == 0.0
    assert m.mb.widths == [pytest.approx(math.sqrt(2.0))] * 3


def test_met_goals_never_grow(streams: dict) -> None:
    m, *_, history = streams["packed"]
    assert m.mb.width == 1.0 and all(len(h["info"]["attempts"]) == 1 for h in history)
    assert all(h["info"]["goal_met"] and h["info"]["pruning_ratio"] == 0.9 for h in history)


def test_state_round_trip_into_a_fresh_method_after_growing(streams: dict) -> None:
    m, ctx, scen, probes, history = streams["grown"]
    fresh, _ = lifelong.create_method("pae", scen, device="cpu", epochs=1, **FAST)
    fresh.rebuild(m.structure())
    fresh.load_state_dict(m.state_dict())
    assert fresh.param_multiplier == 2.0
    assert all(torch.equal(a, b) for a, b in zip(probe_logits(fresh, ctx, probes), history[-1]["logits"]))


# --------------------------------------------------------------------------- compacting
@pytest.mark.parametrize("stream", ["packed", "grown"])
def test_every_layer_is_pruned_to_the_chosen_ratio_exactly(streams: dict, stream: str) -> None:
    """Layer-wise magnitude pruning (cpg.md pitfall 11; ivclab/PAE pruning.py: a threshold per weight
    tensor over the task's own and freed weights): round(ratio * n) freed in every layer, not a global quota."""
    m, ctx, scen, probes, history = streams[stream]
    pruned = 0
    for t, h in enumerate(history):
        r = h["info"]["pruning_ratio"]
        if r == 0:
            continue
        pruned += 1
        for name, (_, owner) in h["weights"].items():
            own, free = int((owner == m.mb.owner_id(t)).sum()), int((owner == 0).sum())
            assert free == round(r * (own + free)), f"task {t + 1} {name}: {free} of {own + free} freed"
    assert pruned >= 2


def test_pruning_is_gradual_along_the_cubic_schedule_in_every_layer(monkeypatch) -> None:
    """Within a run 0 -> 0.5 each layer's freed count follows s(k) = 0.5 - 0.5(1 - k/end)^3, updated every
    ``prune_frequency`` steps (PAE.sh: --pruning_frequency=10), seen before every optimiser step."""
    scen = lifelong.load_scenario("permuted-digits", tasks=1, val_fraction=PAE.val_fraction)
    m, ctx = lifelong.create_method("pae", scen, device="cpu", epochs=1, prune_epochs=2, prune_ramp=0.5)
    task = scen.tasks[0]
    ctx.start_task(0, task.mean, task.std)
    m.begin_task(TaskMeta.of(task))
    m.mb.claim_free(0)
    sizes = [m.mb.owner(n).numel() for n in m.mb.layers]
    observed: list[list[int]] = []
    real = m.loss_fn

    def spying(t: int):
        inner = real(t)
        return lambda b: (observed.append([int((m.mb.owner(n) == 0).sum()) for n in m.mb.layers]), inner(b))[1]

    monkeypatch.setattr(m, "loss_fn", spying)
    m.prune_run(task, ctx, 0.0, 0.5)
    end = -(-len(task.train) // 32)  # prune_ramp 0.5 of 2 epochs: one epoch of steps
    assert len(observed) == 2 * end
    for k, free in enumerate(observed):
        updates = [u for u in range(1, min(k, end) + 1) if u % 10 == 0 or u == end]
        s = cubic_sparsity(updates[-1], 0.0, 0.5, 0, end) if updates else 0.0
        assert free == [round(s * n) for n in sizes], f"after step {k}"
    assert len({tuple(f) for f in observed}) > 3  # many intermediate sparsities: not one shot


def test_the_largest_ratio_meeting_the_goal_is_kept_and_its_model_restored(monkeypatch) -> None:
    """PICK-RATIO (PAE.sh: choose_appropriate_pruning_ratio_for_next_task.py): with 0.5 meeting the goal
    and 0.9 missing it, 0.5 is chosen and the network is put back to the 0.5 run's state, not the last run's."""
    scen = lifelong.load_scenario("permuted-digits", tasks=1, val_fraction=PAE.val_fraction)
    m, ctx = lifelong.create_method("pae", scen, device="cpu", epochs=1, **FAST)
    task = scen.tasks[0]
    ctx.start_task(0, task.mean, task.std)
    m.begin_task(TaskMeta.of(task))
    m.mb.claim_free(0)
    sizes = [m.mb.owner(n).numel() for n in m.mb.layers]
    scripted = iter([0.8, 0.3])  # selection accuracy after the 0.5 and the 0.9 runs
    monkeypatch.setattr(m, "accuracy", lambda *a: next(scripted))
    record, chosen, stopped = m.compact(task, ctx, task.val, goal=0.7, cap=None)
    assert record == {0.5: 0.8, 0.9: 0.3} and chosen == 0.5 and stopped is None
    assert [int((m.mb.owner(n) == 0).sum()) for n in m.mb.layers] == [round(0.5 * n) for n in sizes]
    assert all(int((m.mb.weight(n) == 0).sum()) >= round(0.5 * k) for n, k in zip(m.mb.layers, sizes))


# --------------------------------------------------------------------------- records, config, size
def test_task_summary_and_records(streams: dict) -> None:
    m, *_, history = streams["grown"]
    first, second = (m.task_summary(h["info"]) for h in history[:2])
    assert first.startswith("ratio 0.5, width x1.414 (P 1->1.5->2)") and "goal 1.000 missed" in first
    assert "reuses" not in first  # nothing earlier for task 1
    assert second.endswith(f"reuses all earlier weights ({history[1]['info']['earlier_fraction']:.3f} of the network)")
    for h in history:
        json.dumps(h["info"])
        assert "retrain" not in h["info"]  # no retrain step (PAE.sh ends at the ratio choice)


def test_config_defaults_and_validation() -> None:
    cfg = PAEConfig()
    assert (cfg.max_param_multiplier, cfg.param_multiplier_step, cfg.epochs, cfg.lr, cfg.prune_lr) == (2.0, 0.5, 100, 1e-2, 1e-3)
    assert cfg.prune_ratios[-2:] == [0.9, 0.95] and (cfg.prune_epochs, cfg.prune_frequency, cfg.prune_ramp) == (20, 10, 0.2)
    assert method_class("pae") is PAE and PAE.guarantees_unforgetting and PAE.settings == ("task",)
    for bad in ({"prune_ratios": [0.5, 0.3]}, {"max_param_multiplier": 0.5}, {"select_on": "train"}, {"goals": [1.5]}):
        with pytest.raises(ConfigError):
            PAEConfig(**bad).validate()


def test_footprint_row_and_a_run_store_what_the_calculator_says(tmp_path: Path) -> None:
    """PAE stores what PackNet stores (fp32 weights, a ceil(log2(T+1))-bit owner index, per-task BN and
    heads; no masks), at width 1 in the table; a run without growth stores exactly that."""
    rows = {r.method: r for r in footprint_table("resnet50", [1000, 200, 196, 102, 195, 250])}
    assert (rows["pae"].paper_bytes, rows["pae"].checkpoint_bytes) == (rows["packnet"].paper_bytes, rows["packnet"].checkpoint_bytes)
    r = lifelong.run(method="pae", benchmark="permuted-digits", tasks=2, epochs=1, out=tmp_path / "pae",
                     goals=[0.0, 0.0], prune_ratios=[0.5])
    row = {x.method: x for x in footprint_table("mlp", [10, 10], in_channels=1, image_size=8)}["pae"]
    assert r.footprint["bytes"] == row.formula_bytes
    state = torch.load(tmp_path / "pae" / "checkpoints" / "task-02.pt", weights_only=True)["state"]
    assert sum(t.numel() * t.element_size() for t in state.values()) == row.checkpoint_bytes
