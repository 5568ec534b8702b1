"""CLR / CLR-Full: Dirac start, isolation, exact folding, clr.md 3's counts, the DCT layout, resume, planted bugs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import lifelong
from conftest import write_image_folder
from lifelong.errors import ConfigError, DataError
from lifelong.methods.base import TaskMeta
from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.reprogram import CLRConv, Reprogrammed, TaskBN, find_pairs, fold_kernel, folded_conv
from lifelong.report.footprint import clr_counts, footprint_table

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")

BACKBONES = [("resnet18", 3, 20), ("resnet50", 3, 32), ("resnet32", 3, 12), ("vgg16_bn", 3, 32), ("convnet", 1, 8),
             ("cnn20", 3, 16)]


def _randomise_bn(net: torch.nn.Module) -> None:
    """Non-trivial BN statistics so that a wrong BN clone would show."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)


@pytest.mark.parametrize("name,ch,size", BACKBONES)
def test_dirac_start_is_exactly_the_unwrapped_backbone(name: str, ch: int, size: int) -> None:
    net = build_backbone(BackboneConfig(name=name, cifar_stem=False if name == "resnet18" else None), ch, size)
    _randomise_bn(net)
    x = torch.randn(2, ch, size, size)
    ref = net.eval()(x)
    for cover in (False, True):
        rp = Reprogrammed(copy.deepcopy(net), cover).eval()
        rp.add_task()
        assert torch.equal(rp(x), ref)
        k = rp.kernels(0)[0]
        assert k.shape[1:] == (1, 3, 3) and torch.equal(k[:, 0, 1, 1], torch.ones(k.shape[0]))
        assert k.abs().sum() == k.shape[0]  # every entry but the centre is 0
        assert all(not p.requires_grad for p in rp.parameters())  # frozen until a task trains its own


def test_placement_and_coverage() -> None:
    net = build_backbone(BackboneConfig(name="resnet18", cifar_stem=False), 3, 32)
    report = find_pairs(net)
    assert report.method == "fx" and len(report.pairs) == 20 and not report.unpaired
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in report.pairs
    rp = Reprogrammed(net)
    assert len(rp.wrapped) == 17 and "layer2.0.downsample.0" not in rp.wrapped  # CLR skips 1x1 convs
    assert isinstance(rp.net.layer1[0].conv1, CLRConv) and isinstance(rp.net.layer1[0].bn1, TaskBN)
    assert isinstance(rp.net.layer2[0].downsample[0], torch.nn.Conv2d)  # stays a plain frozen conv
    cnn20 = find_pairs(build_backbone(BackboneConfig(name="cnn20"), 3, 16))
    assert not cnn20.pairs and len(cnn20.unpaired) == 20  # biased convs before PReLU: CLR follows the conv, no BN


@pytest.mark.parametrize("name,ch,size", [("resnet18", 3, 37), ("resnet32", 3, 15), ("cnn20", 3, 21)])
def test_folded_inference_equals_the_unfolded_layers(name: str, ch: int, size: int) -> None:
    torch.manual_seed(1)  # half width: the same layer types (7x7/2 stem, 3x3/2, 1x1/2 downsample), a quarter of the weights
    net = build_backbone(BackboneConfig(name=name, width=0.5, cifar_stem=False if name == "resnet18" else None), ch, size)
    rp = Reprogrammed(net, cover_1x1=True).eval()  # every conv: 7x7/2 stem, 3x3/2, 1x1/2 downsample, biases
    rp.add_task()
    rp.add_task()
    head = torch.nn.Linear(rp.out_dim, 10)
    with torch.no_grad():
        for t in (0, 1):
            for k in rp.kernels(t):
                k.add_(torch.randn_like(k) * 0.05)
        x = torch.randn(3, ch, size, size)
        for t in (0, 1):
            rp.set_task(t)
            plain = head(rp(x))
            rp.set_fold(True)
            folded = head(rp(x))
            rp.set_fold(False)
            assert (plain - folded).abs().max() <= 1e-5
            exported = head(rp.export(t)(x))
            assert (plain - exported).abs().max() <= 1e-5


@pytest.mark.parametrize("stride,dilation,padding,bias,size", [(1, 1, 1, False, 7), (2, 1, 3, True, 9), (2, 2, 2, True, 10),
                                                                (3, 1, 0, False, 11), (1, 1, 0, True, 5)])  # the last: a 1x1 output
def test_folding_is_exact_for_any_stride_dilation_padding(stride: int, dilation: int, padding: int, bias: bool, size: int) -> None:
    conv = torch.nn.Conv2d(4, 6, 3 if dilation > 1 else 5, stride, padding, dilation, bias=bias).double()
    kernel = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 4, size, size, dtype=torch.float64)
    z = conv(x)
    reference = torch.nn.functional.conv2d(z, kernel, None, 1, 1, 1, 6)
    weight, b = fold_kernel(conv, kernel)
    assert weight.shape[-1] == 2 * stride + dilation * (conv.kernel_size[0] - 1) + 1
    assert torch.allclose(folded_conv(x, conv, kernel, weight, b), reference, atol=1e-12, rtol=0)


def test_parameter_counts_of_clr_md_3() -> None:
    r50, r18 = clr_counts("resnet50"), clr_counts("resnet18")
    assert (r50.kernels, r50.reprogram, r50.backbone) == (34_560, 140_800, 23_508_032)
    assert round(100 * r50.reprogram / r50.backbone, 3) == 0.599  # "< 0.6% of the original model"
    assert round(100 * r50.reprogram / (r50.backbone + 2049 * 1000), 3) == 0.551
    assert (r18.kernels, r18.kernels + r18.bn_params, r18.reprogram) == (35_136, 44_736, 54_336)
    assert r18.backbone + 513 * 1000 == 11_689_512 and round(100 * r18.reprogram / 11_689_512, 3) == 0.465
    full50, full18 = clr_counts("resnet50", True), clr_counts("resnet18", True)
    assert (full50.kernels, full50.reprogram, full18.kernels, full18.reprogram) == (239_040, 345_280, 43_200, 62_400)
    assert full18.kernels - r18.kernels == 8_064 and full50.kernels - r50.kernels == 204_480
    rows = {r.method: r for r in footprint_table("resnet50", [1000, 200])}
    assert rows["clr"].paper_bytes == 4 * (23_454_912 + 4 * 26_560) + 4 * (2 * 140_800 + 2049 * 1200)
    assert "0.599% w/o fc" in rows["clr"].note


def run(tmp_path: Path, name: str, **kw: Any):
    kw = {"method": "clr", "benchmark": "digits", "tasks": 5, "epochs": 2, **kw}
    return lifelong.run(out=tmp_path / name, **kw)


def test_digits_and_permuted_digits_never_forget(tmp_path: Path) -> None:
    r = run(tmp_path, "d")
    assert r.metrics["unforgetting_verified"] is True and all(f == 0 for f in r.forgetting[:-1])
    infos = [t["info"] for t in r.metrics["tasks"]]
    assert infos[0]["immutable"].startswith("trained on task 1") and infos[0]["trained"] == "backbone, BN, head"
    assert all(i["trained"] == "CLR kernels, BN, head" and i["served_equals_trained"] for i in infos[1:])
    assert r.average_accuracy > 0.6
    fp = r.footprint["clr"]
    assert fp["per_task"][1] == {"kernels": 9 * (32 + 64 + 128), "bn_params": 448, "bn_stats": 448, "head": 258, "total": 3170}
    row = {x.method: x for x in footprint_table("convnet", [2] * 5, in_channels=1, image_size=8)}["clr"]
    state = torch.load(tmp_path / "d" / "checkpoints" / "task-05.pt", weights_only=True)["state"]
    assert sum(t.numel() * t.element_size() for t in state.values()) == row.checkpoint_bytes == r.footprint["bytes"]
    p = run(tmp_path, "p", method="clr-full", benchmark="permuted-digits", tasks=2, backbone="convnet", fold=True)
    assert p.metrics["unforgetting_verified"] is True and all(f == 0 for f in p.forgetting[:-1])
    with pytest.raises(ConfigError, match="has none"):
        run(tmp_path, "mlp", benchmark="permuted-digits", tasks=2)  # the MLP has no convolution to reprogram


def test_only_the_active_task_changes(tmp_path: Path) -> None:
    scen = lifelong.load_scenario("digits", tasks=5, val_fraction=0.1)
    m, ctx = lifelong.create_method("clr", scen, device="cpu", epochs=2)
    for task in scen.tasks[:3]:
        ctx.start_task(task.id, task.mean, task.std)
        m.begin_task(TaskMeta.of(task))
        before = {k: v.clone() for k, v in m.state_dict().items()}
        m.fit_task(task, ctx)
        changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
        t = task.id
        if t == 0:  # no published weights: task 1 trains the immutable network, then it is frozen
            assert any(k.endswith("conv.weight") for k in changed) and not any(".kernels." in k for k in changed)
        else:
            own = {k for k in changed if f".kernels.{t}" in k or f".bns.{t}." in k or k.startswith(f"head.heads.{t}.")}
            assert changed == own and any(".kernels." in k for k in own) and any("running_mean" in k for k in own)


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
@pytest.mark.parametrize("bug", ["shared conv weights trainable", "BN shared across tasks"])
def test_a_planted_leak_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    from lifelong.methods.clr import CLR

    if bug == "shared conv weights trainable":
        original = CLR.task_parameters
        monkeypatch.setattr(CLR, "task_parameters", lambda self, t: original(self, t) + self.rp.shared_parameters())
    else:
        def shared_bn(self: TaskBN) -> None:  # every task reuses task 1's BatchNorm (parameters and statistics)
            self.bns.append(self.bns[0] if len(self.bns) else copy.deepcopy(self.base))
        monkeypatch.setattr(TaskBN, "add_task", shared_bn)
    r = run(tmp_path, "bug", tasks=2)
    assert r.metrics["unforgetting_verified"] is False


def test_published_weights_are_never_trained(tmp_path: Path) -> None:
    torch.manual_seed(3)
    published = build_backbone(BackboneConfig(name="convnet"), 1, 8).state_dict()
    torch.save(published, tmp_path / "w.pt")
    r = run(tmp_path, "pub", tasks=2, backbone__weights=str(tmp_path / "w.pt"), select_on="last")
    info = r.metrics["tasks"][0]["info"]
    assert info["immutable"] == f"published weights {tmp_path / 'w.pt'}" and info["trained"] == "CLR kernels, BN, head"
    state = r.method.state_dict()
    for k, v in published.items():
        if k.endswith("weight") and v.dim() == 4:  # conv weights: frozen and shared
            assert torch.equal(state["rp.net." + k.replace("weight", "conv.weight")], v)
    assert r.metrics["unforgetting_verified"] is True and "chosen" not in info


def test_resume_of_a_digits_run_is_exact(tmp_path: Path) -> None:
    full = run(tmp_path, "run", tasks=5, epochs=2)
    (tmp_path / "run" / "checkpoints" / "task-05.pt").unlink()
    (tmp_path / "run" / "checkpoints" / "task-04.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = run(tmp_path, "run", tasks=5, epochs=2, resume=True)
    assert resumed.accuracy == full.accuracy and resumed.metrics["unforgetting_verified"] is True
    assert [t["info"] for t in resumed.metrics["tasks"]] == [t["info"] for t in full.metrics["tasks"]]


def test_dct_layout_order_and_sampling(tmp_path: Path) -> None:
    root = tmp_path / "dct"
    write_image_folder(root / "birds" / "train", ["crow", "owl", "wren"], 4)
    write_image_folder(root / "birds" / "test", ["crow", "owl", "wren", "zebra"], 2)  # no zebra in train: dropped
    write_image_folder(root / "aircraft" / "train", ["a320", "b747"], 5)
    write_image_folder(root / "aircraft" / "val", ["a320", "b747"], 3)
    (root / "notes").mkdir()  # a folder without train/ is not a dataset
    s = lifelong.load_scenario("dct", data_root=root, image_size=16)
    assert [(t.id, t.name, t.class_names, len(t.train), len(t.test)) for t in s.tasks] == \
        [(0, "aircraft", ["a320", "b747"], 10, 6), (1, "birds", ["crow", "owl", "wren"], 12, 6)]
    assert s.tasks[1].test.labels.tolist() == [0, 0, 1, 1, 2, 2] and s.tasks[0].train.shape == (3, 16, 16)
    s = lifelong.load_scenario("dct", data_root=root, image_size=16, datasets=["birds", "aircraft"], val_fraction=0.25)
    assert [t.name for t in s.tasks] == ["birds", "aircraft"] and [len(t.val) for t in s.tasks] == [3, 2]
    (root / "tasks.txt").write_text("# the order\nbirds\n")
    assert [t.name for t in lifelong.load_scenario("dct", data_root=root, image_size=16).tasks] == ["birds"]
    with pytest.raises(DataError, match="missing"):
        lifelong.load_scenario("dct", data_root=root, datasets=["birds", "cars"])
    from lifelong.data.dct import caps

    assert caps(200) == (26, 3) and caps(10) == (256, 26)  # birds: 5,200 / 600 (clr.md 5)
    r = lifelong.run(method="clr", benchmark="dct", data_root=root, backbone="convnet", epochs=1, out=tmp_path / "r",
                     benchmark__image_size=16, benchmark__datasets=["birds", "aircraft"], select_on="test")
    assert r.metrics["unforgetting_verified"] is True and len(r.accuracy) == 2


def test_preset_and_options() -> None:
    from lifelong.config import resolve

    cfg = resolve(config_file=Path(__file__).parent.parent / "configs" / "clr-dct53.yaml")
    hp, b = cfg.hparams, cfg.benchmark_options
    assert (cfg.method, cfg.benchmark, cfg.backbone.name, b.image_size) == ("clr", "dct", "resnet18", 224)
    assert len(b.datasets) == 53 and b.datasets[0] == "scenes" and b.datasets[-1] == "deepvp_shell"
    assert (hp.optimizer, hp.lr, hp.schedule, hp.step_size, hp.epochs, hp.batch_size, hp.penalty, hp.augment) == \
        ("adam", 1e-3, "step", None, 60, 32, 1e-5, False)
    with pytest.raises(ConfigError, match="select_on"):
        resolve("clr", "digits", sets=["select_on=train"])
