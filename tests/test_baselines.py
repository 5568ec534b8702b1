"""The standard baselines (replay, LwF, EWC, SI): each mechanism against hand-computed values on a
tiny model, their state across checkpoints, and digits runs in both settings."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lifelong
from lifelong.data.augment import AugmentSpec
from lifelong.data.imageset import ImageSet
from lifelong.data.scenario import Task
from lifelong.engine.loop import Batch, Phase, TrainContext
from lifelong.methods.base import Method, TaskMeta
from lifelong.methods.ewc import EWC
from lifelong.methods.lwf import LwF
from lifelong.methods.memory import Budget, reservoir_sample
from lifelong.methods.replay import Replay
from lifelong.methods.si import SI

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- a tiny network
class Tiny(nn.Module):
    """2x2 one-channel images flattened to 4 values, one Linear to 2 features (optionally BatchNorm)."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(2) if bn else nn.Identity()
        self.out_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x.flatten(1)))


def tiny(cls: type[Method], setting: str = "task", tasks: int = 2, bn: bool = False, **cfg: Any) -> Any:
    method = cls(cls.Config(**cfg), setting, lambda width=1.0: Tiny(bn))
    for t in range(tasks):
        method.begin_task(TaskMeta(t, f"t{t}", 2, 2 * t if setting == "class" else 0))
    return method


def set_(param: torch.Tensor, values: Any) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=param.dtype).view_as(param))


def images(labels: list[int], seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (len(labels), 1, 2, 2), generator=g, dtype=torch.uint8),
                    torch.tensor(labels, dtype=torch.long))


def task(i: int, data: ImageSet, offset: int = 0) -> Task:
    empty = data.subset(torch.zeros(0, dtype=torch.long))
    classes = sorted(set(data.labels.tolist()))
    return Task(i, f"t{i}", classes, [str(c) for c in classes], data, empty, empty, offset)


def cpu_ctx() -> TrainContext:
    return TrainContext(torch.device("cpu"), AugmentSpec(size=2))


# ---------------------------------------------------------------------------- EWC
def test_ewc_penalty_matches_hand_value_over_the_backbone_only() -> None:
    m = tiny(EWC, lam=4.0)
    assert [n for n, _ in m.shared()] == ["backbone.fc.weight", "backbone.fc.bias"]  # task heads take no part
    fc = m.backbone.fc
    set_(fc.weight, torch.arange(8.0) / 4)
    set_(fc.bias, [1.0, -1.0])
    set_(m.fisher[0]["backbone.fc.weight"], torch.full((2, 4), 0.5))  # anchor 0: 0.5 x sum (k/4)^2 = 4.375
    set_(m.fisher[0]["backbone.fc.bias"], [2.0, 0.0])  # + 2 x 1^2
    set_(m.anchor[1]["backbone.fc.weight"], fc.weight)  # task 1 anchored at the weights: 0
    set_(m.anchor[1]["backbone.fc.bias"], [0.0, 1.0])
    set_(m.fisher[1]["backbone.fc.bias"], [5.0, 3.0])  # 5 x 1^2 + 3 x (-2)^2 = 17
    m.consolidated.fill_(1)
    assert m.penalty().item() == pytest.approx(2 * 6.375)  # lam / 2 = 2
    m.consolidated.fill_(2)
    assert m.penalty().item() == pytest.approx(2 * (6.375 + 17))
    with torch.no_grad():
        head = m.head.heads[0].weight.add_(10.0)  # moving a task head changes nothing
    assert head is not None and m.penalty().item() == pytest.approx(2 * 23.375)
    assert "head.chunks.1.weight" in dict(tiny(EWC, setting="class").shared())  # class setting: the head is shared


def test_online_ewc_folds_fishers_with_gamma() -> None:
    m = tiny(EWC, lam=2.0, online=True, gamma=0.5)
    assert len(m.fisher) == 1
    p = m.backbone.fc.bias
    set_(p, [1.0, 2.0])
    m.consolidate({"backbone.fc.weight": torch.ones(2, 4), "backbone.fc.bias": torch.tensor([4.0, 0.0])}, 0)
    set_(p, [3.0, 2.0])
    m.consolidate({"backbone.fc.weight": torch.ones(2, 4), "backbone.fc.bias": torch.tensor([2.0, 6.0])}, 1)
    assert m.fisher[0]["backbone.fc.bias"].tolist() == [0.5 * 4 + 2, 6.0]  # F* = gamma F* + F_t
    assert m.anchor[0]["backbone.fc.bias"].tolist() == [3.0, 2.0]  # the latest parameters
    set_(p, [4.0, 0.0])
    weight_part = 0.0  # the weights sit at their anchor
    assert m.penalty().item() == pytest.approx(1.0 * 0.5 * (4 * 1 + 6 * 4 + weight_part))  # lam/2 x gamma x F* d^2


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_ewc_fisher_is_the_mean_of_per_sample_squared_gradients(kind: str) -> None:
    torch.manual_seed(0)
    m = tiny(EWC, bn=True, fisher=kind)
    m.backbone.bn.running_mean.fill_(0.3)  # eval-mode statistics are used
    data, ctx = images([0, 1, 1, 0, 1, 0, 0]), cpu_ctx()
    got = m.estimate_fisher(data, ctx, task_id=1)
    x = next(ctx.iterate(data, 64, train=False)).x
    ref = {n: torch.zeros_like(p) for n, p in m.shared()}
    m.eval()
    for i in range(len(data)):  # batches of size 1, the textbook estimate
        log_p = F.log_softmax(m.logits(x[i:i + 1], 1), 1)[0]
        labels = [(c, log_p[c].exp().item()) for c in range(2)] if kind == "exact" else [(int(data.labels[i]), 1.0)]
        for c, w in labels:
            grads = torch.autograd.grad(log_p[c], [p for _, p in m.shared()], retain_graph=True)
            for (n, _), g in zip(m.shared(), grads):
                ref[n] += w * g.pow(2) / len(data)
    for n in ref:
        assert torch.allclose(got[n], ref[n], atol=1e-7), n


# ---------------------------------------------------------------------------- SI
def test_si_omega_after_two_hand_chosen_sgd_steps() -> None:
    m = tiny(SI, c=0.5, xi=0.1)
    bias, weight = m.backbone.fc.bias, m.backbone.fc.weight
    set_(m.omega["backbone.fc.bias"], [2.0, 0.0])  # a previous task's importance and anchor
    m.consolidated.fill_(1)
    set_(bias, [1.0, 1.0])
    m.start_path()
    lr = 0.1
    for unreg in ([1.0, 1.0], [0.4, -0.5]):  # gradients of the task loss alone
        surrogate = 2 * 0.5 * m.omega["backbone.fc.bias"] * (bias.detach() - m.anchor["backbone.fc.bias"])
        bias.grad = torch.tensor(unreg) + surrogate  # what backward of loss + penalty gives
        weight.grad = torch.zeros_like(weight)
        m.record_gradient()
        with torch.no_grad():
            bias -= lr * bias.grad  # the optimiser's step
            weight -= lr * weight.grad
        m.accumulate()
    # step 1: bias 1 -> 0.7 (grad 1 + 2), 1 -> 0.9: omega = -1 x -0.3, -1 x -0.1 = 0.3, 0.1
    # step 2: grad 0.4 + 1.4 = 1.8 -> 0.52, -0.5 -> 0.95: omega += -0.4 x -0.18, 0.5 x 0.05 = 0.372, 0.125
    info = m.consolidate()
    assert bias.tolist() == pytest.approx([0.52, 0.95])
    expected = [2.0 + 0.372 / (0.48 ** 2 + 0.1), 0.125 / (0.05 ** 2 + 0.1)]  # Omega += omega / (Delta^2 + xi)
    assert m.omega["backbone.fc.bias"].tolist() == pytest.approx(expected, rel=1e-5)
    assert m.anchor["backbone.fc.bias"].tolist() == pytest.approx([0.52, 0.95])
    assert info["omega_sum"] == pytest.approx(0.497, rel=1e-5)
    set_(bias, [1.52, 0.95])
    assert m.penalty().item() == pytest.approx(0.5 * expected[0] * 1.0, rel=1e-5)  # c Omega (theta - theta~)^2


# ---------------------------------------------------------------------------- LwF
def _soft_ce(t: list[float], s: list[float], T: float = 2.0) -> float:
    q = [math.exp(v / T) for v in t]
    p = [math.exp(v / T) for v in s]
    return -sum(qi / sum(q) * math.log(pi / sum(p)) for qi, pi in zip(q, p))


def test_lwf_distillation_term_matches_li_hoiem_at_t2() -> None:
    m = tiny(LwF, tasks=3)
    set_(m.backbone.fc.weight, [[1, 0, 0, 0], [0, 1, 0, 0]])
    set_(m.backbone.fc.bias, [0.0, 0.0])
    set_(m.head.heads[0].weight, [[0, 0], [0, 1]])  # teacher logits on features (1, 2): (0, 2)
    for h in m.head.heads:
        set_(h.bias, [0.0, 0.0])
    set_(m.head.heads[1].weight, [[0, 0], [0, 0]])  # (0, 0)
    teacher = m.teacher()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    set_(m.head.heads[0].weight, [[1, 0], [0, 0]])  # the student's head 0 now says (1, 0)
    set_(m.head.heads[2].weight, [[1, 0], [0, 1]])  # the new head: (1, 2)
    x = torch.tensor([1.0, 2.0, 0.0, 0.0]).view(1, 1, 2, 2)
    out, new, old = m.loss_terms(x, torch.tensor([0]), 2, teacher)
    assert out.tolist() == [[1.0, 2.0]]
    assert new.item() == pytest.approx(-math.log(math.exp(1) / (math.exp(1) + math.exp(2))), abs=1e-6)
    # modified cross-entropy, summed over the two old heads; head 1 unchanged still costs its entropy (log 2)
    assert old.item() == pytest.approx(_soft_ce([0, 2], [1, 0]) + math.log(2), abs=1e-6)
    mc = tiny(LwF, setting="class", tasks=2)  # class setting: on the old classes' logits only
    t = mc.teacher()
    with torch.no_grad():
        mc.head.chunks[0].weight.mul_(-1)
    out, _, old = mc.loss_terms(x, torch.tensor([2]), 1, t)
    expect = _soft_ce(t[1](t[0](x))[0, :2].tolist(), out[0, :2].tolist())
    assert old.item() == pytest.approx(expect, abs=1e-6)


def test_lwf_teacher_stays_frozen_and_warm_up_trains_only_the_new_head(monkeypatch: pytest.MonkeyPatch) -> None:
    scen = lifelong.load_scenario("digits", "task", per_class=20)
    method, ctx = lifelong.create_method("lwf", scen, device="cpu", epochs=1, warmup_epochs=1)
    teachers: list[nn.Module] = []
    phases: list[Phase] = []
    real_teacher, real_fit = LwF.teacher, TrainContext.fit
    monkeypatch.setattr(LwF, "teacher", lambda self: teachers.append(real_teacher(self)) or teachers[-1])
    monkeypatch.setattr(TrainContext, "fit", lambda self, phase: phases.append(phase) or real_fit(self, phase))
    for t in scen.tasks[:2]:
        ctx.start_task(t.id, t.mean, t.std)
        method.begin_task(TaskMeta.of(t))
        before = {k: v.clone() for k, v in method.state_dict().items()}
        method.fit_task(t, ctx)
    assert [p.name for p in phases] == ["train", "warmup", "train"]
    assert [id(p) for p in phases[1].params] == [id(p) for p in method.head.heads[1].parameters()]
    teacher = teachers[0]
    assert all(torch.equal(v, before[f"backbone.{k}"]) for k, v in teacher[0].state_dict().items())  # BN stats too
    assert all(torch.equal(v, before[f"head.{k}"]) for k, v in teacher[1].state_dict().items())
    trained = {id(p) for p in phases[2].params}
    assert not any(id(p) in trained for p in teacher.parameters())
    assert not torch.equal(method.backbone.features[0].weight, teacher[0].features[0].weight)


# ---------------------------------------------------------------------------- replay
def test_reservoir_sampling_is_algorithm_r() -> None:
    g = torch.Generator().manual_seed(5)
    u = torch.rand(5, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    slots = [0, 1, 2]  # the first 3 items fill the reservoir, item i >= 3 replaces slot floor(u (i + 1)) if < 3
    for i in (3, 4):
        if int(u[i] * (i + 1)) < 3:
            slots[int(u[i] * (i + 1))] = i
    assert reservoir_sample(0, 0, 5, 3, g).tolist() == slots
    counts = torch.zeros(20)
    for s in range(3000):  # continued over two calls: every one of 20 items kept with probability 3/20
        g = torch.Generator().manual_seed(s)
        first = reservoir_sample(0, 0, 10, 3, g)
        ids = reservoir_sample(3, 10, 10, 3, g)
        stream = torch.cat([first, torch.arange(10, 20)])
        counts[stream[ids]] += 1
    assert ((counts / 3000 - 0.15).abs() < 0.03).all(), counts / 3000
    assert reservoir_sample(2, 10, 3, 4, torch.Generator()).tolist()[:3] == [0, 1, 2]  # free slots filled first


def test_replay_memory_is_bounded_and_class_balanced(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = cpu_ctx()
    calls: list[tuple[int, ...]] = []
    real = reservoir_sample
    monkeypatch.setattr("lifelong.methods.replay.reservoir_sample",
                        lambda *a: calls.append(tuple(a[:4])) or real(*a))  # type: ignore[func-returns-value]
    m = tiny(Replay, setting="class", tasks=1, memory=40)
    m.update_memory(task(0, images([0] * 50 + [1] * 10)), ctx)
    # the reservoir keeps 40 of 60 (>= 30 of class 0); truncation leaves class 0 its share of 20
    counts = m.memory.counts()
    assert counts[0] == 20 and 0 < counts[1] <= 10 and len(m.memory) == 20 + counts[1]
    assert int(m.stream_seen) == 60
    m.begin_task(TaskMeta(1, "t1", 2, 2))
    m.update_memory(task(1, images([2] * 30 + [3] * 30, seed=1), offset=2), ctx)
    assert all(n <= 10 for n in m.memory.counts().values()) and len(m.memory) <= 40 and int(m.stream_seen) == 120
    assert calls == [(0, 0, 60, 40), (20 + counts[1], 60, 60, 40)]  # Algorithm R continues at stream position 60
    r = tiny(Replay, setting="task", tasks=1, memory=12, selection="random")
    r.update_memory(task(0, images([0] * 9 + [1] * 9)), ctx)
    assert r.memory.counts() == {0: 6, 1: 6}
    r.begin_task(TaskMeta(1, "t1", 2))
    r.update_memory(task(1, images([1] * 9 + [0] * 9, seed=2)), ctx)
    assert r.memory.counts() == {0: 3, 1: 3, 2: 3, 3: 3}  # global ids: task 1's classes are 2, 3
    assert Budget("total", 12).per_class(4) == 3
    h = tiny(Replay, setting="class", tasks=1, memory=6, selection="herding")
    h.update_memory(task(0, images([0] * 5 + [1] * 5, seed=4)), ctx)
    assert h.memory.counts() == {0: 3, 1: 3}


def test_replay_trains_on_new_data_plus_memory_with_each_exemplar_on_its_own_head(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = cpu_ctx()
    m = tiny(Replay, tasks=1, memory=8, selection="random", epochs=1)
    t0, t1 = task(0, images([0] * 5 + [1] * 5)), task(1, images([0] * 6 + [1] * 6, seed=3))
    m.fit_task(t0, ctx)
    m.begin_task(TaskMeta(1, "t1", 2))
    phases: list[Phase] = []
    monkeypatch.setattr(TrainContext, "fit", lambda self, phase: phases.append(phase) or [])
    m.fit_task(t1, ctx)
    data = phases[0].data
    assert len(data) == 12 + 8 and data.tasks.tolist() == [1] * 12 + [0] * 8
    assert torch.equal(data.images[:12], t1.train.images) and data.labels[12:].tolist() == [0] * 4 + [1] * 4
    for img, y in zip(data.images[12:], data.labels[12:]):  # each exemplar is a task-0 image of its label
        assert any(torch.equal(img, o) for o in t0.train.images[t0.train.labels == y])
    idx = torch.tensor([0, 13, 5, 19])
    x = next(ctx.iterate(data.subset(idx), 4, train=False)).x
    b = Batch(x, data.labels[idx], data.tasks[idx], idx)
    f = m.backbone(x)
    want = sum(F.cross_entropy(m.head.heads[int(t)](f[i:i + 1]), b.y[i:i + 1]) for i, t in enumerate(b.task)) / 4
    assert phases[0].loss(b).loss.item() == pytest.approx(want.item(), rel=1e-6)


# ---------------------------------------------------------------------------- digits runs
SMALL = {"benchmark__per_class": 60}  # 120 training images per task
RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "finetune-task": ("finetune", "task", {"epochs": 8, "lr": 0.05, **SMALL}),
    "lwf-task": ("lwf", "task", {"epochs": 8, "lr": 0.05, "warmup_epochs": 1, **SMALL}),
    "finetune-class": ("finetune", "class", {"epochs": 4, **SMALL}),
    "replay-class": ("replay", "class", {"epochs": 4, "memory": 100, **SMALL}),
    "replay-task": ("replay", "task", {"epochs": 2, "memory": 40, **SMALL}),
    "lwf-class": ("lwf", "class", {"epochs": 2, **SMALL}),
    "ewc-task": ("ewc", "task", {"epochs": 2, "fisher_samples": 32, **SMALL}),
    "ewc-class": ("ewc", "class", {"epochs": 2, "fisher_samples": 32, "online": True, **SMALL}),
    "si-task": ("si", "task", {"epochs": 2, **SMALL}),
    "si-class": ("si", "class", {"epochs": 2, **SMALL}),
}


def _run(key: str, out: Path, **more: Any) -> lifelong.Result:
    method, setting, options = RUNS[key]
    return lifelong.run(method=method, benchmark="digits", setting=setting, out=out, **options, **more)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, lifelong.Result]:
    root = tmp_path_factory.mktemp("baselines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lifelong.report.plots.accuracy_heatmap", lambda *a, **k: None)  # 1 s a run, not tested here
        return {key: _run(key, root / key) for key in RUNS}


@pytest.mark.parametrize("key", [k for k in RUNS if not k.startswith("finetune")])
def test_runs_end_to_end_in_both_settings(runs: dict[str, lifelong.Result], key: str) -> None:
    r = runs[key]
    assert len(r.accuracy) == 5 and all(len([a for a in row if a is not None]) == i + 1 for i, row in enumerate(r.accuracy))
    assert sum(r.accuracy[i][i] for i in range(5)) / 5 > 0.75  # each step learns its own task / classes
    method = r.method
    assert method is not None
    sizes = [t["info"].get("memory") for t in r.metrics["tasks"]]
    if key.startswith("replay"):
        budget = Budget("total", RUNS[key][2]["memory"])
        assert r.metrics["memory"]["size"] == sizes[-1] == len(method.memory) and all(0 < s <= budget.size for s in sizes)
        for i, info in enumerate(t["info"] for t in r.metrics["tasks"]):
            assert 0 < info["memory_per_class"][0] <= info["memory_per_class"][1] <= budget.per_class(2 * (i + 1))
    else:
        assert r.metrics["memory"]["size"] is None


def test_footprints_count_the_extra_state(runs: dict[str, lifelong.Result]) -> None:
    for key in ("ewc-task", "ewc-class", "si-task", "si-class"):
        m = runs[key].method
        assert m is not None
        net = sum(t.numel() * 4 for t in list(m.backbone.parameters()) + list(m.head.parameters()))
        net += sum(t.numel() * t.element_size() for t in m.backbone.buffers())  # BatchNorm statistics
        shared = sum(p.numel() * 4 for _, p in m.shared())
        copies = 2 * (5 if key == "ewc-task" else 1)  # Fisher + anchor per task (offline) or once (online, SI)
        assert runs[key].footprint["bytes"] == net + copies * shared + 8, key  # + the int64 task counter
    ewc = runs["ewc-task"]
    assert ewc.footprint["per_task_bytes"][0] > 2 * sum(p.numel() * 4 for _, p in ewc.method.shared())  # type: ignore[union-attr]
    replay = runs["replay-class"].method
    assert runs["replay-class"].footprint["bytes"] >= replay.memory.images.numel()  # type: ignore[union-attr]


def test_consolidation_stores_what_the_next_task_is_penalised_with(runs: dict[str, lifelong.Result]) -> None:
    ewc = runs["ewc-task"].method
    assert isinstance(ewc, EWC) and int(ewc.consolidated) == 5
    for t in range(5):
        assert all(float(ewc.fisher[t][n].abs().sum()) > 0 for n, _ in ewc.shared())  # estimated after every task
    for n, p in ewc.shared():
        assert torch.equal(ewc.anchor[4][n], p.detach())  # the last anchor is the trained network
        assert not torch.equal(ewc.anchor[3][n], p.detach())
    infos = [t["info"] for t in runs["ewc-task"].metrics["tasks"]]
    assert all(i["fisher"] == "exact" and i["fisher_samples"] == 32 and i["lr_lam_fisher_max"] < 2 for i in infos)
    for key in ("si-task", "si-class"):
        si = runs[key].method
        assert isinstance(si, SI)
        for info in (t["info"] for t in runs[key].metrics["tasks"]):
            assert info["omega_sum"] > 0 and info["omega_positive"] > 0.9  # the path integral: loss went down
        assert all(torch.equal(si.anchor[n], p.detach()) for n, p in si.shared())


def test_replay_and_lwf_beat_finetune(runs: dict[str, lifelong.Result]) -> None:
    assert runs["replay-class"].average_accuracy > runs["finetune-class"].average_accuracy + 0.3
    assert runs["lwf-task"].average_accuracy > runs["finetune-task"].average_accuracy + 0.01
    assert runs["lwf-task"].average_forgetting < runs["finetune-task"].average_forgetting  # type: ignore[operator]


@pytest.mark.parametrize("key", ["replay-task", "lwf-class", "ewc-task", "si-class"])
def test_resume_mid_stream_is_exact(runs: dict[str, lifelong.Result], tmp_path: Path, key: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lifelong.report.plots.accuracy_heatmap", lambda *a, **k: None)
    full = runs[key]
    crashed = tmp_path / "crashed"
    shutil.copytree(full.run_dir, crashed)
    for p in (crashed / "checkpoints").glob("task-0[345].pt"):
        p.unlink()
    (crashed / "metrics.json").unlink()
    resumed = _run(key, crashed, resume=True)
    assert resumed.accuracy == full.accuracy
    assert [t["info"] for t in resumed.metrics["tasks"]] == [t["info"] for t in full.metrics["tasks"]]
    a, b = resumed.method.state_dict(), full.method.state_dict()  # type: ignore[union-attr]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
