"""Progressive nets: columns over any backbone's levels, LASEM's adapter sizes, the CPG table's 563 MB,
frozen earlier columns (with planted leaks), resume, published source column, presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import lifelong
from lifelong.methods.prognn import ProgNN
from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.progressive import ProgressiveNet, backbone_levels
from lifelong.report.footprint import MB, PROGNN_REDUCTION, footprint_table, prognn_laterals

pytestmark = pytest.mark.usefixtures("one_thread", "deterministic")
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("name,ch,size", [("resnet18", 3, 32), ("resnet32", 3, 16), ("vgg16_bn", 3, 32), ("convnet", 1, 8),
                                          ("mlp", 1, 8), ("cnn20", 3, 16), ("lasem_cnn", 3, 32)])
def test_levels_compose_to_forward_and_zero_laterals_give_the_independent_network(name: str, ch: int, size: int) -> None:
    nets = [build_backbone(BackboneConfig(name=name), ch, size).eval() for _ in range(3)]
    x = torch.randn(2, ch, size, size)
    expected = [n(x) for n in nets]
    h = x
    for level in backbone_levels(nets[2]):
        h = level(h)
    assert torch.equal(h.flatten(1), expected[2])
    pnn = ProgressiveNet(2.0)
    for n in nets:
        pnn.add_column(n, (ch, size, size))
    pnn.eval()
    assert [len(a) for a in pnn.laterals[2]] == [0] + [2] * (len(pnn.columns[2].levels) - 1)
    with torch.no_grad():
        assert torch.equal(pnn(x, 0), expected[0])  # column 1 has no laterals
        for adapter in pnn.laterals[2].modules():
            if hasattr(adapter, "u"):
                adapter.u.weight.zero_()
        assert torch.equal(pnn(x, 2), expected[2])  # zeroed laterals: exactly the independent network (pitfall 13)
        assert not torch.equal(pnn(x, 1), expected[1])


def test_lasem_adapters_have_the_codes_sizes() -> None:
    """LASEM CIFAR-100 net (clr.md 6.2): P = 328,426 with a 10-way output; laterals 35.4 k (column 2)
    to 59.8 k (column 10) with s = 1, laterals into conv layers 2..4 only; 3.76 M for 10 columns."""
    lat = prognn_laterals("lasem_cnn", 10, 1.0, [2, 3, 4], 3, 32)
    assert lat[0] == 0 and lat[1] == 35_395 and lat[9] == 59_751
    net = build_backbone(BackboneConfig(name="lasem_cnn", variant="cifar4"), 3, 32)
    column = sum(p.numel() for p in net.parameters()) + 64 * 10 + 10
    assert column == 328_426
    assert round((10 * column + sum(lat)) / 1e6, 2) == 3.76
    assert round((10 * column + sum(lat)) / (10 * column), 2) == 1.15
    half = prognn_laterals("lasem_cnn", 10, 2.0, [2, 3, 4], 3, 32)
    assert round((10 * column + sum(half)) / (10 * column), 2) == 1.07  # dim_reduction_scale 2 (test_type 1)


def test_cpg_fine_grained_table_563_mb() -> None:
    rows = {r.method: r for r in footprint_table("resnet50", [1000, 200, 196, 102, 195, 250])}
    scratch = rows["independent"].paper_bytes
    lat = prognn_laterals("resnet50", 6, PROGNN_REDUCTION)
    assert sum(lat) == 2_298_894 and rows["prognn"].paper_bytes == scratch + 4 * sum(lat)
    assert round(rows["prognn"].paper_bytes / MB) == int(rows["prognn"].paper_bytes / MB) == 563  # CPG README table
    preset = yaml.safe_load((CONFIGS / "prognn-finegrained-resnet50.yaml").read_text())
    assert preset["hparams"]["reduction"] == PROGNN_REDUCTION


def run(tmp_path: Path, name: str, **kw: Any):
    kw = {"method": "prognn", "benchmark": "digits", "tasks": 5, "epochs": 1, **kw}
    return lifelong.run(out=tmp_path / name, **kw)


def test_digits_and_permuted_digits_never_forget(tmp_path: Path) -> None:
    r = run(tmp_path, "d")
    assert r.metrics["unforgetting_verified"] is True and all(f == 0 for f in r.forgetting[:-1])
    infos = [t["info"] for t in r.metrics["tasks"]]
    assert [i["column"] for i in infos] == [1, 2, 3, 4, 5] and infos[0]["lateral_parameters"] == 0
    assert r.footprint["bytes"] == sum(t.numel() * t.element_size() for t in r.method.state_dict().values())
    calc = prognn_laterals("convnet", 5, 1.0, None, 1, 8)
    assert [i["lateral_parameters"] for i in infos] == calc
    p = run(tmp_path, "p", benchmark="permuted-digits", tasks=3, epochs=2)  # the MLP's two levels
    assert p.metrics["unforgetting_verified"] is True and all(f == 0 for f in p.forgetting[:-1])
    assert p.average_accuracy > 0.7


@pytest.mark.parametrize("bug", ["earlier column trained", "old adapters trained", "earlier column in train mode"])
def test_a_planted_leak_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    """Earlier columns are kept out of the optimiser, run without gradient and stay in eval mode; each
    plant removes what protects one part, and the runner's bit-identity check must notice."""
    original = ProgNN.trainable
    if bug != "earlier column in train mode":  # gradient through every column, and an old part in the optimiser
        monkeypatch.setattr(ProgressiveNet, "needs_grad", staticmethod(lambda j, k: True))
    if bug == "earlier column trained":
        monkeypatch.setattr(ProgNN, "trainable", lambda self, t: original(self, t) + ([self.pnn.columns[t - 1]] if t else []))
    elif bug == "old adapters trained":  # column 3's adapters (from columns 1, 2) trained again in task 4
        monkeypatch.setattr(ProgNN, "trainable", lambda self, t: original(self, t) + ([self.pnn.laterals[t - 1]] if t > 2 else []))
    else:  # BatchNorm statistics of every column updated while the newest trains
        monkeypatch.setattr(ProgNN, "train", lambda self, mode=True: torch.nn.Module.train(self, mode))
    r = run(tmp_path, "bug", tasks=5)
    assert r.metrics["unforgetting_verified"] is False


def test_resume_is_exact(tmp_path: Path) -> None:
    full = run(tmp_path, "run", tasks=5)
    for n in (4, 5):
        (tmp_path / "run" / "checkpoints" / f"task-0{n}.pt").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = run(tmp_path, "run", tasks=5, resume=True)
    assert resumed.accuracy == full.accuracy and resumed.metrics["unforgetting_verified"] is True
    assert [t["info"] for t in resumed.metrics["tasks"]] == [t["info"] for t in full.metrics["tasks"]]


def test_published_weights_become_a_frozen_source_column(tmp_path: Path) -> None:
    torch.manual_seed(3)
    published = build_backbone(BackboneConfig(name="convnet"), 1, 8).state_dict()
    torch.save(published, tmp_path / "w.pt")
    r = run(tmp_path, "pub", tasks=2, backbone__weights=str(tmp_path / "w.pt"))
    m = r.method
    assert len(m.pnn.columns) == 3 and [t["info"]["column"] for t in r.metrics["tasks"]] == [2, 3]
    source = {k: v for k, v in m.state_dict().items() if k.startswith("pnn.columns.0.")}
    assert len(source) == len(published)  # the whole published network, as loaded
    assert sorted(v.sum().item() for v in source.values()) == pytest.approx(sorted(v.sum().item() for v in published.values()))
    assert r.metrics["unforgetting_verified"] is True and r.metrics["tasks"][0]["info"]["lateral_parameters"] > 0


def test_lasem_protocol_and_presets(tmp_path: Path) -> None:
    from lifelong.config import resolve

    r = run(tmp_path, "lasem", tasks=2, backbone="lasem_cnn", protocol="lasem", lateral_levels=[2, 3, 4],
            benchmark__val_fraction=0.15)
    info = r.metrics["tasks"][1]["info"]
    assert r.metrics["unforgetting_verified"] is True and info["global_epochs"] == 2 and "peak" in info
    cfg = resolve(config_file=CONFIGS / "prognn-lasem-cifar100.yaml")
    hp = cfg.hparams
    assert (cfg.method, cfg.benchmark, cfg.backbone.name, cfg.backbone.variant) == ("prognn", "cifar100-lasem", "lasem_cnn", "cifar4")
    assert (hp.protocol, hp.optimizer, hp.lr, hp.lr_decay, hp.batch_size, hp.epochs, hp.reduction, hp.lateral_levels) == \
        ("lasem", "rmsprop_tf", 1e-4, 2.5e-4, 10, 2000, 1.0, [2, 3, 4])
    cfg = resolve(config_file=CONFIGS / "prognn-finegrained-resnet50.yaml")
    assert (cfg.backbone.name, cfg.hparams.reduction, cfg.hparams.source_column) == ("resnet50", PROGNN_REDUCTION, True)
    assert cfg.benchmark_options.task_sizes == [200, 196, 102, 195, 250] and cfg.backbone.weights
