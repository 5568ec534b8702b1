"""Experience replay (ER): finetune plus a bounded, class-balanced memory of old training images.

Each task trains on its new data joined with every exemplar kept so far (one shuffled set, as
iCaRL's training set and the "add the buffer to the current training data" replay of van de Ven
et al.'s code), then updates the memory from the task's data:

- ``selection: reservoir`` (default): Vitter's Algorithm R over the stream of every training image
  seen (ER as Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning", and the
  Mammoth/CLR baselines), then a class-balanced truncation to the budget's per-class share
  (``memory.reservoir_sample``, ``memory.first_per_class``): no class ever holds more than
  ``floor(K / classes)`` (``budget: total``) or ``K`` (``per_class``); a class the reservoir
  sampled less keeps fewer.
- ``random`` / ``herding``: the class-balanced random or iCaRL-herded exemplars of ``memory.py``,
  exactly the per-class share each (old classes shrink to a prefix, new classes are selected).

Task setting: one head per task; the memory stores global class ids, from which each exemplar's
task and task-local label follow, and a mixed batch is scored per sample on its own task's head
(``MultiHead.forward_mixed``, as ``joint``). Class setting: one growing head, cross-entropy over
every seen class.

Deviation from Chaudhry et al.'s ER: their batches are half stream, half memory; ours are drawn
from the joined set (the shared loop draws one set's batches), so the memory's share of a batch is
its share of the set. The memory is updated once at the end of a task (an online ER updates it
while the task's single pass streams by; over whole epochs the end state is what counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.imageset import ImageSet
from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..nn.heads import MultiHead, head_for
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice
from .finetune import CLASS_INCREMENTAL_SCHEDULE
from .memory import (SELECTIONS, Budget, ExemplarMemory, add_exemplars, first_per_class, replay_footprint,
                     reservoir_sample)

REPLAY_SELECTIONS = ("reservoir",) + SELECTIONS


@dataclass
class ReplayConfig(TrainHParams):
    """Optimisation as ``finetune`` (the comparison's shared schedule: CPG's per-task one, class
    setting ``CLASS_INCREMENTAL_SCHEDULE``); memory as the class-incremental papers' protocol."""

    memory: int = 2000  # iCaRL Sec. 4 / BiC Sec. 5: K = 2,000 exemplars on CIFAR-100 (--memory)
    budget: str = "total"  # "total": K shared by the seen classes (iCaRL, BiC); "per_class": K per class
    selection: str = "reservoir"  # ER's reservoir (Chaudhry et al. 2019); "random" | "herding" (iCaRL Alg. 4)

    def validate(self) -> None:
        super().validate()
        Budget(self.budget, self.memory)
        check_choice("selection", self.selection, REPLAY_SELECTIONS)


class Replay(Method):
    name = "replay"
    paper = "Experience replay (Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning)"
    settings = ("task", "class")
    Config = ReplayConfig
    setting_defaults = {"class": CLASS_INCREMENTAL_SCHEDULE}

    def __init__(self, config: ReplayConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        dim = self.backbone.out_dim
        self.head = head_for(setting, dim)
        # Exemplars keyed by global class id (task setting: position in the stream's classes).
        self.memory = ExemplarMemory()
        # Training images the reservoir has seen (Algorithm R's stream position), kept for --resume.
        self.register_buffer("stream_seen", torch.zeros((), dtype=torch.long))

    @property
    def budget(self) -> Budget:
        return Budget(self.config.budget, self.config.memory)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)

    def check_stream(self, tasks: list[TaskMeta]) -> None:
        self.budget.require(sum(t.num_classes for t in tasks), 1, "replay")

    def logits(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head.logits(feats, task_id)

    # ------------------------------------------------------------------ label spaces
    def class_base(self, task_id: int) -> int:
        """First global class id of a task (class setting: its offset)."""
        return sum(m.num_classes for m in self.tasks[:task_id])

    def memory_set(self) -> ImageSet:
        """The exemplars as training data: class setting, global labels; task setting, each exemplar's
        task-local label and its task id (for ``MultiHead.forward_mixed``)."""
        data = self.memory.data()
        if self.setting == "class" or not len(data):
            return data
        starts = torch.tensor([self.class_base(t) for t in range(len(self.tasks))])
        task_of = torch.bucketize(data.labels, starts, right=True) - 1
        return ImageSet(data.images, data.labels - starts[task_of], task_of, data.class_names)

    def train_set(self, task: Task) -> Any:
        new = task.train.with_tasks(task.id) if self.setting == "task" else task.train
        return ImageSet.concat([new, self.memory_set()])

    # ------------------------------------------------------------------ training
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: ReplayConfig = self.config
        n_seen = self.class_base(task.id) + task.num_classes
        self.budget.require(n_seen, 1, "replay")
        train = self.train_set(task)
        from_memory = len(self.memory)

        def loss(b: Batch) -> StepOutput:
            feats = self.backbone(b.x)
            if isinstance(self.head, MultiHead):
                return StepOutput(self.head.forward_mixed(feats, b.task, b.y))  # type: ignore[arg-type]
            out = self.head(feats)
            return StepOutput(F.cross_entropy(out, b.y), out)

        ctx.fit(Phase("train", train, list(self.backbone.parameters()) + list(self.head.parameters()), cfg.epochs,
                      cfg.optim(), loss, cfg.batch_size, modules=[self]))
        self.update_memory(task, ctx)
        counts = self.memory.counts()
        return {"train_samples": len(train), "replayed": from_memory, "memory": len(self.memory),
                "exemplars_per_class": self.budget.per_class(n_seen),
                "memory_per_class": [min(counts.values()), max(counts.values())] if counts else [0, 0]}

    @torch.no_grad()
    def update_memory(self, task: Task, ctx: TrainContext) -> None:
        """Fold the task's training data into the memory, class-balanced, within the budget."""
        cfg: ReplayConfig = self.config
        base = self.class_base(task.id)
        n_seen = base + task.num_classes
        m = self.budget.per_class(n_seen)
        data = task.train if self.setting == "class" else task.train.with_labels(task.train.labels + base)  # global ids
        gen = ctx.generator(salt=1)
        if cfg.selection != "reservoir":
            self.eval()
            self.memory.truncate(m)
            add_exemplars(ctx, self.memory, self.backbone, data, list(range(base, n_seen)), m, cfg.selection, gen)
            return
        kept = len(self.memory)
        ids = reservoir_sample(kept, int(self.stream_seen), len(data), self.budget.capacity(n_seen), gen)
        labels = torch.cat([self.memory.labels, data.labels])[ids]
        ids = ids[first_per_class(labels, m)]
        old, new = ids[ids < kept], ids[ids >= kept] - kept
        images = torch.cat([self.memory.images[old], torch.as_tensor(data.batch_images(new))]) if len(ids) else None
        labels = torch.cat([self.memory.labels[old], data.labels[new]])
        chosen = {c: (images[labels == c] if images is not None else torch.zeros(0, dtype=torch.uint8), c)  # type: ignore[index]
                  for c in set(self.memory.classes()) | set(range(base, n_seen))}
        self.memory.replace(chosen)
        self.stream_seen.fill_(int(self.stream_seen) + len(data))

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.logits(x, task_id if self.setting == "task" else None)

    def memory_size(self) -> int | None:
        return len(self.memory)

    def footprint(self) -> Footprint:
        heads = self.head.per_task()
        return replay_footprint([self.backbone, self.head], [self.memory], heads,
                                "shared backbone + heads fp32, exemplars as uint8 images + int64 labels")
