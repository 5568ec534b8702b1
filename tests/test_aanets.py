"""AANets: dual-branch networks, the interleaved alpha pass, phase transitions, resume, presets;
ResNet-32 option-A shortcuts (iCaRL's network)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import lifelong
from lifelong.cli import main
from lifelong.data.augment import AugmentSpec
from lifelong.data.imageset import ImageSet
from lifelong.data.scenario import legacy_permutation
from lifelong.engine.loop import Phase, StepOutput, TrainContext
from lifelong.engine.optim import OptimConfig
from lifelong.errors import ConfigError
from lifelong.methods.aanets import AANets
from lifelong.methods.base import TaskMeta, module_bytes, module_params
from lifelong.nn.backbones import BUILDERS, BackboneConfig, build_backbone
from lifelong.nn.dual_branch import DualBranchNet, ScaledConv2d, plastic_copy, scale_count, stable_copy
from lifelong.nn.resnet import ShortcutA
from lifelong.report.footprint import architecture_counts, footprint_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- helpers
def _scenario():
    return lifelong.load_scenario("digits", "class")


def _method(**over: Any) -> tuple[AANets, TrainContext, Any]:
    torch.manual_seed(0)
    scen = _scenario()
    m, ctx = lifelong.create_method("aanets", scen, device="cpu", epochs=1, memory=40, **over)
    return m, ctx, scen  # type: ignore[return-value]


def _train(m: AANets, ctx: TrainContext, scen: Any, tasks: range) -> None:
    for i in tasks:
        t = scen.tasks[i]
        ctx.start_task(t.id, t.mean, t.std)
        m.begin_task(TaskMeta.of(t))
        m.fit_task(t, ctx)


def _capture(m: AANets, ctx: TrainContext, scen: Any, i: int, monkeypatch: pytest.MonkeyPatch) -> Phase:
    """Run task ``i``'s ``fit_task`` with the loop replaced by a recorder; returns its main phase."""
    phases: list[Phase] = []
    monkeypatch.setattr(ctx, "fit", lambda phase: phases.append(phase) or [])
    t = scen.tasks[i]
    ctx.start_task(t.id, t.mean, t.std)
    m.begin_task(TaskMeta.of(t))
    m.fit_task(t, ctx)
    monkeypatch.undo()
    return phases[0]


def _randomise_bn(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return net


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- ResNet-32 option A (issue 7)
def test_resnet32_option_a_is_parameter_free_and_zero_pads() -> None:
    a = build_backbone(BackboneConfig("resnet32", shortcut="A"), 3, 32)
    b = build_backbone(BackboneConfig("resnet32"), 3, 32)
    assert BackboneConfig().shortcut == "B"  # LUCIR's / AANets' 1x1 conv + BN (manets.md 2.1)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in a.modules())
    assert isinstance(a.layer2[0].downsample, ShortcutA) and not list(a.layer2[0].downsample.parameters())
    assert isinstance(b.layer2[0].downsample[0], nn.Conv2d) and b.layer2[0].downsample[0].kernel_size == (1, 1)
    # conv 461,232 + BN affine 2,272; the quoted 464,154 adds a 10-way FC (64*10 + 10 = 650).
    assert module_params(a) == 463_504 and module_params(a) + 64 * 10 + 10 == 464_154
    assert module_params(b) == module_params(a) + 16 * 32 + 32 * 64 + 2 * (32 + 64)  # 1x1 convs + their BN
    assert a(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    x = torch.arange(1 * 16 * 4 * 4, dtype=torch.float32).view(1, 16, 4, 4)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (1, 32, 2, 2)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()
    with pytest.raises(ConfigError, match="resnet32 only"):
        build_backbone(BackboneConfig("resnet18", shortcut="A"), 3, 32)


# ---------------------------------------------------------------------------- the dual-branch network
NETS = [("convnet", 1, 8, 1.0), ("resnet32", 3, 32, 0.25), ("resnet18", 3, 32, 0.125), ("resnet18", 3, 64, 0.125),
        ("mlp", 1, 8, 0.25)] + ([("convnet_fc", 1, 28, 0.25)] if "convnet_fc" in BUILDERS else [])


@pytest.mark.parametrize("name,ch,size,width", NETS)
def test_levels_run_in_order_are_forward(name: str, ch: int, size: int, width: float) -> None:
    net = _randomise_bn(build_backbone(BackboneConfig(name, width=width), ch, size)).eval()
    x = torch.randn(3, ch, size, size)
    h = x
    for level in net.levels():
        h = level(h)
    assert torch.equal(h, net(x))
    assert len(net.levels()) == {"resnet32": 3, "resnet18": 4}.get(name, len(net.levels()))


@pytest.mark.parametrize("name,ch,size,width", NETS[:3])
def test_fused_network_from_phase0_equals_it_for_any_alpha(name: str, ch: int, size: int, width: float) -> None:
    net = _randomise_bn(build_backbone(BackboneConfig(name, width=width, last_relu=False), ch, size))
    dual = DualBranchNet(stable_copy(net), plastic_copy(net))
    x = torch.randn(4, ch, size, size)
    assert dual.alphas.tolist() == [0.5] * len(net.levels())
    for alphas in ([0.5] * 4, [0.0, 1.0, 0.25, 0.9], [-0.7, 0.3, 1.9, 3.0]):
        dual.alphas.data = torch.tensor(alphas[: len(dual.alphas)])
        for train in (False, True):
            net.train(train), dual.train(train)
            assert torch.equal(dual(x), net(x))
    assert all(m.scale.eq(1).all() for m in dual.stable.modules() if isinstance(m, ScaledConv2d))
    assert sum(isinstance(m, ScaledConv2d) for m in dual.stable.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in net.modules())


def test_method_phase1_network_equals_phase0_and_single_branch_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    m, ctx, scen = _method()
    _train(m, ctx, scen, range(1))
    phase0 = copy.deepcopy(m.net).eval()
    m.begin_task(TaskMeta.of(scen.tasks[1]))
    assert isinstance(m.net, DualBranchNet) and len(m.net.alphas) == 3
    x = next(ctx.iterate(scen.tasks[1].train, 16, train=False)).x
    m.eval()
    assert torch.equal(m.net(x), phase0(x))


def test_alphas_stay_fp32_under_bf16_autocast() -> None:
    net = build_backbone(BackboneConfig("resnet32", width=0.25), 3, 32)
    dual = DualBranchNet(stable_copy(net), plastic_copy(net))
    with torch.no_grad():
        for p in dual.plastic.parameters():
            p.mul_(0.9)  # branches differ, so alpha has a gradient
    seen: list[torch.dtype] = []
    dual.pairs()[1][0].register_forward_hook(lambda mod, i, o: seen.append(i[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dual(torch.randn(4, 3, 32, 32))
        out.float().pow(2).mean().backward()
    assert dual.alphas.dtype == torch.float32 and dual.alphas.grad.dtype == torch.float32
    assert out.dtype == torch.float32 and seen == [torch.float32]  # aggregation in fp32, fed on as such
    assert (dual.alphas.grad != 0).all()
    dual.alphas.grad = torch.ones(3)
    torch.optim.SGD([dual.alphas], lr=1e-5).step()
    assert (dual.alphas == 0.5 - 1e-5).all()  # a 1e-5 step survives (fp32 spacing at 0.5: 6e-8; bf16: 2^-8)


def test_footprint_counts_both_branches_and_the_scales_exactly() -> None:
    m, ctx, scen = _method()
    _train(m, ctx, scen, range(1))
    base = copy.deepcopy(m.net)
    m.begin_task(TaskMeta.of(scen.tasks[1]))
    S, L, P = scale_count(base), 3, module_params(base)
    fp = m.footprint()
    head = 4 * m.net.out_dim + 1  # 4 class rows + sigma
    assert fp.parameters == 2 * P + S + L + head
    buffers = sum(b.numel() * b.element_size() for b in base.buffers())
    memory = m.memory.nbytes() + module_bytes(m.means)
    assert fp.bytes == 4 * (2 * P + S + L + head) + 2 * buffers + 4 * L + memory  # + the alpha-gradient sum
    assert scale_count(build_backbone(BackboneConfig("resnet32"), 3, 32)) == 53_808  # manets.md 2.3
    row = [r for r in footprint_table("resnet32", [50, 10, 10, 10, 10, 10], image_size=32) if r.method == "aanets"][0]
    a = architecture_counts("resnet32", image_size=32)
    assert row.paper_bytes == 4 * (2 * (a.weights + a.private) + 53_808 + 3) + 4 * (64 * 100 + 1)


# ---------------------------------------------------------------------------- training
def test_training_keeps_stable_weights_and_moves_scales_and_bn() -> None:
    m, ctx, scen = _method(branch_2="fixed")
    _train(m, ctx, scen, range(1))
    phase0 = _state(m.net)
    _train(m, ctx, scen, range(1, 2))
    stable, plastic = m.net.stable.state_dict(), m.net.plastic.state_dict()
    convs = [n for n, mod in m.net.stable.named_modules() if isinstance(mod, ScaledConv2d)]
    assert convs and all(torch.equal(stable[f"{n}.weight"], phase0[f"{n}.weight"]) for n in convs)
    assert all(not torch.equal(stable[f"{n}.scale"], torch.ones_like(stable[f"{n}.scale"])) for n in convs)
    bn = [k for k in phase0 if k.endswith((".weight", ".bias", "running_mean")) and k.rsplit(".", 1)[0] + ".weight" not in
          {f"{n}.weight" for n in convs}]
    assert bn and all(not torch.equal(stable[k], phase0[k]) for k in bn)
    # fixed plastic branch: no parameter moves, its BN statistics do (train mode, manets.md 2.4)
    assert all(torch.equal(plastic[k], phase0[k]) for k, p in m.net.plastic.named_parameters())
    assert not torch.equal(plastic["features.1.running_mean"], phase0["features.1.running_mean"])


def test_alpha_pass_changes_only_the_alphas(monkeypatch: pytest.MonkeyPatch) -> None:
    m, ctx, scen = _method(fusion_lr=0.01)
    _train(m, ctx, scen, range(1))
    main_phase = _capture(m, ctx, scen, 1, monkeypatch)
    alpha_phase = main_phase.interleave
    assert alpha_phase is not None and list(alpha_phase.params) == [m.net.alphas]
    before = _state(m)
    for p in m.parameters():
        p.grad = None
    ctx.fit(dataclasses.replace(alpha_phase, epochs=2))
    after = _state(m)
    assert not torch.equal(after["net.alphas"], before["net.alphas"])
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["net.alphas"]
    assert all(p.grad is None for n, p in m.named_parameters() if n != "net.alphas")  # grads w.r.t. alphas only


@pytest.mark.parametrize("mode", ["clean", "accumulate"])
def test_alpha_grad_clean_zeroes_before_each_step_and_accumulate_does_not(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m, ctx, scen = _method(alpha_grad=mode)
    _train(m, ctx, scen, range(1))
    phase = dataclasses.replace(_capture(m, ctx, scen, 1, monkeypatch).interleave, epochs=1, batch_size=40)
    state = _state(m)
    t = scen.tasks[1]

    def grads(sentinel: float | None) -> list[torch.Tensor]:
        m.load_state_dict(state)
        m.net.alphas.grad = None if sentinel is None else torch.full((3,), sentinel)
        out: list[torch.Tensor] = []
        ctx.start_task(t.id, t.mean, t.std)  # same batches each time
        ctx.fit(dataclasses.replace(phase, after_backward=lambda: out.append(m.net.alphas.grad.clone())))
        return out

    clean, seeded = grads(None), grads(1000.0)
    assert len(clean) >= 2
    if mode == "clean":
        assert all(torch.equal(a, b) for a, b in zip(clean, seeded))
    else:  # the running sum: the sentinel (earlier gradients) plus every step's gradient so far
        assert torch.allclose(seeded[0], clean[0] + 1000.0)
        assert torch.allclose(seeded[1], clean[0] + clean[1] + 1000.0, rtol=1e-4)


def test_accumulate_sums_the_main_pass_into_a_saved_buffer() -> None:
    m, ctx, scen = _method(alpha_grad="accumulate")
    _train(m, ctx, scen, range(2))
    g1 = m.net.alpha_grad_sum.clone()
    assert g1.abs().sum() > 0 and torch.equal(g1, m.net.alphas.grad)
    m.net.alphas.grad = None  # as after a resume: the buffer carries the sum on
    _train(m, ctx, scen, range(2, 3))
    assert not torch.equal(m.net.alpha_grad_sum, g1)


def test_reference_models_are_frozen_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    m, ctx, scen = _method()
    refs: list[nn.ModuleList] = []
    original = AANets.reference
    monkeypatch.setattr(AANets, "reference", lambda self: refs.append(original(self)) or refs[-1])
    snapshots = []
    for i in range(3):
        t = scen.tasks[i]
        ctx.start_task(t.id, t.mean, t.std)
        m.begin_task(TaskMeta.of(t))
        net = m.net.plastic if i == 1 else m.net  # phase 1: the phase-0 net (== the plastic copy)
        snapshots.append(_state(nn.ModuleList([net, m.head])))
        m.fit_task(t, ctx)
    assert len(refs) == 2
    for ref, snap in zip(refs, snapshots[1:]):
        assert not ref.training and all(not p.requires_grad for p in ref.parameters())
        assert all(torch.equal(v, snap[k]) for k, v in ref.state_dict().items())
    assert isinstance(refs[1][0], DualBranchNet)  # phase 2: both branches and the alphas


def test_dual_with_alpha_one_and_no_fusion_lr_is_the_single_branch_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    dual, ctx, scen = _method(alpha_init=1.0, fusion_lr=0.0)
    single, ctx_s, _ = _method(branch_mode="single")
    _train(dual, ctx, scen, range(1))
    single.rebuild(dual.structure())
    single.load_state_dict(dual.state_dict())
    pd = _capture(dual, ctx, scen, 1, monkeypatch)
    ps = _capture(single, ctx_s, scen, 1, monkeypatch)
    assert pd.interleave is None and not isinstance(single.net, DualBranchNet)
    dual.train(), single.train()
    batch = next(ctx.iterate(ImageSet.concat([scen.tasks[1].train, dual.memory.data()]), 64, True, torch.Generator().manual_seed(3)))
    assert torch.equal(pd.loss(batch).loss, ps.loss(batch).loss)


@pytest.mark.parametrize("baseline,method,options", [("lucir", "lucir", {}),
                                                     ("icarl", "icarl", {"variant": "aanets", "classifier": "cnn"})])
def test_single_free_branch_runs_exactly_as_its_baseline(tmp_path: Path, baseline: str, method: str, options: dict) -> None:
    """``branch_mode=single branch_1=free`` is the plain baseline (LUCIR, or the AANets code's iCaRL), bit for bit."""
    kw: dict[str, Any] = dict(benchmark="digits", setting="class", epochs=1, memory=40)
    plain = lifelong.run(method=method, out=tmp_path / method, **options, **kw)
    single = lifelong.run(method="aanets", out=tmp_path / "aanets", baseline=baseline, branch_mode="single", branch_1="free", **kw)
    assert single.accuracy == plain.accuracy and single.metrics["variants"] == plain.metrics["variants"]


def test_balanced_subset_code_and_stratified(monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in ("code", "stratified"):
        m, ctx, scen = _method(balanced=mode)
        _train(m, ctx, scen, range(2))
        t = scen.tasks[2]
        data = m.balanced_set(t, ctx)
        counts = torch.bincount(data.labels, minlength=6).tolist()
        if mode == "code":  # 20 x nb_cl new, with replacement + every old exemplar (manets.md 3.2)
            assert sum(counts[4:]) == 40 and counts[:4] == [m.memory.counts()[c] for c in range(4)]
        else:
            assert counts == [min(20, min(m.memory.counts().values()))] * 6


# ---------------------------------------------------------------------------- the loop extension
def test_interleaved_phase_runs_after_each_epoch_with_a_persistent_schedule() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(16, 3), nn.Linear(16, 3)
    data = ImageSet(torch.randint(0, 256, (32, 1, 4, 4), dtype=torch.uint8), torch.randint(0, 3, (32,)))
    rows: list[dict] = []
    ctx = TrainContext(torch.device("cpu"), AugmentSpec(size=4), seed=0, epoch_log=rows.append)
    loss = lambda b_: StepOutput(F.cross_entropy(a(b_.x.flatten(1)) + b(b_.x.flatten(1)), b_.y))  # noqa: E731
    grads: list[torch.Tensor] = []
    sub = Phase("sub", data, b.parameters(), 3, OptimConfig(lr=0.5, milestones=[2]), loss, 16, zero_grad=False,
                grad_only_params=True, after_backward=lambda: grads.append(b.weight.grad.clone()))
    a_before = a.weight.detach().clone()
    a.weight.grad = None
    hist = ctx.fit(Phase("main", data, a.parameters(), 3, OptimConfig(lr=0.1, milestones=[1]), loss, 16, interleave=sub))
    assert [h.phase for h in hist] == ["main"] * 3
    assert [(r["phase"], r["epoch"]) for r in rows] == [("main", 1), ("sub", 1), ("main", 2), ("sub", 2), ("main", 3), ("sub", 3)]
    assert [r["lr"] for r in rows if r["phase"] == "main"] == [0.1, pytest.approx(0.01), pytest.approx(0.01)]
    assert [r["lr"] for r in rows if r["phase"] == "sub"] == [0.5, 0.5, pytest.approx(0.05)]  # one schedule throughout
    assert len(grads) == 6 and all((g2.abs() > g1.abs()).any() for g1, g2 in zip(grads, grads[1:]))  # never cleared
    assert not torch.equal(a.weight.detach(), a_before)


# ---------------------------------------------------------------------------- resume and presets
def test_killed_run_resumes_with_exact_alphas(tmp_path: Path) -> None:
    """SIGKILL a real ``lifelong run --method aanets`` after its second checkpoint, then ``--resume``."""
    import signal
    import subprocess
    import sys
    import time

    sets = ["--set", "alpha_grad=accumulate", "--set", "fusion_lr=0.001"]
    args = ["run", "--method", "aanets", "--benchmark", "digits", "--setting", "class", "--epochs", "2", "--memory", "40",
            *sets, "--quiet"]
    full = lifelong.run(method="aanets", benchmark="digits", setting="class", epochs=2, memory=40, alpha_grad="accumulate",
                        fusion_lr=0.001, out=tmp_path / "full")
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lifelong", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "task-02.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "task-02.pt").exists()
    assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["accuracy"] == full.accuracy
    assert [t["info"] for t in resumed["tasks"]] == [t["info"] for t in full.metrics["tasks"]]
    final = [torch.load(d / "checkpoints" / "task-05.pt", weights_only=True)["state"] for d in (tmp_path / "full", out)]
    for key in ("net.alphas", "net.alpha_grad_sum"):
        assert torch.equal(final[0][key], final[1][key])
    assert len(full.metrics["tasks"][4]["info"]["alphas"]) == 2 and (out / "alphas.png").stat().st_size > 0


def test_presets_cover_the_seed_commands() -> None:
    from lifelong.config import resolve

    names = sorted(p.name for p in CONFIGS.glob("aanets-*.yaml"))
    steps = {"5steps": 10, "10steps": 5, "25steps": 2}
    for baseline in ("icarl", "lucir"):
        for k in steps:
            assert f"aanets-{baseline}-cifar100-b50-{k}.yaml" in names
            assert f"aanets-{baseline}-imagenet100-b50-{k}.yaml" in names
            assert f"aanets-{baseline}-single-cifar100-b50-{k}.yaml" in names
            assert f"aanets-{baseline}-freefree-cifar100-b50-{k}.yaml" in names
    for name in names:
        cfg = resolve(config_file=CONFIGS / name)
        hp = cfg.hparams
        assert cfg.method == "aanets" and cfg.setting == "class" and hp.baseline in name
        assert (cfg.benchmark_options.base, cfg.benchmark_options.increment) == (50, steps[name.split("-")[-1][:-5]])
        assert cfg.backbone.last_relu is False and hp.alpha_grad == "clean"
        if "imagenet" in name:
            raw = yaml.safe_load((CONFIGS / name).read_text())
            assert raw["benchmark_options"]["class_order"] == legacy_permutation(100, 1993)
            assert cfg.backbone.name == "resnet18" and (hp.branch_1, hp.branch_2) == ("ss", "fixed")
            assert (hp.epochs, hp.weight_decay, hp.balanced_batch_size, hp.budget, hp.memory) == (90, 1e-4, 50, "per_class", 20)
        else:
            assert cfg.backbone.name == "resnet32" and cfg.backbone.shortcut == "B"
            assert (hp.epochs, hp.weight_decay, hp.balanced_batch_size, hp.budget, hp.memory) == (160, 5e-4, 100, "total", 2000)
        if "single" in name:
            assert (hp.branch_mode, hp.branch_1) == ("single", "free")
        elif "freefree" in name:
            assert (hp.branch_mode, hp.branch_1, hp.branch_2, hp.fusion_lr) == ("dual", "free", "free", 0.0)
        else:
            assert hp.branch_mode == "dual" and hp.branch_1 == "ss" and hp.fusion_lr == 1e-5
