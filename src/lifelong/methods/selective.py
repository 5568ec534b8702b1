"""HPS, TF and DF-CNN with a static transfer configuration (lasem.md 3-5), and the base LASEM builds on.

A configuration s in {T,F}^L (bottom layer first) says which conv layers of every task go
through the transfer parameterisation (HPS's one shared conv, TF's shared core + task factors,
DF-CNN's shared KB + task deconvolution); the others are the task's own plain convs, and the FC
layers are always the task's own. Training task t updates the shared parameters with t's loss
only (no anti-forgetting term, so older tasks drift through them; ``guarantees_unforgetting`` is
False) plus t's own parts; earlier tasks' own parts are never handed to an optimiser again.

``--set transfer=all|top<k>|bottom<k>|alter|alter_rev|TTFF`` or the README's ``--set test_type=N``
(``//5`` the configuration, ``%5`` TF's aux weight / DF-CNN's L2 scales).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..data.scenario import Task
from ..engine.loop import Batch, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.lasem_cnn import LasemCNN
from ..nn.transfer import Config, TransferNet, config_str, parse_config
from .base import BackboneFactory, Footprint, Method, TaskMeta
from .lasem_common import (DF_REG_SCALES, TF_AUX_WEIGHTS, TOY_DEFAULTS, LasemHParams, fit_lasem_phase,
                           resolve_transfer, transfer_for_test_type)


@dataclass
class HPSConfig(LasemHParams):
    transfer: str = "top2"  # lasem.md 3: the README's HPS example (test_type 10, Top-2)
    test_type: int | None = None  # the README's --test_type; when set it overrides transfer (and aux_weight/*_reg)


@dataclass
class TFTerms:
    aux_weight: float = 0.1  # lasem.md 4: orthogonality weight at test_type % 5 = 0


@dataclass
class DFTerms:
    kb_reg: float = 1e-7  # lasem.md 5: regularization_scale[1] (KB), intended 1/2 * scale * ||w||^2
    ts_reg: float = 1e-7  # lasem.md 5: regularization_scale[3] (D, d, T of the task)
    kb_sizes: list[list[int]] | None = None  # per layer (kb, c_kb); None: the network's table (lasem.md 5)
    ts_sizes: list[list[int]] | None = None  # per layer (kd, c_ts)


@dataclass
class TFConfig(HPSConfig, TFTerms):
    pass


@dataclass
class DFCNNConfig(HPSConfig, DFTerms):
    pass


class TransferMethod(Method):
    """A ``TransferNet`` over the LASEM conv net; subclasses choose ``kind`` and how a task's configuration arises."""

    kind: ClassVar[str] = "hps"
    settings = ("task",)
    Config = HPSConfig
    val_fraction = 0.15  # validation for the peak accuracy (CIFAR 3 of 20 images per class, STL-10 19 of 125)
    benchmark_defaults = TOY_DEFAULTS
    guarantees_unforgetting = False  # shared layers drift by design (lasem.md 3)

    def __init__(self, config: HPSConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        probe = make_backbone()
        if not isinstance(probe, LasemCNN):
            raise ConfigError(f"method {self.name} builds the LASEM conv nets: pass --backbone lasem_cnn "
                              f"(--set backbone.variant=cifar4|cifar6|officehome4|officehome6|stl6)")
        self.spec = probe.spec
        sub = 0 if config.test_type is None else config.test_type % 5
        self.aux_weight = getattr(config, "aux_weight", 0.0) if config.test_type is None else TF_AUX_WEIGHTS[sub]
        kb_reg, ts_reg = (getattr(config, "kb_reg", 0.0), getattr(config, "ts_reg", 0.0)) \
            if config.test_type is None else DF_REG_SCALES[sub]
        self.kb_reg, self.ts_reg = kb_reg, ts_reg
        self.configs: list[str] = []  # committed configuration per finished task
        kb = [tuple(x) for x in config.kb_sizes] if getattr(config, "kb_sizes", None) else None
        ts = [tuple(x) for x in config.ts_sizes] if getattr(config, "ts_sizes", None) else None
        self.net = TransferNet(self.spec, self.kind, self.shared_layers(), kb, ts)  # type: ignore[arg-type]
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------ configuration
    def static_config(self) -> Config:
        cfg: HPSConfig = self.config
        L, v = self.spec.num_layers, self.spec.variant
        s = transfer_for_test_type(cfg.test_type, L, v) if cfg.test_type is not None else resolve_transfer(cfg.transfer, L, v)
        return parse_config(s)

    def shared_layers(self) -> list[bool]:
        return list(self.static_config())

    def config_for(self, task_id: int) -> Config:
        return parse_config(self.configs[task_id])

    # ------------------------------------------------------------ structure
    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        cfg = self.static_config()
        self.net.add_task(meta.id, meta.num_classes, [not c for c in cfg], [c and self.kind != "hps" for c in cfg])
        self.configs.append(config_str(cfg))

    def extra_structure(self) -> dict[str, Any]:
        return {"configs": list(self.configs)}

    # ------------------------------------------------------------ losses
    def regulariser(self, penalties: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        """penalties (L, 2) of ``TransferNet.penalties``; mass (L,) how much each layer's transfer path counts
        (1/0 for a static configuration, the posterior mass of the configurations sharing it under LASEM).
        TF: aux_weight * sum_l mass_l * ||U^T U - I||; DF-CNN: 1/2 (ts_reg * ||D,d,T||^2 + kb_reg * ||KB||^2)."""
        if self.kind == "tf":
            return self.aux_weight * (mass * penalties[:, 0]).sum()
        if self.kind == "dfcnn":
            return 0.5 * (self.ts_reg * (mass * penalties[:, 0]).sum() + self.kb_reg * (mass * penalties[:, 1]).sum())
        return penalties.new_zeros(())

    def task_loss(self, b: Batch, t: int, cfg: Config) -> StepOutput:
        out = self.net(b.x, t, cfg)
        loss = F.cross_entropy(out, b.y)
        if self.kind != "hps":
            mass = torch.tensor(cfg, dtype=out.dtype, device=out.device)
            loss = loss + self.regulariser(self.net.penalties(t), mass)
        return StepOutput(loss, out)

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        t, cfg = task.id, self.config_for(task.id)
        params = self.net.shared_parameters() + self.net.task_parameters(t)
        info = fit_lasem_phase(self, ctx, task, params, lambda b: self.task_loss(b, t, cfg),
                               lambda x: self.predict(x, t), self.config)
        return {"config": config_str(cfg), "owners": self.owners(t, cfg), **info}

    def owners(self, t: int, cfg: Config) -> list[str]:
        return ["shared" if c else f"task {t + 1}" for c in cfg]

    # ------------------------------------------------------------ the contract
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert task_id is not None
        return self.net(x, task_id, self.config_for(task_id))

    def task_summary(self, info: dict[str, Any]) -> str:
        peak = (info.get("peak") or {}).get("test_accuracy")
        return f"config {info.get('config')}" + (f", peak {peak:.3f}" if peak is not None else "")

    def footprint(self) -> Footprint:
        """Shared parameters once (only layers some task committed to), each task's own parts and head."""
        used = [any(parse_config(c)[l] for c in self.configs) for l in range(self.net.num_layers)]
        shared = [p for layer, u in zip(self.net.layers, used) if u for p in layer.shared_tensors()]
        per_task = [sum(p.numel() * p.element_size() for p in self.net.task_parameters(t)) for t in range(len(self.tasks))]
        n = sum(p.numel() for p in shared) + sum(p.numel() for t in range(len(self.tasks)) for p in self.net.task_parameters(t))
        nbytes = sum(p.numel() * p.element_size() for p in shared) + sum(per_task)
        return Footprint(n, nbytes, per_task, f"{self.kind}: shared layers counted once, per-task own convs/factors and FC, fp32")


class SearchedTransfer(TransferMethod):
    """Methods that choose each new task's configuration while it trains (LASEM's EM, DARTS).

    The new task gets every path (all shared layers, an own conv and transfer factors per layer);
    ``current_config()`` is the configuration it would commit now (served while it trains). At
    its end ``commit`` keeps the updated shared values of the layers the chosen configuration
    uses (older tasks sharing them see the change), rolls every other shared layer back bit for
    bit to ``snapshot()`` (or, when no task ever committed it, leaves it to be re-initialised when
    the next task begins), and drops the unchosen per-task parts (lasem.md 6 ``convert_tfVar_to_npVar``,
    lasem.md 8 DARTS "rolled back, exactly as in LASEM")."""

    def __init__(self, config: Any, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self._snapshot: list[list[torch.Tensor]] | None = None

    def shared_layers(self) -> list[bool]:
        return [True] * self.spec.num_layers

    def current_config(self) -> Config:
        raise NotImplementedError

    def config_for(self, task_id: int) -> Config:
        if task_id < len(self.configs):
            return parse_config(self.configs[task_id])
        return self.current_config()  # the task being trained

    def begin_task(self, meta: TaskMeta) -> None:
        Method.begin_task(self, meta)
        L = self.net.num_layers
        self.net.add_task(meta.id, meta.num_classes, [True] * L, [self.kind != "hps"] * L)
        for layer in self.net.layers:
            if not bool(layer.born):  # no task committed this shared layer yet: start it afresh
                layer.reset_shared()

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        self.configs = list(structure.get("configs", []))
        for t, c in enumerate(self.configs):
            self.net.commit(t, parse_config(c))

    def snapshot(self) -> None:
        """The shared values before the task trains: what ``commit`` rolls unchosen layers back to."""
        self._snapshot = [[p.detach().clone() for p in layer.shared_tensors()] for layer in self.net.layers]

    def commit(self, t: int, cfg: Config | None = None) -> Config:
        """Commit ``cfg`` (default ``current_config()``) for task t: roll back the shared layers it does not
        use, mark the ones it uses as born, drop the unchosen per-task parts."""
        cfg = self.current_config() if cfg is None else tuple(cfg)
        assert self._snapshot is not None, "snapshot() must run before the task trains"
        with torch.no_grad():
            for layer, c, before in zip(self.net.layers, cfg, self._snapshot):
                if c:
                    layer.born.fill_(True)
                elif bool(layer.born):
                    for p, old in zip(layer.shared_tensors(), before):
                        p.copy_(old)
                # else: never committed by anyone; re-initialised when the next task begins
        self.net.commit(t, cfg)
        self.configs.append(config_str(cfg))
        self._snapshot = None
        return cfg


class HPS(TransferMethod):
    name = "hps"
    paper = "hard parameter sharing with a static configuration (Lee et al., ICML 2021, baseline)"
    kind = "hps"
    Config = HPSConfig


class TF(TransferMethod):
    name = "tf"
    paper = "tensor factorisation after Bulat et al. ICML 2020, static configuration (LASEM's Hybrid_TF)"
    kind = "tf"
    Config = TFConfig


class DFCNN(TransferMethod):
    name = "dfcnn"
    paper = "deconvolutional factorised CNN (Lee et al. IJCAI 2019), static configuration (LASEM's Hybrid_DFCNN)"
    kind = "dfcnn"
    Config = DFCNNConfig


__all__ = ["HPS", "TF", "DFCNN", "TransferMethod", "SearchedTransfer", "HPSConfig", "TFConfig", "DFCNNConfig"]
