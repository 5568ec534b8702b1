"""Exemplar memory for class-incremental replay (iCaRL, LUCIR, BiC).

Three small pieces, shared by the replay methods:

- a **budget policy** (``Budget``): a fixed total split evenly over the seen classes
  (iCaRL/BiC's 2,000 on CIFAR-100, manets.md 1.3 "fixed") or a fixed number per class
  (LUCIR's and the ImageNet presets' 20/class, manets.md 1.3 "dynamic");
- a **selection strategy**: ``herding`` (iCaRL's greedy mean matching, manets.md 1.3 and
  bic.md 1.2) or ``random_selection`` (the usual baseline);
- the **store** (``ExemplarMemory``): uint8 images and labels as buffers whose size
  changes from task to task; they travel in ``state_dict`` and load back whatever their
  size (``ResizableBuffers``), and stay on the CPU where the loop reads batches.

Also here: nearest-mean-of-exemplars helpers (class means, NME scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..errors import ConfigError

BUDGETS = ("total", "per_class")
SELECTIONS = ("herding", "random")


# ---------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """How many exemplars a class may keep once ``n`` classes have been seen.

    ``total``: ``size`` images shared by all seen classes, ``floor(size / n)`` each, so the
    budget is never exceeded (the AANets code uses ``ceil(2000 / n)``, which stores 2,040 at
    60 classes, manets.md 1.3; iCaRL's ``m = K / t`` is the floor used here).
    ``per_class``: ``size`` images per class; memory grows with the classes.
    """

    kind: str
    size: int

    def __post_init__(self) -> None:
        if self.kind not in BUDGETS:
            raise ConfigError(f"budget {self.kind!r} is not one of {', '.join(BUDGETS)}")
        if self.size < 0:
            raise ConfigError(f"memory must be >= 0, got {self.size}")

    def share(self, n_classes: int) -> float:
        """The exact (possibly fractional) per-class share with ``n_classes`` seen."""
        if self.kind == "per_class":
            return float(self.size)
        return self.size / max(1, n_classes)

    def per_class(self, n_classes: int) -> int:
        return int(math.floor(self.share(n_classes)))

    def capacity(self, n_classes: int) -> int:
        """The most images the memory may hold with ``n_classes`` seen."""
        return self.size if self.kind == "total" else self.size * n_classes

    def require(self, n_classes: int, at_least: int = 1, who: str = "") -> None:
        """Raise a ``ConfigError`` when a class would get fewer than ``at_least`` exemplars."""
        if self.per_class(n_classes) < at_least:
            raise ConfigError(
                f"{who + ': ' if who else ''}memory {self.size} ({self.kind}) leaves "
                f"{self.per_class(n_classes)} exemplar(s) per class for {n_classes} classes; "
                f"it needs at least {at_least} per class (raise --memory)")


# ---------------------------------------------------------------------------- selection
def herding(features: torch.Tensor, m: int, normalize: bool = True) -> torch.Tensor:
    """Greedy mean matching (iCaRL Alg. 4): the k-th pick minimises ``||mu - (S + f_x) / k||``,
    ``S`` the sum of the previous picks, over samples not yet picked. Returns indices in pick order.

    ``normalize``: L2-normalise features first (iCaRL, manets.md 1.3; with unit features this is
    the AANets code's ``argmax <w, f>``, ``w += mu - f`` rule); BiC's code herds raw features
    (bic.md 1.2). Unlike the AANets code, a sample is never picked twice (that code re-picks and
    silently skips, so it can stop short of the quota).
    """
    n = features.shape[0]
    m = min(int(m), n)
    if m <= 0:
        return torch.zeros(0, dtype=torch.long)
    f = features.detach().to(torch.float64)
    if normalize:
        f = F.normalize(f, dim=1)
    # ||mu - (S + f_x)/k||^2 = (||f_x||^2 - 2 <f_x, k mu - S>) / k^2 + const: one matrix-vector product
    # per pick over the features where they live (the device), instead of an (n, d) temporary.
    mu = f.mean(0)
    sq = (f * f).sum(1)
    running = torch.zeros_like(mu)
    free = torch.ones(n, dtype=torch.bool, device=f.device)
    picks = torch.empty(m, dtype=torch.long, device=f.device)
    inf = torch.tensor(float("inf"), dtype=f.dtype, device=f.device)
    for k in range(1, m + 1):
        score = torch.where(free, sq - 2.0 * (f @ (k * mu - running)), inf)
        i = torch.argmin(score)
        picks[k - 1] = i
        free[i] = False
        running += f[i]
    return picks.cpu()


def random_selection(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """``m`` distinct indices of ``n``, in random order (the baseline strategy)."""
    return torch.randperm(n, generator=gen)[: max(0, min(m, n))]


def select(strategy: str, features: Callable[[], torch.Tensor], n: int, m: int, gen: torch.Generator,
           normalize: bool = True) -> torch.Tensor:
    """Indices (in priority order) of ``m`` exemplars among ``n`` candidates; ``features`` is only
    computed for herding."""
    if strategy == "herding":
        return herding(features(), m, normalize)
    if strategy == "random":
        return random_selection(n, m, gen)
    raise ConfigError(f"selection {strategy!r} is not one of {', '.join(SELECTIONS)}")


# ---------------------------------------------------------------------------- the store
class ResizableBuffers(nn.Module):
    """A module whose buffers change size between tasks: ``load_state_dict`` first resizes each
    buffer to the saved tensor's shape, so a checkpoint of any step loads into a fresh module."""

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty(state_dict[key].shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ExemplarMemory(ResizableBuffers):
    """Exemplars as uint8 images ``(N, C, H, W)`` and labels, grouped by class in priority order
    (the first ``m`` of a class are its best ``m``, so shrinking keeps a prefix).

    Kept on the CPU whatever device the method moves to: the loop reads batches from CPU
    tensors (and pins them) before moving them to the device.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))

    def _apply(self, fn: Any, recurse: bool = True) -> "ExemplarMemory":  # type: ignore[override]
        return self  # stays on the CPU, uint8 (see class docstring)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def classes(self) -> list[int]:
        return sorted(set(self.labels.tolist()))

    def counts(self) -> dict[int, int]:
        return {c: int((self.labels == c).sum()) for c in self.classes()}

    def data(self, class_names: list[str] | None = None) -> ImageSet:
        """All exemplars as an ImageSet (class order, priority order within a class)."""
        return ImageSet(self.images, self.labels, None, class_names or [])

    def of_class(self, c: int) -> ImageSet:
        return self.data().subset(torch.nonzero(self.labels == c).flatten())

    def replace(self, per_class: dict[int, tuple[torch.Tensor, int]]) -> None:
        """Set the exemplars of some classes (``{label: (uint8 images in priority order, label)}``);
        other classes are kept as they are."""
        keep = {c: self.of_class(c).images for c in self.classes() if c not in per_class}
        keep.update({c: imgs for c, (imgs, _) in per_class.items()})
        self._store(keep)

    def truncate(self, m: int | dict[int, int]) -> None:
        """Keep the first ``m`` (or ``m[c]``) exemplars of every class."""
        limit = (lambda c: m) if isinstance(m, int) else (lambda c: m.get(c, 0))  # type: ignore[union-attr]
        self._store({c: self.of_class(c).images[: max(0, limit(c))] for c in self.classes()})

    def _store(self, per_class: dict[int, torch.Tensor]) -> None:
        parts = [(c, imgs) for c, imgs in sorted(per_class.items()) if len(imgs)]
        if not parts:
            self.images = torch.zeros(0, dtype=torch.uint8)
            self.labels = torch.zeros(0, dtype=torch.long)
            return
        self.images = torch.cat([torch.as_tensor(imgs, dtype=torch.uint8).cpu() for _, imgs in parts]).contiguous()
        self.labels = torch.cat([torch.full((len(imgs),), c, dtype=torch.long) for c, imgs in parts])

    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()


# ---------------------------------------------------------------------------- nearest mean of exemplars
class ClassMeans(ResizableBuffers):
    """Unit-norm class means ``(classes, dim)`` for the nearest-mean-of-exemplars classifier."""

    means: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(0, 0))

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine of the normalised feature to each mean: ranks classes exactly as iCaRL's
        ``argmin ||phi(x) - mu_c||`` with unit phi and mu (and as the AANets code's distance to
        unit means from raw features, manets.md 1.4)."""
        return F.normalize(features, dim=1) @ self.means.to(features.dtype).t()


@torch.no_grad()
def class_means(ctx: Any, features: Callable[[torch.Tensor], torch.Tensor], memory: ExemplarMemory, n_classes: int,
                flip: bool) -> torch.Tensor:
    """``mu_c = normalise(mean_x (normalise f(x) [+ normalise f(flip x)] / 2))`` over the exemplars of
    each class (iCaRL; manets.md 1.3). ``flip``: average with the horizontally flipped image, as
    iCaRL does on CIFAR; the AANets/LUCIR code reverses colour channels instead (pitfall 6.6) -
    we flip, as intended. A class without exemplars gets a zero mean (never the nearest)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features(x), dim=1)
        if flip:
            f = (f + F.normalize(features(x.flip(3)), dim=1)) / 2
        return f

    feats = ctx.outputs(fn, memory.data())
    dim = feats.shape[1] if len(feats) else 0
    out = torch.zeros(n_classes, dim)
    for c in range(n_classes):
        sel = memory.labels == c
        if sel.any():
            out[c] = F.normalize(feats[sel].mean(0), dim=0)
    return out


@torch.no_grad()
def new_class_means(ctx: Any, backbone: nn.Module, data: Any, classes: range) -> torch.Tensor:
    """Unit-length mean of the L2-normalised features of each class in ``classes`` (test transform):
    the weight-imprinting rows of LUCIR's cosine head (manets.md 2.6). Callers set eval mode."""
    unit = lambda x: F.normalize(backbone(x), dim=1)  # noqa: E731
    return torch.stack([F.normalize(ctx.outputs(unit, data.subset(indices_of(data.labels, c))).mean(0), dim=0)
                        for c in classes])


def indices_of(labels: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nonzero(labels == c).flatten()


@torch.no_grad()
def add_exemplars(ctx: Any, memory: ExemplarMemory, features: Callable[[torch.Tensor], torch.Tensor], data: Any,
                  classes: list[int], m: int, strategy: str, gen: torch.Generator, normalize: bool = True) -> None:
    """Select ``m`` exemplars for each label in ``classes`` among its rows of ``data`` and store them
    (replacing what the memory held for those labels). The caller puts the network in eval mode:
    features are test-transformed (manets.md 1.2, bic.md 1.2)."""
    chosen: dict[int, tuple[torch.Tensor, int]] = {}
    for c in classes:
        rows = data.subset(indices_of(data.labels, c))
        order = select(strategy, lambda: ctx.outputs(features, rows), len(rows), m, gen, normalize)
        chosen[c] = (torch.as_tensor(rows.batch_images(order)) if len(order) else torch.zeros(0, dtype=torch.uint8), c)
    memory.replace(chosen)


class NearestMeanClassifiers:
    """What iCaRL, LUCIR and AANets share around their exemplars: ``predict`` gives the classifier
    named by ``config.classifier`` (``nme``: nearest mean of exemplars; ``cnn``: the network's head),
    ``predict_variants`` the other, from one feature pass; the budget is checked for the whole
    stream before training; ``memory_size`` counts the stored exemplars. A mixin for ``Method``
    subclasses with ``features(x)``, ``head``, ``means``, ``memory`` and ``budget``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _classify(self, x: torch.Tensor, which: str) -> torch.Tensor:
        feats = self.features(x)
        return self.means.scores(feats) if which == "nme" else self.head(feats)  # type: ignore[attr-defined]

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self._classify(x, self.config.classifier)  # type: ignore[attr-defined]

    def predict_variants(self, x: torch.Tensor, task_id: int | None = None) -> dict[str, torch.Tensor]:
        other = "cnn" if self.config.classifier == "nme" else "nme"  # type: ignore[attr-defined]
        return {other: self._classify(x, other)}

    def check_stream(self, tasks: list[Any]) -> None:
        self.budget.require(sum(t.num_classes for t in tasks), 1, self.name)  # type: ignore[attr-defined]

    def memory_size(self) -> int | None:
        return len(self.memory)  # type: ignore[attr-defined]


def replay_footprint(network: list[nn.Module], memories: list[ExemplarMemory], chunks: list[nn.Module], note: str) -> Any:
    """Parameters and fp32 bytes of the network plus the exemplars' uint8 bytes (they must be
    stored to keep learning); per task: the task's head chunk."""
    from .base import Footprint, module_bytes, module_params

    params = sum(module_params(m) for m in network)
    nbytes = sum(module_bytes(m) for m in network) + sum(mem.nbytes() for mem in memories)
    return Footprint(params, nbytes, [module_bytes(c) for c in chunks], note)


# ---------------------------------------------------------------------------- reservoir sampling (ER)
def reservoir_sample(kept: int, seen: int, n_new: int, capacity: int, gen: torch.Generator) -> torch.Tensor:
    """Vitter's Algorithm R (Vitter 1985, "Random sampling with a reservoir") continued over ``n_new``
    more stream items, as ER keeps its buffer (Chaudhry et al. 2019, "On Tiny Episodic Memories").

    The reservoir holds ``kept`` items (ids ``0..kept-1``) drawn from the first ``seen`` items of the
    stream; new item ``r`` has id ``kept + r`` and stream position ``i = seen + r`` (0-based). A new
    item fills a free slot while there is one (a class-balanced truncation may have freed some);
    otherwise ``j`` is drawn uniformly from ``0..i`` and the item replaces slot ``j`` when
    ``j < capacity`` - with no truncation, every item seen so far is in the reservoir with
    probability ``capacity / (i + 1)``. Returns the ids in slot order. One uniform draw per new
    item, all from ``gen``, so a resumed run draws the same reservoir.
    """
    if kept > capacity:
        raise ValueError(f"a reservoir of capacity {capacity} cannot hold {kept} items")
    slots = list(range(kept))
    draws = torch.rand(n_new, generator=gen, dtype=torch.float64).tolist()
    for r, u in enumerate(draws):
        if len(slots) < capacity:
            slots.append(kept + r)
            continue
        j = int(u * (seen + r + 1))
        if j < capacity:
            slots[j] = kept + r
    return torch.tensor(slots, dtype=torch.long)


def first_per_class(labels: torch.Tensor, m: int) -> torch.Tensor:
    """Positions (in order) of at most the first ``m`` entries of each label: the class-balanced
    truncation ER applies to its reservoir, so no class holds more than the budget's per-class share."""
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        keep[torch.nonzero(labels == c).flatten()[: max(0, m)]] = True
    return torch.nonzero(keep).flatten()
