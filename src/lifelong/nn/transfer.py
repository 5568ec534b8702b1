"""Per-layer parameterisation for selective layer transfer: one mechanism for HPS, TF, DF-CNN and LASEM.

Each conv position l is a ``TransferLayer`` that serves, for any task t, either path:

- own (s_l = F): task t's plain conv (``own[t]``);
- transfer (s_l = T), by ``kind``:
  - ``hps``: the single global shared conv (``shared.weight``/``shared.bias``), lasem.md 3;
  - ``tf``: a shared core K [kh,kw,ci,co] and task t's four square factors and bias (lasem.md 4):
    W_t = einsum('ijkl,ia,jb,kc,ld->abcd', K, U0, U1, U2, U3);
  - ``dfcnn``: a shared knowledge base KB [1,c_kb,kb,kb], task t's deconvolution D, d and 1x1
    channel map T (lasem.md 5): G = deconv(KB, D, stride 2) + d, W = einsum('shw,sio->oihw', G, T).

Per-task parts are ``ModuleDict`` entries keyed by the task index, so checkpoints hold them
by name and a finished task's parts are simply never handed to an optimiser again. A
configuration is a tuple of bools, bottom layer first; ``config_of`` numbers them as the
LASEM code does (index i: layer l is task-specific iff bit l of i is set; 0 = all shared).

``TransferNet.tree`` evaluates every configuration of a task at once with a prefix tree: the
2^g activations after g layers (groups) are stacked along a new leading axis and each layer
runs its two branches once over the whole stack, so the cost is sum_l 2^l layer evaluations
(as batched convs) instead of L * 2^L; ``naive_tree`` is the reference it must equal.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .lasem_cnn import FCHead, LasemSpec, PlainConv, conv_same, pool_same, tf_glorot_uniform_, trunc_normal_

KINDS = ("hps", "tf", "dfcnn")
Config = tuple[bool, ...]


def config_of(index: int, groups: Sequence[int]) -> Config:
    """The configuration numbered ``index`` over layer groups (sizes ``groups``): group g is
    task-specific iff bit g is set. With one-layer groups this is the LASEM code's ``_possible_configs``
    order; with larger groups it is that order filtered to block-constant configurations."""
    out: list[bool] = []
    for g, size in enumerate(groups):
        out += [not (index >> g) & 1] * size
    return tuple(out)


def config_str(cfg: Sequence[bool]) -> str:
    return "".join("T" if c else "F" for c in cfg)


def parse_config(s: str) -> Config:
    return tuple(c == "T" for c in s.upper())


class TFFactors(nn.Module):
    """Task factors of a TF layer: square U0..U3 and a bias, glorot-uniform (none starts at the identity)."""

    def __init__(self, kh: int, kw: int, ci: int, co: int) -> None:
        super().__init__()
        self.u = nn.ParameterList(nn.Parameter(torch.empty(n, n)) for n in (kh, kw, ci, co))
        self.bias = nn.Parameter(torch.empty(co))
        for u in self.u:
            tf_glorot_uniform_(u.data, tuple(u.shape))
        tf_glorot_uniform_(self.bias.data, (co,))

    def weight(self, core: torch.Tensor) -> torch.Tensor:
        """W (co, ci, kh, kw) = einsum('ijkl,ia,jb,kc,ld->abcd', K, U0..U3), contracted one mode at a time."""
        u0, u1, u2, u3 = self.u
        w = torch.tensordot(u0, core, dims=([0], [0]))  # a j k l
        w = torch.einsum("ajkl,jb->abkl", w, u1)
        w = torch.einsum("abkl,kc->abcl", w, u2)
        w = torch.einsum("abcl,ld->abcd", w, u3)
        return w.permute(3, 2, 0, 1)

    def penalty(self) -> torch.Tensor:
        """sum_U ||U^T U - I||_F (not squared; the bias excluded), lasem.md 4."""
        return sum(torch.linalg.matrix_norm(u.T @ u - torch.eye(u.shape[0], device=u.device, dtype=u.dtype))
                   for u in self.u)


class DFTask(nn.Module):
    """Task parameters of a DF-CNN layer: deconv filter D, deconv bias d, channel map T, conv bias b."""

    def __init__(self, kb: int, c_kb: int, kd: int, c_ts: int, ci: int, co: int) -> None:
        super().__init__()
        self.pad = (kd - 1) // 2
        self.deconv = nn.Parameter(torch.empty(c_kb, c_ts, kd, kd))  # TF [kd, kd, c_ts, c_kb]
        self.deconv_bias = nn.Parameter(torch.empty(c_ts))  # TF [1, 1, 1, c_ts]
        self.mix = nn.Parameter(torch.empty(c_ts, ci, co))
        self.bias = nn.Parameter(torch.empty(co))
        tf_glorot_uniform_(self.deconv.data, (kd, kd, c_ts, c_kb))
        tf_glorot_uniform_(self.deconv_bias.data, (1, 1, 1, c_ts))
        tf_glorot_uniform_(self.mix.data, (c_ts, ci, co))
        tf_glorot_uniform_(self.bias.data, (co,))

    def weight(self, kb: torch.Tensor) -> torch.Tensor:
        g = F.conv_transpose2d(kb, self.deconv, self.deconv_bias, stride=2, padding=self.pad)  # (1, c_ts, k, k)
        return torch.einsum("shw,sio->oihw", g[0], self.mix)

    def sq_norm(self) -> torch.Tensor:
        return self.deconv.square().sum() + self.deconv_bias.square().sum() + self.mix.square().sum()


class TransferLayer(nn.Module):
    """Conv position l for all tasks: an optional shared part and per-task own convs / transfer factors.

    ``born`` (a buffer, so it survives restarts) says whether some finished task committed the
    shared part; LASEM re-initialises an unborn shared part at each new task (lasem.md 6)."""

    def __init__(self, kind: str, ci: int, co: int, k: int, pool: int, kb: tuple[int, int] | None = None,
                 ts: tuple[int, int] | None = None, shared: bool = True) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"transfer kind {kind!r} is not one of {', '.join(KINDS)}")
        self.kind, self.ci, self.co, self.k, self.pool = kind, ci, co, k, pool
        if kind == "dfcnn":
            assert kb is not None and ts is not None
            if k != (kb[0] - 1) * 2 + 1 or ts[0] % 2 == 0:
                raise ConfigError(f"DF-CNN KB size {kb[0]} with deconv {ts[0]} cannot generate a {k}x{k} kernel; "
                                  f"the code asserts k = (kb-1)*2+1 with an odd deconv filter (lasem.md 5)")
        self.kb_size, self.ts_size = kb, ts
        self.shared = nn.ParameterDict()
        self.own = nn.ModuleDict()
        self.ts = nn.ModuleDict()
        self.register_buffer("born", torch.zeros((), dtype=torch.bool))
        if shared:
            self.make_shared()

    # ------------------------------------------------------------ shared part
    def make_shared(self) -> None:
        if self.kind == "hps":
            self.shared["weight"] = nn.Parameter(torch.empty(self.co, self.ci, self.k, self.k))
            self.shared["bias"] = nn.Parameter(torch.empty(self.co))
        elif self.kind == "tf":
            self.shared["core"] = nn.Parameter(torch.empty(self.k, self.k, self.ci, self.co))  # TF layout
        else:
            kb, c_kb = self.kb_size  # type: ignore[misc]
            self.shared["kb"] = nn.Parameter(torch.empty(1, c_kb, kb, kb))
        self.reset_shared()

    def reset_shared(self) -> None:
        """Fresh values for the shared part (HPS: truncated normal / 0.2; TF core, DF-CNN KB: glorot)."""
        with torch.no_grad():
            if self.kind == "hps":
                trunc_normal_(self.shared["weight"])
                self.shared["bias"].fill_(0.2)
            elif self.kind == "tf":
                tf_glorot_uniform_(self.shared["core"], (self.k, self.k, self.ci, self.co))
            else:
                kb, c_kb = self.kb_size  # type: ignore[misc]
                tf_glorot_uniform_(self.shared["kb"], (1, kb, kb, c_kb))

    def shared_tensors(self) -> list[nn.Parameter]:
        return list(self.shared.values())

    # ------------------------------------------------------------ per-task parts
    def add_task(self, t: int, own: bool, transfer: bool) -> None:
        key = str(t)
        if own:
            self.own[key] = PlainConv(self.ci, self.co, self.k)
        if transfer and self.kind == "tf":
            self.ts[key] = TFFactors(self.k, self.k, self.ci, self.co)
        elif transfer and self.kind == "dfcnn":
            (kb, c_kb), (kd, c_ts) = self.kb_size, self.ts_size  # type: ignore[misc]
            self.ts[key] = DFTask(kb, c_kb, kd, c_ts, self.ci, self.co)

    def keep(self, t: int, transfer: bool) -> None:
        """Drop the path task t did not choose."""
        key = str(t)
        drop = self.own if transfer else self.ts
        if key in drop:
            del drop[key]

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        key = str(t)
        return [p for d in (self.own, self.ts) if key in d for p in d[key].parameters()]

    # ------------------------------------------------------------ forward
    def weight(self, t: int, transfer: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(t)
        if not transfer:
            conv = self.own[key]
            return conv.weight, conv.bias
        if self.kind == "hps":
            return self.shared["weight"], self.shared["bias"]
        part = self.ts[key]
        base = self.shared["core"] if self.kind == "tf" else self.shared["kb"]
        return part.weight(base), part.bias

    def forward(self, x: torch.Tensor, t: int, transfer: bool) -> torch.Tensor:
        w, b = self.weight(t, transfer)
        return pool_same(F.relu(conv_same(x, w, b)), self.pool)

    def penalty(self, t: int) -> torch.Tensor:
        """(task term, shared term) of task t's transfer path, unscaled. TF: (sum_U ||U^T U - I||_F, 0);
        DF-CNN: (||D||^2 + ||d||^2 + ||T||^2, ||KB||^2), the intended L2 (lasem.md 5); HPS and own paths: 0."""
        key = str(t)
        zero = torch.zeros((), device=self.born.device)
        if self.kind == "tf" and key in self.ts:
            return torch.stack([self.ts[key].penalty(), zero])
        if self.kind == "dfcnn" and key in self.ts:
            return torch.stack([self.ts[key].sq_norm(), self.shared["kb"].square().sum()])
        return torch.stack([zero, zero])


class TransferNet(nn.Module):
    """L ``TransferLayer``s plus one ``FCHead`` (dropout, hidden FCs, output) per task."""

    def __init__(self, spec: LasemSpec, kind: str, shared_layers: Sequence[bool] | None = None,
                 kb: Sequence[tuple[int, int]] | None = None, ts: Sequence[tuple[int, int]] | None = None) -> None:
        super().__init__()
        L = spec.num_layers
        shared_layers = list(shared_layers) if shared_layers is not None else [True] * L
        kb = list(kb or spec.kb)
        ts = list(ts or spec.ts)
        if kind == "dfcnn" and (len(kb) != L or len(ts) != L):
            raise ConfigError(f"DF-CNN needs {L} KB and TS sizes, got {len(kb)} and {len(ts)}")
        self.spec, self.kind = spec, kind
        self.layers = nn.ModuleList(
            TransferLayer(kind, ci, co, k, p, tuple(kb[l]) if kind == "dfcnn" else None,
                          tuple(ts[l]) if kind == "dfcnn" else None, shared_layers[l])
            for l, ((ci, co), k, p) in enumerate(zip(spec.in_out, spec.kernels, spec.pools)))
        self.heads = nn.ModuleDict()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def add_task(self, t: int, num_classes: int, own: Sequence[bool], transfer: Sequence[bool]) -> None:
        for layer, o, tr in zip(self.layers, own, transfer):
            layer.add_task(t, o, tr)
        self.heads[str(t)] = FCHead(self.spec.flat_dim, self.spec.hidden, num_classes, self.spec.dropout)

    def commit(self, t: int, cfg: Config) -> None:
        for layer, c in zip(self.layers, cfg):
            layer.keep(t, c)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.shared_tensors()]

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.task_parameters(t)] + list(self.heads[str(t)].parameters())

    def penalties(self, t: int) -> torch.Tensor:
        """(L, 2): each layer's (task term, shared term) of ``TransferLayer.penalty``."""
        return torch.stack([layer.penalty(t) for layer in self.layers])

    # ------------------------------------------------------------ forward passes
    def features(self, x: torch.Tensor, t: int, cfg: Config) -> torch.Tensor:
        for layer, c in zip(self.layers, cfg):
            x = layer(x, t, c)
        return x.flatten(1)

    def head(self, t: int, feats: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        return self.heads[str(t)](feats, dropout)

    def forward(self, x: torch.Tensor, t: int, cfg: Config) -> torch.Tensor:
        return self.head(t, self.features(x, t, cfg))

    def tree(self, x: torch.Tensor, t: int, groups: Sequence[int] | None = None) -> torch.Tensor:
        """Flattened conv features of every configuration, (2^G, N, D), index as ``config_of``.

        After group g the stack holds 2^(g+1) prefixes: the transfer branch of the 2^g earlier
        prefixes first (bit g = 0), then their own branch (bit g = 1)."""
        groups = list(groups or [1] * self.num_layers)
        n = x.shape[0]
        h = x.unsqueeze(0)  # (prefixes, N, C, H, W)
        start = 0
        for size in groups:
            branches = []
            for transfer in (True, False):
                z = h.flatten(0, 1)
                for layer in self.layers[start:start + size]:
                    z = layer(z, t, transfer)
                branches.append(z.unflatten(0, (h.shape[0], n)))
            h = torch.cat(branches, 0)
            start += size
        return h.flatten(2)

    def naive_tree(self, x: torch.Tensor, t: int, groups: Sequence[int] | None = None) -> torch.Tensor:
        """The reference for ``tree``: each configuration's network run on its own (L * 2^G layer evaluations)."""
        groups = list(groups or [1] * self.num_layers)
        return torch.stack([self.features(x, t, config_of(i, groups)) for i in range(2 ** len(groups))])

    def layer_evaluations(self, groups: Sequence[int] | None = None) -> int:
        """Layer evaluations ``tree`` performs on its (stacked) inputs: sum over groups g of 2^(g+1) * size_g."""
        groups = list(groups or [1] * self.num_layers)
        return sum(2 ** (g + 1) * size for g, size in enumerate(groups))


def iter_configs(groups: Sequence[int]) -> Iterator[Config]:
    for i in range(2 ** len(groups)):
        yield config_of(i, groups)
