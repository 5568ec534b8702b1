"""Parameter isolation over any backbone: owner masks, picking masks, per-task private state, growth.

Shared by PackNet, Piggyback and CPG (``docs/methods/isolation.md``; the spec is cpg.md).

``MaskedBackbone`` wraps a backbone built by the registry. Every ``nn.Conv2d`` / ``nn.Linear``
weight is *maskable*: it carries an integer owner per weight (cpg.md 4.1; 0 = free, ``v`` =
owned by the task whose owner id is ``v``). Every other tensor of the backbone (BatchNorm
affine parameters and running statistics, conv/linear biases, PReLU slopes, ...) is *private*:
the backbone's own modules hold the working copy the current task trains, and a copy is
stored per task when it finishes (cpg.md 4.7) and substituted back at inference.

The forward pass is functional (``torch.func.functional_call``): the backbone's modules run
with effective weights substituted, so no layer class is replaced and any registered
backbone works. For task ``k`` (cpg.md 5):

    W_k = where((owner == v_k) | (1 <= owner < v_k) & pick_k, W, 0)

with ``pick_k`` the task's binarised picking mask (all ones when the task has none, as in
PackNet). Finished tasks run at their own width: the grown tensors are cropped to the
shapes the task had (cpg.md 5, pitfall 15), so their compute graph and bits never change;
their effective weights are built with ``torch.where`` (masked entries are +0.0 whatever the
stored value) and cached while nothing changes.

The task being trained computes the same weights as ``W·own + W_earlier·bin(pick)``: its own
entries carry the gradient, the earlier owners' entries come from a detached copy (so their
gradient, and any optimiser state for them, is exactly zero: cpg.md pitfall 4 by construction
rather than by zeroing gradients in a hook), and the picking mask gets the straight-through
gradient ``dL/dW_eff · W``. Products of cached masks keep this to a few passes over the weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from ..errors import ConfigError

PICK_INIT = 0.01  # cpg.md 4.1 / 7.2: real-valued masks start at 1e-2 ...
PICK_THRESHOLD = 5e-3  # ... and binarise to 1 where > 5e-3 (the layers' default; the CLI value is never used)
_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


# --------------------------------------------------------------------------- masks
class _BinarizeSTE(torch.autograd.Function):
    """Forward: 1 where ``real > threshold`` else 0. Backward: the gradient passes unchanged
    (straight-through estimator, cpg.md 4.1), so dL/dpick = dL/dW_eff * W."""

    @staticmethod
    def forward(ctx: Any, real: torch.Tensor, threshold: float) -> torch.Tensor:  # type: ignore[override]
        return (real > threshold).to(real.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def binarize(real: torch.Tensor, threshold: float = PICK_THRESHOLD) -> torch.Tensor:
    """Binary mask of a real-valued picking mask with a straight-through gradient."""
    return _BinarizeSTE.apply(real, threshold)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as ``ceil(n/8)`` uint8 bytes (little-endian bits): 1 bit per weight on disk."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * w).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_bits``: a bool tensor of ``shape``."""
    n = math.prod(shape)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[:, None] >> shifts) & 1
    return bits.reshape(-1)[:n].view(tuple(shape)).bool()


def crop(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The top-left corner ``t[:s0, :s1, ...]`` (a view): a grown tensor at an older width."""
    return t[tuple(slice(0, s) for s in shape)]


def corner_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into the top-left corner of the larger ``dst`` (cpg.md 4.4)."""
    if dst.dim() != src.dim() or any(d < s for d, s in zip(dst.shape, src.shape)):
        raise ConfigError(f"cannot grow a tensor of shape {tuple(src.shape)} into {tuple(dst.shape)}")
    with torch.no_grad():
        crop(dst, src.shape).copy_(src)


def _key(name: str) -> str:
    return name.replace(".", "__")


class TensorStore(nn.Module):
    """Named tensors kept as buffers (so they live in ``state_dict`` and move with ``.to``)."""

    def put(self, name: str, t: torch.Tensor) -> None:
        key = _key(name)
        if key in self._buffers:
            self._buffers[key] = t
        else:
            self.register_buffer(key, t)

    def get(self, name: str) -> torch.Tensor:
        return self._buffers[_key(name)]  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        return _key(name) in self._buffers


def is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------- storage formula
@dataclass
class StorageCounts:
    """What an isolation model stores, in units the papers count (cpg.md 6)."""

    final_weights: int  # maskable (conv/linear) weights at the final width
    task_weights: list[int]  # maskable weights at each task's own width
    private: list[int]  # per task: fp32 values of private state (BN: 4 per channel; biases)
    heads: list[int]  # per task: head parameters (weights + bias)
    picks: list[bool]  # whether the task stores a 1-bit picking mask
    owner_index: bool  # whether an owner index per weight is stored


def owner_bits(num_tasks: int) -> int:
    """Bits per weight of the owner index: values 0 (free) .. T, i.e. ceil(log2(T + 1)) (cpg.md 6)."""
    return max(1, math.ceil(math.log2(num_tasks + 1)))


def storage_bytes(c: StorageCounts) -> int:
    """cpg.md 6's general formula: ``4·N_w(final) + Σ_t 4·(private_t + head_t)
    [+ owner_bits·N_w/8] + Σ_{t with a mask} N_w(m_t)/8`` bytes."""
    T = len(c.private)
    total = 4 * c.final_weights + 4 * (sum(c.private) + sum(c.heads))
    if c.owner_index and T:
        total += math.ceil(owner_bits(T) * c.final_weights / 8)
    total += sum(math.ceil(w / 8) for w, p in zip(c.task_weights, c.picks) if p)
    return total


# --------------------------------------------------------------------------- the wrapper
class MaskedBackbone(nn.Module):
    """A backbone whose conv/linear weights are owned per task and picked per task.

    ``base=1`` marks every weight as owned by a frozen "pretrained" owner 1 that no task
    trains (Piggyback on a published backbone); task ``t`` then has owner id ``t + 1 + base``.
    """

    def __init__(self, net: nn.Module, factory: Callable[..., nn.Module] | None = None, base: int = 0,
                 pick_init: float = PICK_INIT, threshold: float = PICK_THRESHOLD) -> None:
        super().__init__()
        self.net = net
        self._factory = factory
        self.base = base
        self.pick_init = pick_init
        self.threshold = threshold
        self.layers = [f"{n}.weight" if n else "weight" for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not self.layers:
            raise ConfigError(f"backbone {type(net).__name__} has no Conv2d or Linear layer to mask")
        state = net.state_dict(keep_vars=True)
        self.private = [n for n in state if n not in set(self.layers)]
        self.owners = TensorStore()
        for name in self.layers:
            self.owners.put(name, torch.full_like(state[name], base, dtype=torch.uint8, requires_grad=False))
        self.stores = nn.ModuleList()  # one TensorStore per finished task
        self.widths: list[float] = []  # channel multiplier of each finished task
        self.has_pick: list[bool] = []
        self.width = 1.0
        self.picks: nn.ParameterList | None = None  # the current task's real-valued picking masks
        self.pick_frozen = False  # use the picks but give them no gradient (CPG's mask lr x0, prune steps)
        self._shapes: dict[float, dict[str, torch.Size]] = {1.0: {n: t.shape for n, t in state.items()}}
        self._out_dims: dict[float, int] = {1.0: int(getattr(net, "out_dim"))}
        self._cache: tuple[Any, dict[str, torch.Tensor]] | None = None
        self._mask_cache: tuple[Any, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None

    # ------------------------------------------------------------------ access
    def owner_id(self, task: int) -> int:
        v = task + 1 + self.base
        if v > 255:
            raise ConfigError("owner masks are uint8: at most 254 tasks")
        return v

    def tensors(self) -> dict[str, torch.Tensor]:
        """The backbone's own parameters and buffers (the current task's working copy)."""
        return self.net.state_dict(keep_vars=True)

    def weight(self, layer: str) -> torch.Tensor:
        return self.net.get_parameter(layer)

    def owner(self, layer: str) -> torch.Tensor:
        return self.owners.get(layer)

    def private_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n not in set(self.layers)]

    def owned_weights(self, task: int) -> list[nn.Parameter]:
        """Weight tensors in which ``task`` owns at least one entry (what its optimiser updates)."""
        v = self.owner_id(task)
        return [self.weight(n) for n in self.layers if bool((self.owner(n) == v).any())]

    @property
    def out_dim(self) -> int:
        return self._out_dims[self.width]

    def out_dim_at(self, width: float) -> int:
        self.shapes_at(width)
        return self._out_dims[width]

    def shapes_at(self, width: float) -> dict[str, torch.Size]:
        """Every tensor's shape at a channel multiplier (built once per width and cached)."""
        if width not in self._shapes:
            net = self._make(width)
            self._shapes[width] = {n: t.shape for n, t in net.state_dict().items()}
            self._out_dims[width] = int(getattr(net, "out_dim"))
        return self._shapes[width]

    def _make(self, width: float) -> nn.Module:
        if self._factory is None:
            raise ConfigError("this backbone was given without a factory, so it cannot grow")
        try:
            return self._factory(width=width)
        except TypeError:
            raise ConfigError("the backbone factory takes no width argument, so the network cannot grow") from None

    # ------------------------------------------------------------------ ownership
    def claim_free(self, task: int) -> int:
        """Give every free weight to ``task`` (cpg.md 4.2 ``owner[owner==0] = t``); returns how many."""
        v, n = self.owner_id(task), 0
        with torch.no_grad():
            for name in self.layers:
                o = self.owner(name)
                free = o == 0
                n += int(free.sum())
                o[free] = v
        return n

    def count(self, task: int) -> dict[str, int]:
        """Weights owned by ``task``, by earlier owners, and free, over the current width."""
        v = self.owner_id(task)
        own = old = free = total = 0
        for name in self.layers:
            o = self.owner(name)
            own += int((o == v).sum())
            old += int(((o >= 1) & (o < v)).sum())
            free += int((o == 0).sum())
            total += o.numel()
        return {"owned": own, "earlier": old, "free": free, "total": total}

    def release(self, layer: str, which: torch.Tensor) -> None:
        """Free the selected weights (owner 0) and zero them at once (pitfall 3: no stale values)."""
        with torch.no_grad():
            self.owner(layer)[which] = 0
            self.weight(layer)[which] = 0.0

    def zero_free(self) -> None:
        """Re-zero free weights after an optimiser step (momentum can still move a just-pruned weight)."""
        cached = self._mask_cache[1] if self._mask_cache is not None and self._mask_cache[0][1] == id(self.net) else None
        with torch.no_grad():
            for i, name in enumerate(self.layers):
                o = self.owner(name)
                free = cached[i][2] if cached is not None and self._mask_cache[0][2][i] == (id(o), o._version) else o == 0
                self.weight(name).masked_fill_(free, 0.0)

    # ------------------------------------------------------------------ picking
    def start_picking(self, task: int) -> nn.ParameterList:
        """Real-valued picking masks over every maskable weight, all ``pick_init`` (cpg.md 4.1)."""
        self.picks = nn.ParameterList([nn.Parameter(torch.full_like(self.weight(n), self.pick_init, requires_grad=True))
                                       for n in self.layers])
        self.pick_frozen = False
        return self.picks

    def reset_picks(self) -> None:
        """Back to ``pick_init`` everywhere (CPG's retrain step, cpg.md 4.6)."""
        assert self.picks is not None
        with torch.no_grad():
            for p in self.picks:
                p.fill_(self.pick_init)

    # ------------------------------------------------------------------ forward
    def _owner_masks(self, task: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer, for the task being trained: its own entries as a float 0/1 mask, the earlier
        owners' weights (a detached copy, zero elsewhere), and the free entries (bool). Cached until
        an owner mask or the network changes: earlier owners' weights cannot change meanwhile."""
        key = (task, id(self.net), tuple((id(o), o._version) for o in (self.owner(n) for n in self.layers)))
        if self._mask_cache is None or self._mask_cache[0] != key:
            v = self.owner_id(task)
            masks = []
            with torch.no_grad():
                for n in self.layers:
                    o, w = self.owner(n), self.weight(n)
                    masks.append(((o == v).to(w.dtype), torch.where((o >= 1) & (o < v), w, 0.0), o == 0))
            self._mask_cache = (key, masks)
        return self._mask_cache[1]

    def _current_weights(self, task: int) -> dict[str, torch.Tensor]:
        """Effective weights of the task being trained, ``W·own + W_earlier·bin(pick)``: its own entries
        carry the gradient; earlier owners' entries are a detached copy (never updated) gated by the
        picking mask (STE). Products rather than ``where`` keep it to a few passes over the weights."""
        out: dict[str, torch.Tensor] = {}
        for i, (name, (mine, earlier, _)) in enumerate(zip(self.layers, self._owner_masks(task))):
            w = self.weight(name)
            if self.picks is not None:
                p = self.picks[i]
                out[name] = w * mine + earlier * binarize(p.detach() if self.pick_frozen else p, self.threshold)
            else:
                out[name] = w * mine + earlier
        return out

    def own_mask(self, task: int, layer: int) -> torch.Tensor:
        """Float 0/1 mask of the entries of ``self.layers[layer]`` owned by ``task`` (cached)."""
        return self._owner_masks(task)[layer][0]

    def _finished_tensors(self, task: int) -> dict[str, torch.Tensor]:
        """Everything task ``task`` (finished) computes with, at its own width, from its store."""
        key = (task, id(self.net), tuple((id(t), t._version) for n in self.layers
                                         for t in (self.weight(n), self.owner(n))))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        shapes = self.shapes_at(self.widths[task])
        store: TensorStore = self.stores[task]  # type: ignore[assignment]
        v = self.owner_id(task)
        out = {n: store.get(n) for n in self.private}
        with torch.no_grad():
            for name in self.layers:
                shape = shapes[name]
                w, o = crop(self.weight(name), shape), crop(self.owner(name), shape)
                use = o == v
                old = (o >= 1) & (o < v)
                if self.has_pick[task]:
                    old &= unpack_bits(store.get("pick." + name), shape)
                out[name] = torch.where(use | old, w, 0.0).contiguous()
        self._cache = (key, out)
        return out

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task < len(self.stores):
            tensors = self._finished_tensors(task)
            if self.net.training:  # a finished task's BN statistics are never updated
                self.net.eval()
                try:
                    return functional_call(self.net, tensors, (x,))
                finally:
                    self.net.train()
            return functional_call(self.net, tensors, (x,))
        return functional_call(self.net, self._current_weights(task), (x,), strict=False)

    # ------------------------------------------------------------------ task end
    def finish_task(self, task: int) -> None:
        """Store the task's private state (and binarised picking mask, 1 bit per weight)."""
        if task != len(self.stores):
            raise RuntimeError(f"finishing task {task} but {len(self.stores)} tasks are stored")
        store = TensorStore()
        state = self.tensors()
        for n in self.private:
            store.put(n, state[n].detach().clone())
        if self.picks is not None:
            for name, p in zip(self.layers, self.picks):
                store.put("pick." + name, pack_bits(p.detach() > self.threshold))
        self.stores.append(store)
        self.widths.append(self.width)
        self.has_pick.append(self.picks is not None)
        self.picks = None
        self.pick_frozen = False
        self._cache = None

    def picked_fraction(self, task: int) -> float | None:
        """Fraction of earlier owners' weights (at the task's width) the task reuses; None without picking."""
        v = self.owner_id(task)
        shapes = self.shapes_at(self.widths[task]) if task < len(self.stores) else None
        if task < len(self.stores) and not self.has_pick[task]:
            return None
        if task >= len(self.stores) and self.picks is None:
            return None
        picked = old_n = 0
        for i, name in enumerate(self.layers):
            o = self.owner(name) if shapes is None else crop(self.owner(name), shapes[name])
            old = (o >= 1) & (o < v)
            if shapes is None:
                bits = self.picks[i].detach() > self.threshold  # type: ignore[index]
            else:
                bits = unpack_bits(self.stores[task].get("pick." + name), shapes[name])  # type: ignore[operator]
            picked += int((old & bits).sum())
            old_n += int(old.sum())
        return picked / old_n if old_n else 0.0

    # ------------------------------------------------------------------ growth
    def grow(self, width: float) -> None:
        """Rebuild the backbone at a larger channel multiplier with every old tensor in the corner
        (cpg.md 4.4): new rows/columns keep the fresh init and are free (owner 0); new BN channels
        start at (1, 0, 0, 1). Stored tasks keep their widths and are cropped at inference."""
        if width == self.width:
            return
        new = self._make(width)
        old = self.tensors()
        for n, t in new.state_dict(keep_vars=True).items():
            corner_copy(t, old[n].detach())
        for name in self.layers:
            o = torch.zeros(new.get_parameter(name).shape, dtype=torch.uint8, device=self.owner(name).device)
            corner_copy(o, self.owner(name))
            self.owners.put(name, o)
        self.net = new
        self.width = width
        self._shapes[width] = {n: t.shape for n, t in new.state_dict().items()}
        self._out_dims[width] = int(getattr(new, "out_dim"))
        self._cache = None

    def rebuild(self, width: float, widths: list[float], has_pick: list[bool]) -> None:
        """Recreate shapes and stores from recorded structure (values come from ``load_state_dict``)."""
        if width != self.width:
            self.net = self._make(width)
            self.width = width
            self._shapes[width] = {n: t.shape for n, t in self.net.state_dict().items()}
            self._out_dims[width] = int(getattr(self.net, "out_dim"))
            for name in self.layers:
                self.owners.put(name, torch.zeros(self.weight(name).shape, dtype=torch.uint8, device=self.weight(name).device))
        state = self.tensors()
        self.stores = nn.ModuleList()
        for w, picked in zip(widths, has_pick):
            shapes = self.shapes_at(w)
            store = TensorStore()
            for n in self.private:
                store.put(n, torch.zeros(shapes[n], dtype=state[n].dtype, device=state[n].device))
            if picked:
                for name in self.layers:
                    store.put("pick." + name, torch.zeros(math.ceil(math.prod(shapes[name]) / 8), dtype=torch.uint8,
                                                         device=state[name].device))
            self.stores.append(store)
        self.widths = list(widths)
        self.has_pick = list(has_pick)
        self._cache = None

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        """A copy of everything a task's training can change (weights, owners, private state, picks)."""
        return {"net": copy.deepcopy(self.net), "width": self.width,
                "owners": {n: self.owner(n).clone() for n in self.layers},
                "picks": None if self.picks is None else [p.detach().clone() for p in self.picks]}

    def restore(self, snap: dict[str, Any]) -> None:
        self.net = copy.deepcopy(snap["net"])
        self.width = snap["width"]
        for n, o in snap["owners"].items():
            self.owners.put(n, o.clone())
        self.picks = None if snap["picks"] is None else nn.ParameterList(
            [nn.Parameter(p.clone(), requires_grad=True) for p in snap["picks"]])
        self._cache = None

    def frozen_values(self, task: int) -> list[tuple[str, torch.Size, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Entries owned before ``task`` (positions, owners, values), to prove later they never changed."""
        v = self.owner_id(task)
        out = []
        for name in self.layers:
            o = self.owner(name)
            sel = (o >= 1) & (o < v)
            out.append((name, o.shape, sel.clone(), o[sel].clone(), self.weight(name).detach()[sel].clone()))
        return out

    def assert_unchanged(self, frozen: list[tuple[str, torch.Size, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Raise if any weight owned by an earlier task changed value or owner (cpg.md pitfall 4)."""
        for name, shape, sel, owners, values in frozen:
            w = crop(self.weight(name).detach(), shape)
            o = crop(self.owner(name), shape)
            if not (torch.equal(o[sel], owners) and torch.equal(w[sel], values)):
                raise RuntimeError(f"weights of {name} owned by an earlier task changed; isolation is broken")

    # ------------------------------------------------------------------ accounting
    def storage_counts(self, heads: list[int], owner_index: bool) -> StorageCounts:
        final = sum(self.weight(n).numel() for n in self.layers)
        per_task_w, private = [], []
        for w in self.widths:
            shapes = self.shapes_at(w)
            per_task_w.append(sum(math.prod(shapes[n]) for n in self.layers))
            private.append(sum(math.prod(shapes[n]) for n in self.private if not n.endswith("num_batches_tracked")))
        return StorageCounts(final, per_task_w, private, heads, list(self.has_pick), owner_index)

    def iter_bn(self) -> Iterator[nn.Module]:
        return (m for m in self.net.modules() if is_batchnorm(m))
