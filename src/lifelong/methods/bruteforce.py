"""The brute-force configuration oracle of LASEM's table (lasem.md 8), on HPS, TF or DF-CNN.

The code's ``train_bruteforce_configsearch.py`` / ``cnn_bruteforce_config_search_model.py``: for
each new task every candidate configuration is trained, from the same starting state, for the
task's full epoch budget, and the one with the best validation accuracy (the highest over its
epochs, first maximum; ties: the first candidate, index 0 = all shared, the order of
``_possible_configs``) is kept with its weights. It bounds what LASEM's EM can choose. The code's
``bruteforce_tf`` cannot be built (its architecture name fails the ``'tensorfactor'`` check);
here one mechanism serves all three base learners.

As the code (``search_on_first_task = False``): the first task is not searched (there is nothing
to transfer from). HPS trains it with every layer its own (FFFF), TF and DF-CNN through the
factorisation (TTTT). Its configuration is decided with the second task's: each candidate c is
applied to the first task as well (HPS: the shared conv of a T layer starts as a copy of task 1's
own conv, which task 1 then serves from; TF/DF-CNN: an F layer of task 1 becomes a plain conv
holding the kernel its factors generate), and the winner is committed for both tasks.

Shared layers that no committed task uses are re-initialised when the next task begins (the
code saves them as None). Every candidate sees the same minibatch order and dropout draws
(the phase counter and the RNG are restored before each): the configurations are compared under
common random numbers. ``--set configs=[top2,bottom3,FFFF]`` restricts the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.scenario import Task
from ..engine.loop import TrainContext
from ..errors import ConfigError
from ..nn.transfer import Config, config_str, iter_configs, parse_config
from .base import Method, TaskMeta
from .lasem_common import LasemHParams, fit_lasem_phase, resolve_transfer
from .selective import DFTerms, TFTerms, TransferMethod


@dataclass
class BruteForceConfig(LasemHParams):
    configs: list[str] | None = None  # candidates (names or T/F strings); None: all 2^L (the code's _possible_configs)
    test_type: int | None = None  # the README's --test_type: only % 5 matters (TF aux weight / DF-CNN L2), as lasem-*


@dataclass
class BruteForceTFConfig(BruteForceConfig, TFTerms):
    pass


@dataclass
class BruteForceDFCNNConfig(BruteForceConfig, DFTerms):
    pass


class BruteForce(TransferMethod):
    Config = BruteForceConfig

    def __init__(self, config: BruteForceConfig, setting: str, make_backbone: Any) -> None:
        super().__init__(config, setting, make_backbone)
        self.candidates = self.resolve_candidates()
        self._trial: Config | None = None  # the configuration being trained (current task, and task 1 at task 2)

    def resolve_candidates(self) -> list[Config]:
        L, v = self.spec.num_layers, self.spec.variant
        if not self.config.configs:
            return list(iter_configs([1] * L))
        out = [parse_config(resolve_transfer(c, L, v)) for c in self.config.configs]
        if len(set(out)) != len(out):
            raise ConfigError(f"configs {self.config.configs} name the same configuration twice")
        return out

    def shared_layers(self) -> list[bool]:
        return [True] * self.spec.num_layers

    def first_config(self) -> Config:
        """The code's first task: HPS all task-specific, TF/DF-CNN all through the factorisation."""
        return (self.kind != "hps",) * self.spec.num_layers

    def config_for(self, task_id: int) -> Config:
        current = len(self.tasks) - 1
        if self._trial is not None and (task_id == current or (current == 1 and task_id == 0)):
            return self._trial
        return parse_config(self.configs[task_id])

    # ------------------------------------------------------------ structure
    def begin_task(self, meta: TaskMeta) -> None:
        Method.begin_task(self, meta)
        L = self.net.num_layers
        self.net.add_task(meta.id, meta.num_classes, [True] * L, [self.kind != "hps"] * L)
        if meta.id == 1 and self.kind != "hps":  # task 1's F layers become plain convs of its generated kernels
            for layer in self.net.layers:
                layer.add_task(0, own=True, transfer=False)
        for layer in self.net.layers:
            if not bool(layer.born):  # no committed task uses this shared layer: start it afresh
                layer.reset_shared()

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        self.configs = list(structure.get("configs", []))
        for t, c in enumerate(self.configs):
            self.net.commit(t, parse_config(c))

    def commit(self, t: int, cfg: Config) -> None:
        tasks = [0, 1] if t == 1 else [t]
        for s in tasks:
            self.net.commit(s, cfg)
        if t == 1:
            self.configs[0] = config_str(cfg)
        self.configs.append(config_str(cfg))
        with torch.no_grad():
            for l, layer in enumerate(self.net.layers):
                layer.born.fill_(any(parse_config(c)[l] for c in self.configs))

    @torch.no_grad()
    def retro_first_task(self, cfg: Config) -> None:
        """Apply candidate ``cfg`` to task 1 at task 2 without changing task 1's function."""
        for layer, c in zip(self.net.layers, cfg):
            if self.kind == "hps" and c:
                own = layer.own["0"]
                layer.shared["weight"].copy_(own.weight)
                layer.shared["bias"].copy_(own.bias)
            elif self.kind != "hps" and not c:
                w, b = layer.weight(0, True)
                layer.own["0"].weight.copy_(w)
                layer.own["0"].bias.copy_(b)

    def trial_parameters(self, t: int, cfg: Config) -> list[torch.nn.Parameter]:
        """The shared parts ``cfg`` uses, task t's own convs (F) or factors (T), and its head."""
        out: list[torch.nn.Parameter] = []
        for layer, c in zip(self.net.layers, cfg):
            out += layer.shared_tensors() if c else []
            parts = layer.ts if c else layer.own
            out += list(parts[str(t)].parameters()) if str(t) in parts else []
        return out + list(self.net.heads[str(t)].parameters())

    # ------------------------------------------------------------ the search
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        t = task.id
        if t == 0:
            cfg = self.first_config()
            self._trial = cfg
            info = fit_lasem_phase(self, ctx, task, self.trial_parameters(0, cfg), lambda b: self.task_loss(b, 0, cfg),
                                   lambda x: self.predict(x, 0), self.config)
            self._trial = None
            self.commit(0, cfg)
            return {"config": config_str(cfg), "owners": self.owners(0, cfg), "search": [], **info}
        start = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        epoch0, phase0 = int(self.global_epoch), ctx._phase_counter
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None
        search: list[dict[str, Any]] = []
        best: tuple[float, Config, dict[str, Any], dict[str, torch.Tensor], int, torch.Tensor] | None = None
        for cfg in self.candidates:
            self.net.load_state_dict(start)
            self.global_epoch.fill_(epoch0)
            ctx._phase_counter = phase0  # common random numbers: the same minibatch order for every candidate
            torch.set_rng_state(rng)  # ... and the same dropout draws
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, ctx.device)
            if t == 1:
                self.retro_first_task(cfg)
            self._trial = cfg
            info = fit_lasem_phase(self, ctx, task, self.trial_parameters(t, cfg), lambda b, c=cfg: self.task_loss(b, t, c),
                                   lambda x: self.predict(x, t), self.config)
            peak = info.get("peak") or {}
            val = peak.get("val_accuracy")
            score = -1.0 if val is None else float(val)  # no validation data: the first candidate wins
            search.append({"config": config_str(cfg), "val_accuracy": val, "test_accuracy": peak.get("test_accuracy")})
            if best is None or score > best[0]:
                best = (score, cfg, info, {k: v.detach().clone() for k, v in self.net.state_dict().items()},
                        int(self.global_epoch), torch.get_rng_state())
        assert best is not None
        _, cfg, info, state, epoch, rng_after = best
        self.net.load_state_dict(state)
        self.global_epoch.fill_(epoch)
        torch.set_rng_state(rng_after)
        self._trial = None
        self.commit(t, cfg)
        return {"config": config_str(cfg), "owners": self.owners(t, cfg), "search": search, **info}

    def task_summary(self, info: dict[str, Any]) -> str:
        n = len(info.get("search") or [])
        base = super().task_summary(info)
        return base if not n else base.replace(f"config {info.get('config')}",
                                               f"config {info.get('config')} (best of {n} on validation)")


class BruteForceHPS(BruteForce):
    name = "bruteforce-hps"
    paper = "Lee, Behpour, Eaton (ICML 2021): brute-force configuration search on hard parameter sharing (oracle)"
    kind = "hps"
    Config = BruteForceConfig


class BruteForceTF(BruteForce):
    name = "bruteforce-tf"
    paper = "Lee, Behpour, Eaton (ICML 2021): brute-force configuration search on tensor factorisation (oracle)"
    kind = "tf"
    Config = BruteForceTFConfig


class BruteForceDFCNN(BruteForce):
    name = "bruteforce-dfcnn"
    paper = "Lee, Behpour, Eaton (ICML 2021): brute-force configuration search on DF-CNN (oracle)"
    kind = "dfcnn"
    Config = BruteForceDFCNNConfig
