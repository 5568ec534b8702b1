"""The ``Method`` contract every continual-learning method implements.

A method is an ``nn.Module`` (its state is parameters and buffers, so checkpoints
and ``.to(device)`` come for free) with:

- ``begin_task(meta)``: grow structure for a new task (heads, widths). Called by the
  runner before ``fit_task`` and again, task by task, by ``rebuild`` when a
  checkpoint is loaded, so shapes always follow from recorded metadata.
- ``fit_task(task, ctx) -> info``: train on one task through ``ctx.fit`` phases;
  returns what the method decided (recorded in ``metrics.json``).
- ``predict(x, task_id)``: logits over the task's classes (task setting, ``task_id``
  given) or over every class seen so far (class setting, ``task_id is None``).
- ``predict_variants(x, task_id)``: optional extra classifiers (iCaRL's nearest mean,
  BiC before correction) evaluated into their own accuracy matrices.
- ``footprint()``: what must be stored to serve every task, counted as the papers do.
- ``extra_structure()`` / ``rebuild_extra(s)``: non-tensor decisions (e.g. a grown width)
  that ``rebuild`` needs before tensors can be loaded.

Methods never write files, parse arguments or pick a device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..data.scenario import Task
from ..engine.loop import TrainContext
from ..engine.optim import OptimConfig
from ..errors import ConfigError


@dataclass
class TaskMeta:
    """What structure depends on: known before training a task, recorded in checkpoints."""

    id: int
    name: str
    num_classes: int
    offset: int = 0  # class setting: first label of the task in the growing label space

    @staticmethod
    def of(task: Task) -> "TaskMeta":
        return TaskMeta(task.id, task.name, task.num_classes, task.offset)


@dataclass
class Footprint:
    """Storage needed to serve all tasks, in the papers' convention (fp32 = 4 bytes, a mask bit = 1/8)."""

    parameters: int
    bytes: int
    per_task_bytes: list[int] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainHParams:
    """Optimisation settings most methods share; each method's dataclass sets the paper's defaults."""

    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    schedule: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [50, 80])
    gamma: float = 0.1

    def optim(self, **overrides: Any) -> OptimConfig:
        cfg = OptimConfig(self.optimizer, self.lr, self.momentum, self.nesterov, self.weight_decay, self.schedule,
                          list(self.milestones), self.gamma)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return cfg

    def validate(self) -> None:
        """Raise ``ConfigError`` for values no run could use."""
        for name, value in asdict(self).items():
            if (name == "epochs" or name.endswith("_epochs")) and value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
            if (name == "lr" or name.endswith("_lr")) and value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
            if name == "batch_size" and value < 1:
                raise ConfigError(f"batch_size must be at least 1, got {value}")
            if name == "weight_decay" and value < 0:
                raise ConfigError(f"weight_decay must be >= 0, got {value}")


# ``make_backbone()`` builds a fresh backbone; ``make_backbone(width=m)`` one with m times the channels (CPG growing).
def check_choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    """Raise the one-line ``ConfigError`` for a hyperparameter outside its allowed values."""
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(allowed)}")


BackboneFactory = Callable[..., nn.Module]


class Method(nn.Module):
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    settings: ClassVar[tuple[str, ...]] = ("task", "class")
    Config: ClassVar[type] = TrainHParams
    # Overrides of Config defaults per setting (e.g. the class-incremental papers' schedule).
    setting_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # Defaults that follow from the value of one hyperparameter (``{"variant": {"aanets": {...}}}``),
    # applied after ``setting_defaults`` whenever the config file or ``--set`` chooses that value.
    variant_defaults: ClassVar[dict[str, dict[Any, dict[str, Any]]]] = {}
    # Overrides on a benchmark, applied after its epoch budget (where a paper's schedule cannot
    # converge in a toy budget's few hundred steps); recorded in config.yaml like every default.
    benchmark_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # Fraction of each task's train split the method wants held out for validation.
    val_fraction: ClassVar[float] = 0.0
    # Isolation methods: the runner verifies old tasks' outputs stay bit-identical.
    guarantees_unforgetting: ClassVar[bool] = False

    def __init__(self, config: Any, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__()
        if setting not in self.settings:
            raise ConfigError(f"method {self.name} supports the {' and '.join(self.settings)}-incremental setting"
                              f"{'s' if len(self.settings) > 1 else ''}, not --setting {setting}")
        self.config = config
        self.setting = setting
        self.make_backbone = make_backbone
        self.tasks: list[TaskMeta] = []

    # -------------------------------------------------------------- structure
    def begin_task(self, meta: TaskMeta) -> None:
        self.tasks.append(meta)

    def extra_structure(self) -> dict[str, Any]:
        return {}

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        pass

    def structure(self) -> dict[str, Any]:
        return {"tasks": [asdict(m) for m in self.tasks], "extra": self.extra_structure()}

    def rebuild(self, structure: dict[str, Any]) -> None:
        """Recreate the modules a checkpoint's tensors belong to (before ``load_state_dict``)."""
        for m in structure["tasks"]:
            self.begin_task(TaskMeta(**m))
        self.rebuild_extra(structure.get("extra", {}))

    @property
    def seen_classes(self) -> int:
        return sum(m.num_classes for m in self.tasks)

    # -------------------------------------------------------------- the contract
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predict_variants(self, x: torch.Tensor, task_id: int | None = None) -> dict[str, torch.Tensor]:
        return {}

    def footprint(self) -> Footprint:
        """Default: every parameter and buffer at its dtype's size; per-task = the task's head."""
        params = sum(p.numel() for p in self.parameters())
        nbytes = sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))
        return Footprint(params, nbytes)

    def on_resume(self, task: Task) -> None:
        """Called for each finished task after a checkpoint is loaded, in order, for methods that
        keep training inputs outside their state (``joint``'s pool of seen data)."""

    def memory_size(self) -> int | None:
        """Exemplars stored (class-incremental replay methods); None when a method keeps none."""
        return None

    def check_stream(self, tasks: list[TaskMeta]) -> None:
        """Raise ``ConfigError`` before anything trains when this configuration cannot run the whole
        stream (e.g. a memory too small for the last step's classes): a user learns it in a second,
        not after the first task has trained."""

    def task_summary(self, info: dict[str, Any]) -> str:
        """A few words on what the method decided for a task (CPG's ratio and growth, BiC's alpha and
        beta), printed after the task's accuracy line; ``info`` is what ``fit_task`` returned."""
        return ""


def weight_decay_groups(params: list[nn.Parameter], modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Two optimiser groups: the weights of conv and linear layers with ``weight_decay``, everything
    else (biases, BatchNorm, scales) without. Lasagne's ``regularize_network_params(l2)`` (iCaRL's
    Theano code) and BiC's TF code decay only such weights."""
    decayed = {id(m.weight) for mod in modules for m in mod.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.weight is not None}
    return [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def module_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
