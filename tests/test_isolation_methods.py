"""PackNet, Piggyback and CPG end to end: exact unforgetting, frozen weights, state round trip, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import lifelong
from conftest import write_image_folder
from lifelong.engine.runner import served_equals_trained
from lifelong.errors import ConfigError
from lifelong.methods.base import TaskMeta
from lifelong.methods.registry import method_class

# Tiny budgets: one epoch per phase, two pruning steps (the schedule itself is tested elsewhere). CPG's
# mask lr is raised so that ~40 Adam steps really unpick earlier weights (at 5e-4 none would cross the
# 5e-3 threshold from 1e-2, and a test could not tell a served mask from an ignored one).
FAST: dict[str, dict[str, Any]] = {
    "packnet": {},
    "piggyback": {},
    "cpg": {"prune_ratios": [0.5, 0.9], "retrain_epochs": 2, "goals": "auto", "mask_lr": 2e-3},
}


pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")


def train_stream(method: str, tasks: int = 3, **overrides: Any):
    """Train ``method`` task by task through the API; after each task record every task's logits on a
    fixed probe and the weights/owners, so later tasks can be checked against them."""
    cls = method_class(method)
    scen = lifelong.load_scenario("permuted-digits", tasks=tasks, val_fraction=cls.val_fraction)
    m, ctx = lifelong.create_method(method, scen, device="cpu", epochs=1, **{**FAST[method], **overrides})
    ctx.num_tasks = len(scen)
    probes = [t.test.subset(torch.arange(40)) for t in scen.tasks]
    history = []
    for task in scen.tasks:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        info = m.fit_task(task, ctx)
        served = served_equals_trained(m, task, ctx, info)  # the runner's check, on the same model
        m.eval()
        logits = [ctx.outputs(lambda x, j=j: m.predict(x, j), probes[j]) for j in range(task.id + 1)]
        weights = {n: (m.mb.weight(n).detach().clone(), m.mb.owner(n).clone()) for n in m.mb.layers}
        history.append({"logits": logits, "weights": weights, "info": info, "served": served})
    return m, ctx, scen, probes, history


@pytest.fixture(scope="module")
def streams() -> dict[str, tuple]:
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = {}
    for method in ("packnet", "piggyback"):
        torch.manual_seed(0)
        out[method] = train_stream(method)
    torch.manual_seed(0)
    out["cpg"] = train_stream("cpg", goals=[1.0, 1.0, 1.0])  # unreachable goals: grow, then reserve capacity
    return out


@pytest.mark.parametrize("method", ["packnet", "piggyback", "cpg"])
def test_old_task_logits_are_bit_identical_after_later_tasks(streams: dict, method: str) -> None:
    m, ctx, scen, probes, history = streams[method]
    final = history[-1]["logits"]
    for i, h in enumerate(history[:-1]):
        for j, logits in enumerate(h["logits"]):
            assert torch.equal(final[j], logits), f"{method}: task {j + 1} changed after task {len(history)} (was {i + 1})"
    assert all(acc > 0.5 for acc in (float((final[j].argmax(1) == probes[j].labels).float().mean()) for j in range(3)))


@pytest.mark.parametrize("method", ["packnet", "piggyback", "cpg"])
def test_weights_owned_by_earlier_tasks_never_change(streams: dict, method: str) -> None:
    m, ctx, scen, probes, history = streams[method]
    for before, after in zip(history, history[1:]):
        changed_somewhere = False
        for name, (w0, o0) in before["weights"].items():
            w1, o1 = after["weights"][name]
            shape = tuple(slice(0, s) for s in w0.shape)  # a grown tensor holds the old one in its corner
            w1c, o1c = w1[shape], o1[shape]
            owned = o0 > 0
            assert torch.equal(o1c[owned], o0[owned]), f"{method}: owners changed in {name}"
            assert torch.equal(w1c[owned], w0[owned]), f"{method}: an earlier task's weight changed in {name}"
            changed_somewhere |= w1.shape != w0.shape or not torch.equal(w1c, w0)
        assert changed_somewhere == (method != "piggyback")  # only Piggyback keeps its backbone frozen


def test_cpg_grows_prunes_and_records_its_decisions(streams: dict) -> None:
    m, ctx, scen, probes, history = streams["cpg"]
    infos = [h["info"] for h in history]
    first = infos[0]
    assert [a["param_multiplier"] for a in first["attempts"]] == [1.0, 1.5]  # goal missed -> grew once
    assert first["width_multiplier"] == pytest.approx(1.5**0.5)
    assert m.mb.weight(m.mb.layers[0]).shape[0] == int(256 * 1.5**0.5)  # MLP hidden 256 -> 313
    # goal missed at full width: pruning stops at the reserved capacity 1 - round(1/(R+1), 1) = 0.7 for
    # R = 2 remaining tasks, and the highest ratio run (0.5; 0.9 is beyond the cap) is taken
    assert first["reserved_ratio"] == pytest.approx(0.7) and first["pruning_ratio"] == 0.5
    assert set(first["pruning_accuracy"]) == {"0.5"}
    assert infos[-1]["reserved_ratio"] == 0.0 and infos[-1]["pruning_ratio"] == 0.0  # last task keeps everything
    assert first["picked_fraction"] is None and infos[1]["picked_fraction"] is not None
    for info in infos:
        json.dumps(info)  # JSON-able primitives only
        assert {"goal", "pruning_ratio", "width_multiplier", "owned_fraction", "free_fraction"} <= set(info)
    # about half of task 1's weights were freed and went to task 2
    assert infos[0]["owned_fraction"] == pytest.approx(0.5, abs=0.02)
    assert infos[1]["earlier_fraction"] == pytest.approx(infos[0]["owned_fraction"], abs=1e-6)


@pytest.mark.parametrize("method", ["packnet", "piggyback", "cpg"])
def test_served_network_scores_exactly_what_the_chosen_model_scored_in_training(streams: dict, method: str) -> None:
    """The check the bit-identical probes cannot make: a task's served network (``predict`` after the
    task is stored) against the network it was trained and chosen with (``info["chosen"]``)."""
    history = streams[method][-1]
    assert [h["served"] for h in history] == [True, True, True]
    expected_split = "val" if method == "cpg" else "train_eval"
    assert all(h["info"]["chosen"]["split"] == expected_split for h in history)


@pytest.mark.parametrize("method", ["packnet", "cpg"])
def test_every_prunable_layer_is_pruned_to_the_ratio_exactly(streams: dict, method: str) -> None:
    """Layer-wise magnitude pruning (cpg.md 4.3, pitfall 11): in every layer, the weights the task freed
    are ``round(ratio * n)`` of the ``n`` it held before pruning (own + freed), not a global quota."""
    m, ctx, scen, probes, history = streams[method]
    pruned_tasks = 0
    for t, h in enumerate(history):
        r = h["info"]["pruning_ratio"]
        if r == 0:
            continue
        pruned_tasks += 1
        v = m.mb.owner_id(t)
        for name, (_, owner) in h["weights"].items():
            own, free = int((owner == v).sum()), int((owner == 0).sum())
            assert free == round(r * (own + free)), f"{method} task {t + 1} {name}: {free} of {own + free} freed"
    assert pruned_tasks >= 2


def test_cpg_picking_leaves_some_earlier_weights_unpicked(streams: dict) -> None:
    """The picking mask is learned (cpg.md 4.5): after tasks 2 and 3 some, not all, earlier weights are
    switched off in the stored 1-bit mask, in every layer taken together and in the stored bits."""
    from lifelong.nn.masked import crop, unpack_bits

    m, ctx, scen, probes, history = streams["cpg"]
    for t in (1, 2):
        assert 0.2 < history[t]["info"]["picked_fraction"] < 0.95
        assert history[t]["info"]["attempts"][-1]["picked_fraction"] < 0.95  # learned in the finetune already
        v, unpicked = m.mb.owner_id(t), 0
        shapes = m.mb.shapes_at(m.mb.widths[t])
        for name in m.mb.layers:
            owner = crop(m.mb.owner(name), shapes[name])
            bits = unpack_bits(m.mb.stores[t].get("pick." + name), shapes[name])
            unpicked += int(((owner >= 1) & (owner < v) & ~bits).sum())
        assert unpicked > 0


def test_cpg_reports_the_papers_exp_and_red_on_a_grown_run(streams: dict) -> None:
    """Exp and Red in units of the original MLP 64-256-256 (cpg.md 6): grown to hidden int(256·√1.5) = 313;
    task 1 frees round(0.5·n) per layer of the grown layers, task 2 half of what it took, task 3 nothing."""
    infos = [h["info"] for h in streams["cpg"][-1]]
    original = 64 * 256 + 256 * 256  # 81,920
    h = int(256 * 1.5**0.5)
    grown = [64 * h, h * h]  # 20,032 and 97,969
    assert h == 313 and all(i["exp"] == sum(grown) / original for i in infos)  # 1.4404
    free1 = [round(0.5 * n) for n in grown]  # 10,016 + 48,984 (round half to even)
    free2 = [round(0.5 * n) for n in free1]  # 5,008 + 24,492
    assert [i["red"] for i in infos] == [sum(free1) / original, sum(free2) / original, 0.0]
    assert infos[0]["free_fraction"] == sum(free1) / sum(grown)  # relative to the grown network


def test_task_summaries_show_each_methods_decisions(streams: dict) -> None:
    m, *_, history = streams["cpg"]
    first = m.task_summary(history[0]["info"])
    assert first.startswith("ratio 0.5, width x1.225 (P 1->1.5)") and "goal 1.000 missed" in first
    assert "on val" in first and "exp 1.44, red 0.72" in first
    assert "(P 1.5)" in m.task_summary(history[1]["info"])
    pn, *_, ph = streams["packnet"]
    assert pn.task_summary(ph[0]["info"]) == "pruning ratio 0.6 (owns 0.400 of the network)"
    pb, *_, bh = streams["piggyback"]
    assert pb.task_summary(bh[0]["info"]) == "trained the backbone (no mask)"
    assert pb.task_summary(bh[1]["info"]).startswith("mask keeps 0.")


@pytest.mark.parametrize("method", ["packnet", "piggyback", "cpg"])
def test_state_round_trip_into_a_fresh_method(streams: dict, method: str) -> None:
    m, ctx, scen, probes, history = streams[method]
    fresh, _ = lifelong.create_method(method, scen, device="cpu", epochs=1, **FAST[method])
    fresh.rebuild(m.structure())
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    for j in range(len(scen)):
        assert torch.equal(ctx.outputs(lambda x: fresh.predict(x, j), probes[j]), history[-1]["logits"][j])


def test_cpg_resume_mid_stream_reproduces_the_accuracy_matrix(tmp_path: Path) -> None:
    kw = dict(method="cpg", benchmark="permuted-digits", tasks=3, epochs=1, prune_ratios=[0.5, 0.9], retrain_epochs=2)
    full = lifelong.run(out=tmp_path / "run", **kw)
    (tmp_path / "run" / "checkpoints" / "task-03.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = lifelong.run(out=tmp_path / "run", resume=True, **kw)
    assert resumed.accuracy == full.accuracy
    assert resumed.metrics["tasks"][2]["info"] == full.metrics["tasks"][2]["info"]
    assert resumed.metrics["unforgetting_verified"] is True
    assert all(f == 0 for f in resumed.forgetting[:-1])
    assert [t["info"]["served_equals_trained"] for t in resumed.metrics["tasks"]] == [True] * 3


def test_cpg_goal_sources_and_selection_split(tmp_path: Path) -> None:
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps({"perm0": "0.5", "perm1": 0.25}))  # the README's format: by task name
    r = lifelong.run(method="cpg", benchmark="permuted-digits", tasks=2, epochs=1, out=tmp_path / "a", goals=str(goals),
                     prune_ratios=[0.5], retrain_epochs=1, select_on="test")
    infos = [t["info"] for t in r.metrics["tasks"]]
    assert [i["goal"] for i in infos] == [0.5, 0.25] and infos[0]["select_on"] == "test"
    assert all(i["goal_met"] and i["pruning_ratio"] == 0.5 for i in infos)
    with pytest.raises(ConfigError, match="goals"):
        lifelong.run(method="cpg", benchmark="permuted-digits", tasks=2, epochs=1, out=tmp_path / "b", goals=[1.5])
    with pytest.raises(ConfigError, match="not found"):
        lifelong.run(method="cpg", benchmark="permuted-digits", tasks=2, epochs=1, out=tmp_path / "c", goals="nope.json")
    with pytest.raises(ConfigError, match="select_on"):
        lifelong.run(method="cpg", benchmark="permuted-digits", tasks=2, epochs=1, out=tmp_path / "d", select_on="train")
    with pytest.raises(ConfigError, match="supports --setting task"):
        lifelong.run(method="packnet", benchmark="digits", setting="class", epochs=1, out=tmp_path / "e")


def test_cifar100_superclass20_and_an_unequal_image_folder_stream(cifar_root: Path, tmp_path: Path) -> None:
    r = lifelong.run(method="packnet", benchmark="cifar100-superclass20", data_root=cifar_root, backbone="convnet",
                     epochs=1, out=tmp_path / "pn")
    assert len(r.accuracy) == 20 and r.metrics["unforgetting_verified"] is True
    assert all(t["info"]["served_equals_trained"] for t in r.metrics["tasks"])
    assert all(f == 0 for f in r.forgetting[:-1])
    root = write_image_folder(tmp_path / "imgs", ["a", "b", "c", "d", "e"], per_class=12)
    r = lifelong.run(method="cpg", benchmark="folder", data_root=root, backbone="convnet", epochs=1, out=tmp_path / "cpg",
                     benchmark__image_size=16, benchmark__task_sizes=[2, 3], prune_ratios=[0.5], retrain_epochs=1,
                     select_on="test")
    assert [t["classes"] for t in r.metrics["tasks"]] == [["a", "b"], ["c", "d", "e"]]
    assert r.metrics["unforgetting_verified"] is True and r.forgetting[0] == 0
    assert all(t["info"]["served_equals_trained"] for t in r.metrics["tasks"])


@pytest.mark.parametrize("preset,method,backbone", [
    ("cpg-cifar100-superclass20", "cpg", "vgg16_bn"), ("packnet-cifar100-superclass20", "packnet", "vgg16_bn"),
    ("independent-cifar100-superclass20", "independent", "vgg16_bn"), ("cpg-finegrained-resnet50", "cpg", "resnet50")])
def test_presets_resolve_to_the_papers_settings(preset: str, method: str, backbone: str) -> None:
    from lifelong.config import resolve

    cfg = resolve(config_file=Path(__file__).parent.parent / "configs" / f"{preset}.yaml")
    assert (cfg.method, cfg.backbone.name, cfg.setting, cfg.seed) == (method, backbone, "task", 1)
    assert cfg.hparams.batch_size == 32 and cfg.hparams.weight_decay == pytest.approx(4e-5)
    if preset == "cpg-finegrained-resnet50":
        assert cfg.backbone.weights and cfg.benchmark_options.task_sizes == [200, 196, 102, 195, 250]
        assert cfg.hparams.max_param_multiplier == 1.0 and cfg.hparams.schedule == "plateau"


def test_face_preset_resolves_to_the_face_protocol() -> None:
    from lifelong.config import resolve

    cfg = resolve(config_file=Path(__file__).parent.parent / "configs" / "cpg-face-cnn20.yaml")
    assert (cfg.method, cfg.backbone.name, cfg.benchmark) == ("cpg", "cnn20", "folder")
    assert cfg.benchmark_options.task_sizes == [3, 7, 8] and cfg.benchmark_options.image_size == 112
    hp = cfg.hparams
    assert (hp.batch_size, hp.lr, hp.prune_lr, hp.mask_lr, hp.plateau_patience) == (128, 5e-4, 5e-4, 5e-4, 10)
    assert hp.max_param_multiplier == 1.0 and hp.goals == [0.9080, 0.6254, 0.6531]


def test_cpg_trains_on_cnn20_with_per_task_biases_and_prelu(tmp_path: Path) -> None:
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "f", ["a1", "a2", "b1", "b2", "b3"], per_class=8)
    r = lifelong.run(method="cpg", benchmark="folder", data_root=root, epochs=1, backbone="cnn20",
                     benchmark__image_size=16, benchmark__task_sizes=[2, 3], out=tmp_path / "c",
                     prune_ratios=[0.5], retrain_epochs=1, goals=[0.0, 0.0])
    assert r.metrics["unforgetting_verified"] is True and r.forgetting[0] == 0.0
    assert [t["info"]["pruning_ratio"] for t in r.metrics["tasks"]] == [0.5, 0.5]
    assert all(t["info"]["served_equals_trained"] for t in r.metrics["tasks"])


def test_piggyback_on_published_weights_masks_every_task_and_never_trains_them(tmp_path: Path) -> None:
    from lifelong.nn.backbones import BackboneConfig, build_backbone

    torch.manual_seed(3)
    published = build_backbone(BackboneConfig(name="convnet"), 1, 8).state_dict()
    torch.save(published, tmp_path / "w.pt")
    r = lifelong.run(method="piggyback", benchmark="digits", tasks=2, epochs=1, out=tmp_path / "pb",
                     backbone__weights=str(tmp_path / "w.pt"))
    infos = [t["info"] for t in r.metrics["tasks"]]
    assert all(i["picked_fraction"] is not None and i["owned_fraction"] == 0.0 for i in infos)  # task 1 masks too
    state = r.method.mb.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in published.items() if k in r.method.mb.layers)
    assert r.metrics["unforgetting_verified"] is True
