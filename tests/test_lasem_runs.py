"""LASEM family end to end on the embedded digits (task setting, ``--backbone lasem_cnn``): recorded
decisions, peak accuracy, the stream-wide lr decay, rollback through a real fit, exact resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import lifelong
from lifelong.errors import ConfigError
from lifelong.methods.base import TaskMeta
from lifelong.nn.transfer import config_of, config_str

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = dict(benchmark="digits", setting="task", backbone="lasem_cnn", device="cpu", batch_size=32)  # fewer steps


@pytest.mark.parametrize("method", ["hps", "tf", "dfcnn", "lasem-hps"])
def test_digits_runs_record_configuration_owners_and_peak(tmp_path: Path, method: str) -> None:
    r = lifelong.run(method=method, tasks=2, epochs=2, out=tmp_path / method, **RUN)
    infos = [t["info"] for t in r.metrics["tasks"]]
    assert len(r.accuracy) == 2 and "unforgetting_verified" not in r.metrics  # shared layers may drift
    for t, info in enumerate(infos):
        json.dumps(info)
        cfg = info["config"]
        assert len(cfg) == 4 and set(cfg) <= {"T", "F"}
        assert info["owners"] == ["shared" if c == "T" else f"task {t + 1}" for c in cfg]
        peak = info["peak"]
        assert len(peak["val_history"]) == 2 and peak["epoch"] in (1, 2)
        assert peak["val_accuracy"] == pytest.approx(max(peak["val_history"]), abs=1e-6)
        assert peak["epoch"] == peak["val_history"].index(max(peak["val_history"])) + 1  # first maximum
        assert peak["test_accuracy"] == pytest.approx(peak["test_history"][peak["epoch"] - 1], abs=1e-6)
        assert info["global_epochs"] == 2 * (t + 1)
        assert r.method.task_summary(info).startswith(f"config {cfg}")
    if method == "lasem-hps":
        for info in infos:
            assert len(info["prior_history"]) == 2 and all(sum(p) == pytest.approx(1, abs=1e-4) for p in info["prior_history"])
            assert info["config"] == config_str(config_of(info["config_index"], [1] * 4))
            assert info["config_index"] == max(range(16), key=lambda i: (info["prior"][i], -i))
    else:
        assert [i["config"] for i in infos] == [{"hps": "FFTT", "tf": "FFTT", "dfcnn": "FFTT"}[method]] * 2


def test_lr_decays_over_the_global_epoch_count(tmp_path: Path) -> None:
    r = lifelong.run(method="hps", tasks=2, epochs=2, out=tmp_path / "d", lr=1e-3, lr_decay=0.5, transfer="all", **RUN)
    with open(r.run_dir / "log.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert lrs == pytest.approx([1e-3 / (1 + 0.5 * e) for e in range(4)])  # task 2 continues the count


def test_lasem_rollback_through_a_real_fit_and_stl_snn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scen = lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=2)
    m, ctx = lifelong.create_method("lasem-tf", scen, device="cpu", epochs=1, backbone__name="lasem_cnn")
    for task in scen.tasks:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        born = [bool(layer.born) for layer in m.net.layers]
        before = [[p.detach().clone() for p in layer.shared_tensors()] for layer in m.net.layers]
        info = m.fit_task(task, ctx)
        for l, layer in enumerate(m.net.layers):
            kept = [torch.equal(a, b) for a, b in zip(before[l], layer.shared_tensors())]
            if info["config"][l] == "F" and born[l]:
                assert all(kept)  # restored bit for bit
            if info["config"][l] == "T":
                assert not any(kept) and bool(layer.born)
            assert (str(task.id) in layer.own) == (info["config"][l] == "F")
            assert (str(task.id) in layer.ts) == (info["config"][l] == "T")
    stl = lifelong.run(method="stl", tasks=2, epochs=1, out=tmp_path / "stl", **RUN)
    assert stl.metrics["unforgetting_verified"] is True and "peak" in stl.metrics["tasks"][0]["info"]
    snn = lifelong.run(method="snn", tasks=5, epochs=1, out=tmp_path / "snn", **RUN)
    assert len(snn.accuracy) == 5
    with pytest.raises(ConfigError, match="same number of classes"):
        snn.method.check_stream([TaskMeta(0, "a", 2), TaskMeta(1, "b", 3)])
    with pytest.raises(ConfigError, match="--backbone lasem_cnn"):
        lifelong.run(method="lasem-hps", benchmark="digits", epochs=1, out=tmp_path / "bad")


def test_lasem_hps_resume_is_exact(tmp_path: Path) -> None:
    kw = dict(method="lasem-hps", epochs=1, **RUN)  # 5 tasks of 2 classes; resumed after task 2
    full = lifelong.run(out=tmp_path / "run", **kw)
    for i in (3, 4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{i}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy
    assert [t["info"] for t in resumed.metrics["tasks"]] == [t["info"] for t in full.metrics["tasks"]]
