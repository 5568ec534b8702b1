"""The brute-force configuration oracle (bruteforce-hps/-tf/-dfcnn): the search keeps the winning
candidate's own weights, the first task takes the second task's configuration without changing
its function, shared layers no task uses start afresh, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lifelong
from lifelong.errors import ConfigError
from lifelong.methods.base import TaskMeta
from lifelong.nn.transfer import config_of, config_str

pytestmark = pytest.mark.usefixtures("one_thread")
# Adam at 1e-2 learns digits in one epoch at a quarter of the channels (TF1 RMSProp needs ~30 steps to move).
FAST = dict(device="cpu", epochs=1, backbone__name="lasem_cnn", backbone__width=0.25, optimizer="adam", lr=1e-2)


@pytest.fixture(scope="module")
def scen():
    return lifelong.load_scenario("digits", "task", val_fraction=0.15, tasks=5)


def make(method: str, scen, **kw):
    torch.manual_seed(0)
    return lifelong.create_method(method, scen, **{**FAST, **kw})


def train(m, ctx, scen, upto: int) -> list[dict]:
    infos = []
    for task in scen.tasks[:upto]:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        infos.append(m.fit_task(task, ctx))
    return infos


@pytest.mark.parametrize("method", ["bruteforce-hps", "bruteforce-tf"])
def test_the_search_keeps_the_winning_candidates_weights_bit_for_bit(scen, method: str) -> None:
    cands = ["TTTT", "FFTT", "TFTF", "FFFF"]
    m, ctx = make(method, scen, configs=cands)
    infos = train(m, ctx, scen, 2)
    assert infos[0]["search"] == [] and infos[0]["config"] == ("FFFF" if method == "bruteforce-hps" else "TTTT")
    search = infos[1]["search"]
    assert [s["config"] for s in search] == cands
    vals = [s["val_accuracy"] for s in search]
    winner = cands[vals.index(max(vals))]  # the first maximum
    assert infos[1]["config"] == winner and m.configs == [winner, winner]  # task 1 takes task 2's configuration
    assert infos[1]["peak"]["val_accuracy"] == max(vals)
    assert [bool(layer.born) for layer in m.net.layers] == [c == "T" for c in winner]
    # every candidate starts from the same state with the same minibatches and dropout draws, so a
    # search over the winner alone reproduces the kept network exactly
    alone, ctx1 = make(method, scen, configs=[winner])
    train(alone, ctx1, scen, 2)
    a, b = m.state_dict(), alone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m.task_summary(infos[1]).startswith(f"config {winner} (best of 4 on validation)")


@pytest.mark.parametrize("method", ["bruteforce-hps", "bruteforce-tf", "bruteforce-dfcnn"])
def test_the_first_task_adopts_each_candidate_without_changing_its_outputs(scen, method: str) -> None:
    m, ctx = make(method, scen, configs=["TTTT"])
    train(m, ctx, scen, 1)
    m.begin_task(TaskMeta.of(scen.tasks[1]))
    m.eval()
    x = torch.randn(7, 1, 8, 8)
    before = m.predict(x, 0).detach().clone()
    start = {k: v.clone() for k, v in m.state_dict().items()}
    for i in range(16):
        cfg = config_of(i, [1] * 4)
        m.load_state_dict(start)
        m.retro_first_task(cfg)
        m._trial = cfg
        assert m.config_for(0) == cfg
        assert torch.equal(m.predict(x, 0), before), config_str(cfg)  # task 1 served through cfg: the same function
    m._trial = None


def test_unused_shared_layers_start_afresh_and_unpicked_ones_are_restored(scen) -> None:
    m, ctx = make("bruteforce-hps", scen, configs=["TTFF", "FFTT"])
    train(m, ctx, scen, 2)
    shared = lambda: [[p.detach().clone() for p in layer.shared_tensors()] for layer in m.net.layers]
    born = [bool(layer.born) for layer in m.net.layers]
    assert born == [c == "T" for c in m.configs[1]]
    before = shared()
    task = scen.tasks[2]
    ctx.start_task(task.id, task.mean, task.std)
    m.begin_task(TaskMeta.of(task))
    fresh = shared()
    for l in range(4):
        assert all(torch.equal(a, b) for a, b in zip(before[l], fresh[l])) == born[l]  # unborn: re-initialised
    info = m.fit_task(task, ctx)
    after = shared()
    for l, c in enumerate(info["config"]):
        if c == "F":
            assert all(torch.equal(a, b) for a, b in zip(fresh[l], after[l]))  # not picked: as before the task
    assert m.footprint().parameters > 0


def test_candidates_resolve_names_and_default_to_every_configuration(scen) -> None:
    m, _ = make("bruteforce-dfcnn", scen)
    assert [config_str(c) for c in m.candidates] == [config_str(config_of(i, [1] * 4)) for i in range(16)]
    m, _ = make("bruteforce-tf", scen, configs=["top2", "bottom3", "ftft"])
    assert [config_str(c) for c in m.candidates] == ["FFTT", "TTTF", "FTFT"]
    with pytest.raises(ConfigError, match="twice"):
        make("bruteforce-hps", scen, configs=["top2", "FFTT"])


def test_ties_go_to_the_first_candidate(scen) -> None:
    # the family's toy default (TF1 RMSProp at 1e-3) has not moved after one epoch: every candidate ties
    m, ctx = make("bruteforce-tf", scen, optimizer="rmsprop_tf", lr=1e-3, configs=["FFTT", "TTTT", "FFFF"])
    search = train(m, ctx, scen, 2)[1]["search"]
    assert len({s["val_accuracy"] for s in search}) == 1
    assert m.configs == ["FFTT", "FFTT"]


def test_bruteforce_resume_is_exact(tmp_path: Path) -> None:
    kw = dict(method="bruteforce-tf", benchmark="digits", setting="task", backbone="lasem_cnn", device="cpu",
              epochs=1, batch_size=32, backbone__width=0.25, optimizer="adam", lr=1e-2, configs=["TTTT", "FFTT", "TFTF"])
    full = lifelong.run(out=tmp_path / "run", **kw)
    for i in (3, 4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{i}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy
    assert [t["info"] for t in resumed.metrics["tasks"]] == [t["info"] for t in full.metrics["tasks"]]
    assert resumed.footprint == full.footprint
