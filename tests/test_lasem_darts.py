"""DARTS selective transfer (darts-hps, darts-dfcnn; lasem.md 8): which phase moves which parameters and
on which data, the committed configuration is argmax alpha, LASEM's rollback, digits end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lifelong
from lifelong.cli import main
from lifelong.data import augment
from lifelong.errors import ConfigError
from lifelong.methods.base import TaskMeta
from lifelong.methods.darts import DARTSDFCNN, DARTSHPS
from lifelong.nn.lasem_cnn import LasemCNN, LasemSpec, conv_same, pool_same

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")
DIGITS = dict(device="cpu", backbone__name="lasem_cnn", backbone__width=0.25)


def small(cls, **cfg):
    spec = LasemSpec("cifar4", 1, 8, (3,) * 4, (4, 4, 6, 6), (1, 2, 1, 2), (5,), ((2, 3),) * 4, ((3, 4),) * 4)
    config = cls.Config()
    for k, v in cfg.items():
        setattr(config, k, v)
    return cls(config, "task", lambda width=1.0: LasemCNN(spec))


def shared(m) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in layer.shared_tensors()] for layer in m.net.layers]


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params]).clone()


def argmax_config(alpha) -> str:
    return "".join("T" if row[1] > row[0] else "F" for row in alpha)  # ties: task-specific (np.argmax)


@pytest.mark.parametrize("arch_data", ["val", "train"])
def test_alpha_moves_only_in_the_arch_phase_on_its_data_and_weights_only_in_the_weight_phase(arch_data: str) -> None:
    scen = lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=5)
    m, ctx = lifelong.create_method("darts-hps", scen, epochs=2, batch_size=64, arch_data=arch_data, **DIGITS)
    task = scen.tasks[0]
    ctx.start_task(0, task.mean, task.std)
    m.begin_task(TaskMeta.of(task))
    weights = m.net.shared_parameters() + m.net.task_parameters(0)
    records: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    weight_loss, arch_loss = m.weight_loss, m.arch_loss

    def spy(name, fn):
        def wrapped(b, t):
            records.append((name, flat([m.alpha["0"]]), flat(weights), b.x.detach().clone()))
            return fn(b, t)
        return wrapped

    m.weight_loss, m.arch_loss = spy("weights", weight_loss), spy("arch", arch_loss)
    info = m.fit_task(task, ctx)
    names = [r[0] for r in records]
    n_w, n_a = -(-len(task.train) // 64), -(-len(getattr(task, arch_data)) // 64)
    assert names == (["weights"] * n_w + ["arch"] * n_a) * 2  # one arch epoch after each weight epoch
    for (name, a0, w0, _), (_, a1, w1, _) in zip(records, records[1:]):
        if name == "weights":
            assert torch.equal(a0, a1) and not torch.equal(w0, w1)
        else:
            assert torch.equal(w0, w1) and not torch.equal(a0, a1)
    # each arch epoch saw exactly the arch split's images (test-transformed, no augmentation); weights the train split
    source = getattr(task, arch_data)
    expected = augment.eval_batch(source.batch_images(torch.arange(len(source))), scen.augment, task.mean, task.std)
    for epoch in range(2):
        block = records[epoch * (n_w + n_a):(epoch + 1) * (n_w + n_a)]
        seen = torch.cat([r[3] for r in block if r[0] == "arch"])
        assert torch.equal(seen.flatten(1).sum(1).sort().values, expected.flatten(1).sum(1).sort().values)
        assert sum(len(r[3]) for r in block if r[0] == "weights") == len(task.train)
    assert info["arch_data"] == arch_data and info["config"] == argmax_config(info["alpha"])


@pytest.mark.parametrize("cls", [DARTSHPS, DARTSDFCNN])
def test_commit_is_the_argmax_and_rolls_back_unpicked_shared_layers_bit_for_bit(cls) -> None:
    m = small(cls)
    m.begin_task(TaskMeta(0, "t0", 3))
    assert m.current_config() == (False,) * 4  # alpha starts at 0: ties go to task-specific
    m.snapshot()
    with torch.no_grad():
        for p in m.net.shared_parameters():
            p.add_(torch.randn_like(p) * 0.01)
        m.alpha["0"].copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.7], [0.2, 0.2]]))
    assert m.commit(0) == (True, False, True, False)  # argmax per layer
    assert m.configs == ["TFTF"] and [bool(layer.born) for layer in m.net.layers] == [True, False, True, False]
    assert [("0" in layer.own) for layer in m.net.layers] == [False, True, False, True]
    m.begin_task(TaskMeta(1, "t1", 3))
    m.snapshot()
    before = shared(m)
    with torch.no_grad():
        for p in m.net.shared_parameters():
            p.add_(torch.randn_like(p) * 0.01)
        m.alpha["1"].copy_(torch.tensor([[4.0, -4.0], [-1.0, 1.0], [0.0, 0.1], [1.0, 0.0]]))
    assert m.current_config() == (False, True, True, False)
    m.commit(1)
    after = shared(m)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))  # born, not picked: restored bit for bit
    assert not any(torch.equal(a, b) for a, b in zip(before[2], after[2]))  # picked: the task's update stays
    assert m.configs == ["TFTF", "FTTF"] and [bool(layer.born) for layer in m.net.layers] == [True, True, True, False]
    x = torch.randn(2, 1, 8, 8)
    m.eval()
    assert torch.equal(m.predict(x, 0), m.net(x, 0, (True, False, True, False)))  # served with the committed config
    if cls is DARTSDFCNN:
        assert [("1" in layer.ts) for layer in m.net.layers] == [False, True, True, False]


@pytest.mark.parametrize("cls", [DARTSHPS, DARTSDFCNN])
def test_mixed_network_at_one_hot_alpha_is_the_discrete_configuration(cls) -> None:
    m = small(cls)
    m.begin_task(TaskMeta(0, "t0", 3))
    m.eval()
    x = torch.randn(4, 1, 8, 8)
    for cfg in ("TFTF", "FFTT", "TTTT"):
        with torch.no_grad():  # column 0 task-specific, column 1 shared (the code's select_param order)
            m.alpha["0"].copy_(torch.tensor([[-40.0, 40.0] if c == "T" else [40.0, -40.0] for c in cfg]))
        assert torch.allclose(m.mixed(x, 0), m.net(x, 0, tuple(c == "T" for c in cfg)), atol=1e-6)
        assert m.current_config() == tuple(c == "T" for c in cfg)
    with torch.no_grad():  # in between: per layer softmax-weighted ReLU branches, *then* the max-pool (lasem.md 8)
        m.alpha["0"].copy_(torch.randn(4, 2))
    h, w = x, m.alpha["0"].softmax(1)
    for l, layer in enumerate(m.net.layers):
        own, tr = (F.relu(conv_same(h, *layer.weight(0, flag))) for flag in (False, True))
        h = pool_same(w[l, 0] * own + w[l, 1] * tr, layer.pool)
    assert torch.allclose(m.mixed(x, 0), m.net.head(0, h.flatten(1)), atol=1e-6)


def test_rollback_through_a_real_fit() -> None:
    scen = lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=5)
    m, ctx = lifelong.create_method("darts-dfcnn", scen, epochs=1, batch_size=64, **DIGITS)
    picks = {0: "TTTT", 1: "FTFT"}  # alpha started far from the tie so one epoch cannot flip it
    for task in scen.tasks[:2]:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        with torch.no_grad():
            m.alpha[str(task.id)].copy_(torch.tensor([[-5.0, 5.0] if c == "T" else [5.0, -5.0] for c in picks[task.id]]))
        before = shared(m)
        info = m.fit_task(task, ctx)
        assert info["config"] == picks[task.id] == argmax_config(info["alpha"])
        assert len(info["share_weight_history"]) == 1 and info["share_weight"] == info["share_weight_history"][-1]
    for l, layer in enumerate(m.net.layers):
        kept = [torch.equal(a, b) for a, b in zip(before[l], layer.shared_tensors())]
        assert all(kept) if picks[1][l] == "F" else not any(kept)
        assert ("1" in layer.own) == (picks[1][l] == "F") and ("1" in layer.ts) == (picks[1][l] == "T")


def test_digits_task_setting_end_to_end_records_and_lr(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert main(["run", "--method", "darts-hps", "--benchmark", "digits", "--setting", "task", "--backbone", "lasem_cnn",
                 "--epochs", "2", "--set", "batch_size=32", "--set", "lr_decay=0.5", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["accuracy"]) == 5 and "unforgetting_verified" not in metrics
    for t, entry in enumerate(metrics["tasks"]):
        info = entry["info"]
        cfg = info["config"]
        assert cfg == argmax_config(info["alpha"]) and info["owners"] == ["shared" if c == "T" else f"task {t + 1}" for c in cfg]
        assert len(info["share_weight_history"]) == 2 and info["global_epochs"] == 2 * (t + 1)
        assert info["peak"]["epoch"] in (1, 2) and len(info["peak"]["test_history"]) == 2
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["train", "arch"] * 10
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([1e-3 / (1 + 0.5 * e) for e in range(10) for _ in range(2)])  # alpha: the same lr and decay
    r = lifelong.run(method="darts-dfcnn", benchmark="digits", setting="task", backbone="lasem_cnn", epochs=2, tasks=2,
                     out=tmp_path / "df", device="cpu", batch_size=32, backbone__width=0.25)
    summary = r.method.task_summary(r.metrics["tasks"][1]["info"])
    assert summary.startswith(f"config {r.metrics['tasks'][1]['info']['config']} (share ") and "peak" in summary


def test_darts_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="arch_data"):
        lifelong.run(method="darts-hps", benchmark="digits", backbone="lasem_cnn", epochs=1, out=tmp_path / "a", arch_data="test")
    with pytest.raises(ConfigError, match="validation split"):
        lifelong.run(method="darts-hps", benchmark="digits", backbone="lasem_cnn", epochs=1, out=tmp_path / "b",
                     arch_data="val", benchmark__val_fraction=0.0)


def test_darts_resume_is_exact(tmp_path: Path) -> None:
    kw = dict(method="darts-hps", benchmark="digits", setting="task", backbone="lasem_cnn", epochs=1, device="cpu",
              batch_size=32, backbone__width=0.25)  # 5 tasks, resumed after task 2: alpha, configs and rollback state restored
    full = lifelong.run(out=tmp_path / "run", **kw)
    for i in (3, 4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{i}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy
    assert [t["info"] for t in resumed.metrics["tasks"]] == [t["info"] for t in full.metrics["tasks"]]
