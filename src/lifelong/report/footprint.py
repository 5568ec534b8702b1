"""Model size from the architecture alone, as the CPG paper counts it (cpg.md 6), per method.

``footprint_table("resnet50", [1000, 200, 196, 102, 195, 250])`` reproduces the fine-grained
table: Scratch 554.46, PackNet 115.48, Piggyback 121.07, CPG 121.07 MB (MB = 2^20 bytes).

Three numbers per method:

- ``paper``: the papers' convention. fp32 weights; BatchNorm as 4 fp32 values per channel per
  task; fp32 heads; PackNet (and PAE, which stores what PackNet stores: the table is at width 1, so
  without PAE's growth) adds a ceil(log2(T+1))-bit owner index per weight; Piggyback and
  CPG add one bit per weight per task after the first (CPG's 121 MB counts no owner index).
  The paper's "Finetune" stores one fine-tuned network per task, hence Scratch's size.
- ``formula``: what serving really needs by cpg.md 6's general formula; differs from ``paper``
  only for CPG, whose inference needs the owner index as well as the picking masks (pitfall 10).
- ``checkpoint``: the bytes of the state our methods save (``lifelong run``'s checkpoints) at
  width 1: owner index as uint8, masks bit-packed per layer, every task's private state
  (BN incl. its int64 batch counter, biases) plus the working copy, heads; our ``finetune``
  keeps a single shared backbone.

The ``aanets`` row (class-incremental, one cosine head over all ``sum(heads)`` classes) counts
both branches honestly (manets.md 6.11): the stable branch's frozen phase-0 weights, its scales
(one per conv input/output channel pair) and BN, the full plastic branch, one alpha per level; the
released code stores no compensation for the second branch. Exemplars are not counted (as in
every row); ``metrics.json`` adds them for a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.backbones import BackboneConfig, build_backbone
from ..nn.masked import StorageCounts, storage_bytes

MB = 2**20
METHODS = ("independent", "finetune", "packnet", "piggyback", "cpg", "pae", "clr", "clr-full", "prognn", "aanets")


@dataclass
class ArchCounts:
    """Tensor counts of one backbone (no head)."""

    weights: int  # conv + linear weights: the maskable ones
    private: int  # fp32 values of everything else, per task (BN: 4 per channel; biases; ...)
    private_bytes: int  # bytes of everything else as stored (incl. BN's int64 batch counters)
    mask_bytes: int  # one bit-packed mask: sum over layers of ceil(numel / 8)
    backbone_bytes: int  # the whole backbone's state dict
    bn_channels: int
    out_dim: int


@dataclass
class FootprintRow:
    method: str
    paper_bytes: int
    formula_bytes: int
    checkpoint_bytes: int
    note: str

    def mb(self) -> tuple[float, float, float]:
        return self.paper_bytes / MB, self.formula_bytes / MB, self.checkpoint_bytes / MB


def architecture_counts(backbone: str, in_channels: int = 3, image_size: int = 224, width: float = 1.0) -> ArchCounts:
    """Counts of a registered backbone, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        net = build_backbone(BackboneConfig(name=backbone, width=width), in_channels, image_size)
    layers = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    state = net.state_dict()
    weights = sum(state[n].numel() for n in layers)
    others = {n: t for n, t in state.items() if n not in layers}
    return ArchCounts(
        weights=weights,
        private=sum(t.numel() for n, t in others.items() if not n.endswith("num_batches_tracked")),
        private_bytes=sum(t.numel() * t.element_size() for t in others.values()),
        mask_bytes=sum(math.ceil(state[n].numel() / 8) for n in layers),
        backbone_bytes=sum(t.numel() * t.element_size() for t in state.values()),
        bn_channels=sum(m.num_features for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)),
        out_dim=int(net.out_dim),
    )


def dual_branch_counts(backbone: str, in_channels: int = 3, image_size: int = 224) -> tuple[int, int] | None:
    """(scale parameters, levels) an AANets dual-branch network adds to ``backbone`` (manets.md 2.2,
    2.3); None for a backbone without ``levels()`` (no dual-branch form)."""
    from ..nn.dual_branch import scale_count

    with torch.device("meta"):
        net = build_backbone(BackboneConfig(name=backbone), in_channels, image_size)
    if not callable(getattr(net, "levels", None)):
        return None
    return scale_count(net), len(net.levels())


def parse_heads(text: str) -> list[int]:
    """``"1000,200,196"`` -> [1000, 200, 196]; ConfigError for anything else."""
    try:
        heads = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--heads {text!r} must be comma-separated class counts, e.g. 1000,200,196") from None
    if not heads or any(h < 1 for h in heads):
        raise ConfigError(f"--heads {text!r} must list at least one positive class count")
    return heads


def footprint_table(backbone: str, heads: list[int], in_channels: int = 3, image_size: int = 224) -> list[FootprintRow]:
    """One row per method for ``len(heads)`` tasks on ``backbone`` at width 1 (cpg.md 6)."""
    if not heads or any(h < 1 for h in heads):
        raise ConfigError("footprint needs at least one task with a positive number of classes")
    a = architecture_counts(backbone, in_channels, image_size)
    T = len(heads)
    head_params = [(a.out_dim + 1) * c for c in heads]
    H = sum(head_params)

    def counts(picks: list[bool], owner: bool) -> StorageCounts:
        return StorageCounts(a.weights, [a.weights] * T, [a.private] * T, head_params, picks, owner)

    scratch = T * 4 * (a.weights + a.private) + 4 * H
    packnet = storage_bytes(counts([False] * T, owner=True))
    piggyback = storage_bytes(counts([False] + [True] * (T - 1), owner=False))
    cpg_formula = storage_bytes(counts([False] + [True] * (T - 1), owner=True))
    isolated = 4 * a.weights + a.weights + (T + 1) * a.private_bytes + 4 * H  # fp32 weights, uint8 owners
    dual = dual_branch_counts(backbone, in_channels, image_size)
    return [
        FootprintRow("independent", scratch, scratch, T * a.backbone_bytes + 4 * H, "one network per task (Scratch)"),
        FootprintRow("finetune", scratch, scratch, a.backbone_bytes + 4 * H,
                     "paper: one fine-tuned network per task; ours: one shared backbone"),
        FootprintRow("packnet", packnet, packnet, isolated, f"{T} tasks -> {math.ceil(math.log2(T + 1))}-bit owner index"),
        FootprintRow("piggyback", piggyback, piggyback, isolated + (T - 1) * a.mask_bytes, f"{T - 1} one-bit masks"),
        FootprintRow("cpg", piggyback, cpg_formula, isolated + (T - 1) * a.mask_bytes,
                     "paper counts masks only; formula adds the owner index inference needs"),
        FootprintRow("pae", packnet, packnet, isolated,
                     "as packnet at width 1 (owner index, no masks); growing to P multiplies the weights by ~P (Exp)"),
    ] + growth_rows(a, backbone, heads, in_channels, image_size) + ([aanets_row(a, *dual, sum(heads))] if dual else [])


def aanets_row(a: ArchCounts, scales: int, levels: int, classes: int) -> FootprintRow:
    """Two branches + scales + alphas + one cosine head (``classes`` rows and sigma), fp32; the
    checkpoint adds BN batch counters and the alpha-gradient sum buffer (``nn/dual_branch.py``)."""
    head = 4 * (a.out_dim * classes + 1)
    formula = 4 * (2 * (a.weights + a.private) + scales + levels) + head
    checkpoint = 2 * a.backbone_bytes + 4 * scales + 2 * 4 * levels + head
    return FootprintRow("aanets", formula, formula, checkpoint,
                        f"2 branches + {scales:,} scales + {levels} alphas, one head; exemplars extra")


def format_table(backbone: str, heads: list[int], rows: list[FootprintRow]) -> str:
    lines = [f"model size of {backbone} with heads {','.join(map(str, heads))} ({len(heads)} tasks), MB = 2^20 bytes (cpg.md 6)",
             f"{'method':<12} {'paper MB':>10} {'formula MB':>11} {'checkpoint MB':>14}  note"]
    for r in rows:
        p, f, c = r.mb()
        lines.append(f"{r.method:<12} {p:>10.2f} {f:>11.2f} {c:>14.2f}  {r.note}")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLR and progressive nets (clr.md 3, 6)
# CPG's ProgressiveNet (clr.md 6.5): its code is unpublished, so the lateral reduction s is ours, chosen
# so that six ResNet-50 columns and LASEM-style laterals at the stage boundaries come to the table's
# 563 MB (2,298,894 lateral parameters, 8.8 MB). configs/prognn-finegrained-resnet50.yaml uses the same s.
PROGNN_REDUCTION = 6.25


@dataclass
class CLRCounts:
    """Per-task parameters of CLR on a backbone (clr.md 3) and the backbone's own size."""

    kernels: int  # 9 x out-channels of every reprogrammed conv
    bn_params: int  # BN affine (2 per channel)
    bn_stats: int  # BN running mean and variance (2 per channel)
    bn_bytes: int  # the per-task BN state as stored (fp32 statistics and parameters, int64 batch counters)
    backbone: int  # the immutable network's parameters, torchvision's count without its classifier
    out_dim: int

    @property
    def reprogram(self) -> int:
        return self.kernels + self.bn_params + self.bn_stats


def clr_counts(backbone: str, cover_1x1: bool = False, in_channels: int = 3, image_size: int = 224) -> CLRCounts:
    """CLR (or, with ``cover_1x1``, CLR-Full) on ``backbone``, built on the meta device."""
    from ..nn.reprogram import Reprogrammed

    with torch.device("meta"):
        net = build_backbone(BackboneConfig(name=backbone), in_channels, image_size)
        size = sum(p.numel() for p in net.parameters())
        rp = Reprogrammed(net, cover_1x1)
        rp.add_task()
    bns = rp.task_bns(0)
    stats = [b for m in bns for n, b in m.named_buffers() if not n.endswith("num_batches_tracked")]
    return CLRCounts(sum(k.numel() for k in rp.kernels(0)), sum(p.numel() for m in bns for p in m.parameters()),
                     sum(b.numel() for b in stats), sum(t.numel() * t.element_size() for m in bns for t in m.state_dict().values()),
                     size, rp.out_dim)


def prognn_laterals(backbone: str, columns: int, reduction: float = PROGNN_REDUCTION, lateral_levels: list[int] | None = None,
                    in_channels: int = 3, image_size: int = 224) -> list[int]:
    """Lateral parameters of each of ``columns`` columns of a progressive net over ``backbone`` (meta device)."""
    from ..nn.progressive import ProgressiveNet

    with torch.device("meta"):
        pnn = ProgressiveNet(reduction, lateral_levels)
        for _ in range(columns):
            pnn.add_column(build_backbone(BackboneConfig(name=backbone), in_channels, image_size), (in_channels, image_size, image_size))
    return [pnn.lateral_parameters(k) for k in range(columns)]


def growth_rows(a: ArchCounts, backbone: str, heads: list[int], in_channels: int, image_size: int) -> list[FootprintRow]:
    """CLR, CLR-Full (one immutable network + per-task kernels, BN, head) and progressive nets (one column
    per task + laterals), fp32; the ratios are those of clr.md 3 (with fc: a ``heads[0]``-class classifier)."""
    T, H = len(heads), sum((a.out_dim + 1) * c for c in heads)
    rows = []
    for name, full in (("clr", False), ("clr-full", True)):
        c = clr_counts(backbone, full, in_channels, image_size)
        paper = 4 * (a.weights + a.private) + 4 * (T * c.reprogram + H)
        checkpoint = a.backbone_bytes + T * (4 * c.kernels + c.bn_bytes) + 4 * H
        fc = c.backbone + (c.out_dim + 1) * heads[0]
        note = (f"per task {c.kernels:,} kernels + {c.bn_params:,} BN + {c.bn_stats:,} stats = {c.reprogram:,} "
                f"({100 * c.reprogram / c.backbone:.3f}% w/o fc, {100 * c.reprogram / fc:.3f}% with) + head")
        rows.append(FootprintRow(name, paper, paper, checkpoint, note if c.kernels else "no convolution to reprogram"))
    try:
        lat = sum(prognn_laterals(backbone, T, PROGNN_REDUCTION, None, in_channels, image_size))
    except ConfigError:  # a backbone without levels
        return rows
    scratch = T * 4 * (a.weights + a.private) + 4 * H
    rows.append(FootprintRow("prognn", scratch + 4 * lat, scratch + 4 * lat, T * a.backbone_bytes + 4 * lat + 4 * H,
                             f"{T} columns + {lat:,} lateral parameters (s = {PROGNN_REDUCTION})"))
    return rows
