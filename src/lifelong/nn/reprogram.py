"""Channel-wise lightweight reprogramming (CLR; Ge et al., ICCV 2023) over any registered backbone.

``Reprogrammed(net, cover_1x1)`` takes a backbone built by the registry, freezes it (the
*immutable* network) and replaces, in place:

- every selected ``nn.Conv2d`` by ``CLRConv``: the frozen conv followed by a per-task depthwise
  3x3 conv (groups = out_channels, stride 1, padding 1, no bias, no residual), initialised to the
  identity (Dirac), so a new task starts from exactly the immutable network's function.
  Selected: every conv with a kernel larger than 1x1 (CLR, the paper's main method: "no linear
  transformation for 1*1 convolutional" in ``network/utils.py``), or every conv (CLR-Full);
- every BatchNorm by ``TaskBN``: one BatchNorm per task (affine parameters *and* running
  statistics), each cloned from the immutable network's BN (``base``) when the task is added.
  Per-task BN is what keeps training a task from moving the statistics another task uses
  (clr.md pitfall 2).

Replacing the conv module keeps the CLR layer exactly where the conv's output went: between a
conv and the BatchNorm that reads it (``find_pairs`` reports these pairs, found on the
``torch.fx`` graph, i.e. by data flow), before any residual addition. A conv whose output feeds
no BatchNorm (CNN20's biased convs before a PReLU, a pre-activation block's last conv before the
residual sum) is reprogrammed the same way: conv (with its frozen bias) -> CLR -> whatever
followed the conv; it has no per-task BN to go with it. Everything else of the backbone (linear
layers such as VGG's classifier, conv biases, PReLU slopes) is frozen and shared.

Per-task tensors live in registered ``nn.ParameterList`` / ``nn.ModuleList`` entries indexed by
task, so ``state_dict`` (checkpoints, ``--resume``) carries them; ``set_task(t)`` selects them.

Folding (``set_fold(True)``, used in eval mode only, or ``export(t)``): a depthwise 3x3 D after a
kxk conv W with stride s, dilation d and padding p equals one conv of kernel 2s + d(k-1) + 1
(k + 2 for stride 1), stride s, padding p + s, with ``F = sum_uv D[u,v] * shift(W, s*u, s*v)``
and bias ``b * sum(D)``, everywhere except the outermost ring of output pixels: there the CLR
layer reads zero padding while the folded conv reads the conv's values just outside the map.
``folded_conv`` therefore recomputes the first and last two output rows and columns with the
unfolded pair (4 thin strips), which makes it exact. Convs with a non-zero ``padding_mode`` or a
string padding are never folded (they stay unfolded).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


@dataclass
class PairReport:
    """Which convs feed a BatchNorm directly (``pairs``) and which do not (``unpaired``)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    method: str = "fx"  # "fx" (data flow) or "order" (registration order, when tracing fails)


def find_pairs(net: nn.Module) -> PairReport:
    """conv -> BN pairs: a conv whose only consumer is a BatchNorm of its width (torch.fx graph).

    Backbones fx cannot trace fall back to registration order: a conv directly followed, among its
    parent's children, by a BatchNorm with as many features as the conv has output channels.
    """
    convs = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    mods = dict(net.named_modules())
    report = PairReport()
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception:  # data-dependent control flow: pair by order instead
        report.method = "order"
        for parent_name, parent in net.named_modules():
            kids = list(parent.named_children())
            for (a, m), (b, nxt) in zip(kids, kids[1:]):
                if isinstance(m, nn.Conv2d) and is_bn(nxt) and nxt.num_features == m.out_channels:
                    report.pairs.append((f"{parent_name}.{a}".lstrip("."), f"{parent_name}.{b}".lstrip(".")))
    else:
        for node in graph.nodes:
            if node.op == "call_module" and node.target in convs:
                users = list(node.users)
                if len(users) == 1 and users[0].op == "call_module" and is_bn(mods[users[0].target]) \
                        and mods[users[0].target].num_features == mods[node.target].out_channels:
                    report.pairs.append((node.target, users[0].target))
    paired = {c for c, _ in report.pairs}
    report.unpaired = sorted(convs - paired)
    return report


# --------------------------------------------------------------------------- folding
def fold_kernel(conv: nn.Conv2d, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The single conv weight (and bias) equal to ``CLR(conv(x))`` away from the output border."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    w = conv.weight
    out = w.new_zeros(w.shape[0], w.shape[1], 2 * sh + dh * (kh - 1) + 1, 2 * sw + dw * (kw - 1) + 1)
    for u in range(3):
        for v in range(3):
            out[:, :, sh * u: sh * u + dh * (kh - 1) + 1: dh, sw * v: sw * v + dw * (kw - 1) + 1: dw] += \
                kernel[:, 0, u, v].view(-1, 1, 1, 1) * w
    bias = None if conv.bias is None else conv.bias * kernel.sum((1, 2, 3))
    return out, bias


def foldable(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _strip(x: torch.Tensor, conv: nn.Conv2d, kernel: torch.Tensor, dim: int, first: bool, n_out: int) -> torch.Tensor:
    """Exact ``CLR(conv(x))`` on the first (or last) output row (dim 2) or column (dim 3)."""
    s, d, k, p = conv.stride[dim - 2], conv.dilation[dim - 2], conv.kernel_size[dim - 2], conv.padding[dim - 2]
    lo = 0 if first else max(0, n_out - 2)
    hi = min(n_out, 2) if first else n_out
    ph, pw = conv.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    strip = xp.narrow(dim, s * lo, s * (hi - 1 - lo) + d * (k - 1) + 1)
    z = F.conv2d(strip, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    r = F.conv2d(z, kernel, None, 1, 1, 1, z.shape[1])
    return r.select(dim, 0 if first else r.shape[dim] - 1)


def folded_conv(x: torch.Tensor, conv: nn.Conv2d, kernel: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """``CLR(conv(x))`` with the folded weight, the output border recomputed exactly."""
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    out = F.conv2d(x, weight, bias, conv.stride, (ph + sh, pw + sw), 1, conv.groups)
    h, w = out.shape[-2:]
    out[:, :, 0, :] = _strip(x, conv, kernel, 2, True, h)
    out[:, :, h - 1, :] = _strip(x, conv, kernel, 2, False, h)
    out[:, :, :, 0] = _strip(x, conv, kernel, 3, True, w)
    out[:, :, :, w - 1] = _strip(x, conv, kernel, 3, False, w)
    return out


# --------------------------------------------------------------------------- layers
class CLRConv(nn.Module):
    """A frozen conv followed by the active task's depthwise 3x3 reprogramming kernel."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.kernels = nn.ParameterList()
        self.task = 0
        self.fold = False
        self._folded: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def add_task(self) -> None:
        c = self.conv.out_channels
        k = torch.zeros(c, 1, 3, 3, device=self.conv.weight.device, dtype=self.conv.weight.dtype)
        nn.init.dirac_(k, groups=c)  # identity: the new task starts from the immutable network (pitfall 3)
        self.kernels.append(nn.Parameter(k, requires_grad=False))  # trained only in its task's fit

    def folded(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Folded weight of task ``t``, cached while neither the kernel nor the conv changes. One task
        at a time: a folded 3x3 conv is 25/9 times its size, and evaluation visits tasks in turn."""
        k, w = self.kernels[t], self.conv.weight
        key = (t, id(k), k._version, w._version, None if self.conv.bias is None else self.conv.bias._version)
        if key not in self._folded:
            with torch.no_grad():
                self._folded = {key: fold_kernel(self.conv, k)}
        return self._folded[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernels[self.task]
        if self.fold and not self.training and foldable(self.conv):
            weight, bias = self.folded(self.task)
            return folded_conv(x, self.conv, kernel, weight, bias)
        z = self.conv(x)
        return F.conv2d(z, kernel, None, 1, 1, 1, z.shape[1])


class TaskBN(nn.Module):
    """One BatchNorm per task (parameters and running statistics), cloned from ``base``."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.base = bn
        self.bns = nn.ModuleList()
        self.task = 0

    def add_task(self) -> None:
        bn = copy.deepcopy(self.base)  # frozen like the base until its task trains it
        self.bns.append(bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.task](x)


class FoldedConv(nn.Module):
    """An exported task's conv+CLR as one folded conv (plus the original kernels for the border)."""

    def __init__(self, layer: CLRConv, t: int) -> None:
        super().__init__()
        self.conv = copy.deepcopy(layer.conv)
        self.register_buffer("kernel", layer.kernels[t].detach().clone())
        weight, bias = fold_kernel(self.conv, self.kernel)
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return folded_conv(x, self.conv, self.kernel, self.weight, self.bias)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class Reprogrammed(nn.Module):
    """A frozen backbone with per-task CLR kernels and BatchNorms (see the module docstring)."""

    def __init__(self, net: nn.Module, cover_1x1: bool = False) -> None:
        super().__init__()
        self.report = find_pairs(net)
        net.requires_grad_(False)
        convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        bns = [(n, m) for n, m in net.named_modules() if is_bn(m)]
        self.wrapped = [n for n, m in convs if cover_1x1 or max(m.kernel_size) > 1]
        for n, m in convs:
            if n in self.wrapped:
                _set(net, n, CLRConv(m))
        for n, m in bns:
            _set(net, n, TaskBN(m))
        self.net = net
        self.out_dim = int(getattr(net, "out_dim"))
        self.num_tasks = 0

    def clr_layers(self) -> list[CLRConv]:
        return [m for m in self.net.modules() if isinstance(m, CLRConv)]

    def bn_layers(self) -> list[TaskBN]:
        return [m for m in self.net.modules() if isinstance(m, TaskBN)]

    def add_task(self) -> None:
        for m in self.clr_layers() + self.bn_layers():  # type: ignore[operator]
            m.add_task()
        self.num_tasks += 1

    def set_task(self, t: int) -> None:
        for m in self.clr_layers() + self.bn_layers():  # type: ignore[operator]
            m.task = t

    def set_fold(self, fold: bool) -> None:
        for m in self.clr_layers():
            m.fold = fold

    def kernels(self, t: int) -> list[nn.Parameter]:
        return [m.kernels[t] for m in self.clr_layers()]

    def task_bns(self, t: int) -> list[nn.Module]:
        return [m.bns[t] for m in self.bn_layers()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The immutable network's own parameters (convs, linear layers, biases; not BN)."""
        own = {id(p) for m in self.clr_layers() for p in m.kernels} | \
              {id(p) for m in self.bn_layers() for p in m.parameters()}
        return [p for p in self.net.parameters() if id(p) not in own]

    def adopt_as_base(self, t: int) -> None:
        """Make task ``t``'s BatchNorms the immutable network's (after training it from scratch)."""
        for m in self.bn_layers():
            m.base.load_state_dict(m.bns[t].state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def export(self, t: int) -> nn.Module:
        """Task ``t`` as a plain network: folded convs, the task's own BatchNorms, no other task."""
        net = copy.deepcopy(self.net)
        for name, m in list(net.named_modules()):
            if isinstance(m, CLRConv):
                _set(net, name, FoldedConv(m, t) if foldable(m.conv) else _Fixed(m, t))
            elif isinstance(m, TaskBN):
                _set(net, name, copy.deepcopy(m.bns[t]))
        return net.eval()


class _Fixed(nn.Module):
    """An exported conv + one task's kernel, unfolded (convs that cannot be folded exactly)."""

    def __init__(self, layer: CLRConv, t: int) -> None:
        super().__init__()
        self.conv = copy.deepcopy(layer.conv)
        self.register_buffer("kernel", layer.kernels[t].detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return F.conv2d(z, self.kernel, None, 1, 1, 1, z.shape[1])
