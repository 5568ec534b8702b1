"""The one training loop. Methods describe a ``Phase`` and customise it through hooks.

A method's ``fit_task`` calls ``ctx.fit(phase)`` once per stage it needs (CPG:
finetune, prune steps, retrain; BiC: stage 1, then the bias layer on validation
exemplars); no method writes its own epoch loop. Hooks:

- ``loss(batch) -> StepOutput``: the forward pass and the loss (extra terms such as
  distillation live here);
- ``after_backward()``: gradient masking (weights owned by earlier tasks);
- ``after_step()``: re-zeroing pruned weights, clamping, ownership checks;
- ``on_epoch_end(epoch, stats) -> bool | None``: per-epoch callbacks; True stops the phase;
- ``train_mode()``: set module modes (e.g. BatchNorm kept in eval by Piggyback).

A phase may carry an ``interleave`` phase: one epoch of it runs after every epoch of the main
one, with its own optimiser and schedule kept across epochs (AANets: network weights on all data,
then the aggregation weights on a balanced subset, per epoch). ``zero_grad=False`` leaves a
phase's gradients uncleared (they accumulate, AANets' official alpha quirk) and
``grad_only_params`` back-propagates into the phase's own parameters only.

The loop never calls ``.item()`` inside an epoch (no device sync per step).

Under torchrun (``engine.distributed``) each rank computes a contiguous shard of every batch, its
loss weighted by its share, and the gradients of every touched leaf are summed over ranks before
the hooks and the optimiser step; BatchNorm uses the global batch's statistics
(``nn.sync_batchnorm``); ``outputs`` and ``accuracy`` shard the set and gather the rows back.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from ..data import augment
from ..data.augment import AugmentSpec
from ..data.imageset import ImageSet
from ..nn.sync_batchnorm import replicas, sync_batchnorm
from .distributed import World, grad_leaves, reduce_gradients, snapshot_grads
from .optim import OptimConfig, Schedule, build_optimizer


@dataclass
class Batch:
    x: torch.Tensor  # augmented, normalised float images on the device
    y: torch.Tensor  # labels on the device
    task: torch.Tensor | None  # per-sample task ids on the device (joint multi-task data), else None
    index: torch.Tensor  # positions in the phase's ImageSet (CPU), e.g. to look up stored targets
    rows: int = 0  # rows of the whole batch this one is a rank's shard of (0: this batch is whole)


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor | None = None  # for running train accuracy (argmax vs batch.y)


@dataclass
class EpochStats:
    phase: str
    epoch: int
    loss: float
    accuracy: float | None
    lr: float
    seconds: float
    samples_per_s: float


@dataclass
class Phase:
    name: str
    data: ImageSet
    params: Iterable[Any]  # parameters or param-group dicts
    epochs: int
    optim: OptimConfig
    loss: Callable[[Batch], StepOutput]
    batch_size: int = 128
    after_backward: Callable[[], None] | None = None
    after_step: Callable[[], None] | None = None
    on_epoch_end: Callable[[int, EpochStats], bool | None] | None = None
    train_mode: Callable[[], None] | None = None
    modules: list[torch.nn.Module] = field(default_factory=list)  # put in train mode unless train_mode is given
    mean: tuple[float, ...] | None = None  # normalisation (default: the scenario's)
    std: tuple[float, ...] | None = None
    augment: bool = True
    shuffle: bool = True  # False: batches in data order (BiC's original bias-correction stage)
    monitor: Callable[[], float] | None = None  # plateau schedule: a value to minimise (default: train loss)
    # Further (params, optim) pairs, each with its own optimiser and schedule, stepped with the main one
    # (CPG/Piggyback: SGD on weights plus Adam on picking masks in one pass over the data).
    extra_optims: list[tuple[Iterable[Any], OptimConfig]] = field(default_factory=list)
    # A second phase run for one epoch after each epoch of this one; its optimiser and schedule persist
    # across epochs and its ``epochs`` is its schedule's length (AANets: alphas on the balanced subset).
    interleave: "Phase | None" = None
    zero_grad: bool = True  # False: never clear this phase's gradients (they sum over steps and phases)
    grad_only_params: bool = False  # backward into this phase's parameters only (no other leaf gets .grad)


@dataclass
class _Run:
    """A phase being trained: its optimisers, schedules and generator, kept across its epochs."""

    phase: Phase
    gen: torch.Generator
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    extra: list[tuple[torch.optim.Optimizer, Schedule]]
    optimizers: list[torch.optim.Optimizer]
    scaler: Any
    inputs: list[torch.Tensor] | None  # grad_only_params: the tensors backward accumulates into
    loss: Callable[[Batch], StepOutput]  # the phase's loss, compiled with ``--compile``
    leaves: list[torch.Tensor]  # several ranks: every tensor a backward may give a gradient, summed over ranks


def batch_indices(n: int, batch_size: int, shuffle: bool, gen: torch.Generator | None) -> list[torch.Tensor]:
    """The one place batches are drawn (a distributed sampler shards these later)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


class TrainContext:
    """What ``fit_task`` receives: device, precision, the loop, evaluation helpers, seeded RNGs.

    A method never picks a device, writes files or parses arguments; everything it
    needs from the run comes through here.
    """

    def __init__(self, device: torch.device, augment_spec: AugmentSpec, seed: int = 0, precision: str = "32",
                 epoch_log: Callable[[dict], None] | None = None, progress: bool = False,
                 num_tasks: int | None = None, num_classes: int | None = None, world: World | None = None,
                 sync_bn: bool = True, channels_last: bool = False, compile: str | None = None) -> None:
        self.device = device
        self.compile = compile  # a torch.compile backend for every phase's loss (forward and loss), None: eager
        self.channels_last = channels_last  # NHWC networks and inputs (faster convolutions on tensor cores)
        # load (and pin) the next batch in a thread while the device computes this one; on the CPU the
        # decoding would only compete with the computation for the same cores
        self.prefetch = device.type == "cuda"
        self.world = world or World()
        self.sync_bn = sync_bn  # several ranks: BatchNorm over the global batch (docs/scaling.md)
        self.model: torch.nn.Module | None = None  # the method being trained (set by the runner)
        self.augment_spec = augment_spec
        self.seed = seed
        self.precision = precision
        self.epoch_log = epoch_log
        self.progress = progress
        self.task_id = 0
        self._phase_counter = 0
        self.task_mean: tuple[float, ...] | None = None
        self.task_std: tuple[float, ...] | None = None
        self.num_tasks = num_tasks  # length of the stream when known (CPG's reserved capacity)
        self.num_classes = num_classes  # classes in the whole stream (iCaRL's full output layer)

    # ------------------------------------------------------------------ RNG
    def start_task(self, task_id: int, mean=None, std=None) -> None:
        self.task_id = task_id
        self._phase_counter = 0
        self.task_mean, self.task_std = mean, std

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from (run seed, task, phase count, salt): independent of
        everything that ran before, so a resumed run draws the same numbers."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.task_id * 10_007 + self._phase_counter * 101 + salt) % (2**63))
        return g

    # ------------------------------------------------------------------ data
    def _autocast(self):
        if self.device.type == "cuda" and self.precision in ("bf16", "16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return torch.autocast(self.device.type, enabled=False)

    def iterate(self, data: ImageSet, batch_size: int, train: bool, gen: torch.Generator | None = None,
                mean=None, std=None, do_augment: bool = True, shuffle: bool | None = None,
                shard: bool = False) -> Iterator[Batch]:
        """Batches of device tensors; augmented when ``train`` (needs ``gen``), else test-transformed.
        ``shard``: this rank's part of each batch (the training loop under torchrun)."""
        mean = mean or self.task_mean
        std = std or self.task_std
        non_blocking = self.device.type == "cuda"
        tasks = data.tasks
        world = self.world if shard else World()
        batches = []
        for idx in batch_indices(len(data), batch_size, shuffle=train if shuffle is None else shuffle, gen=gen):
            start, stop = world.part(len(idx))
            batches.append((len(idx), start, stop, idx[start:stop]))

        def load(idx: torch.Tensor) -> torch.Tensor:
            x = torch.as_tensor(data.batch_images(idx))
            return x.pin_memory() if non_blocking else x

        for (rows, start, stop, idx), x in zip(batches, self._prefetched(load, [b[3] for b in batches])):
            x = x.to(self.device, non_blocking=non_blocking)
            if train and do_augment:
                part = (rows, start, stop) if world.active else None
                x = augment.train_batch(x, self.augment_spec, gen, mean, std, part)  # type: ignore[arg-type]
            else:
                x = augment.eval_batch(x, self.augment_spec, mean, std)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = data.labels[idx].to(self.device, non_blocking=non_blocking)
            t = None if tasks is None else tasks[idx].to(self.device, non_blocking=non_blocking)
            yield Batch(x, y, t, idx, rows if world.active else 0)

    def _prefetched(self, load: Callable[[torch.Tensor], torch.Tensor], indices: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """``load(idx)`` for each batch in order; with ``prefetch`` the next one loads in a thread meanwhile."""
        if not self.prefetch or len(indices) < 2:
            yield from (load(idx) for idx in indices)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, indices[0])
            for i in range(len(indices)):
                x = pending.result()
                if i + 1 < len(indices):
                    pending = pool.submit(load, indices[i + 1])
                yield x

    def shard(self, data: ImageSet) -> ImageSet:
        """This rank's contiguous part of ``data`` (all of it in one process); ``gather`` undoes it."""
        start, stop = self.world.part(len(data))
        return data if (start, stop) == (0, len(data)) else data.subset(torch.arange(start, stop))

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Rows computed on ``shard(data)`` (``n = len(data)``) -> the whole set's rows, on every rank."""
        return self.world.gather(local, n)

    @torch.no_grad()
    def batch_mean(self, value: torch.Tensor, batch: Batch) -> torch.Tensor:
        """A mean over this rank's shard of ``batch`` -> the mean over the whole batch, on every rank
        (a statistic a loss computes from its batch, e.g. LASEM's E-step likelihood); unchanged in one process."""
        if not self.world.active or not batch.rows:
            return value
        total = value.detach() * self.world.weight(batch.rows)
        self.world.sum_([total])
        return total

    def shard_mean(self, total: torch.Tensor, count: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``total / count`` for a loss term averaged over a data-dependent count (LUCIR's margin loss over
        the batch's old-class samples): under torchrun the count is the whole batch's, scaled so that the
        loop's shard weighting and the ranks' gradient sum give the one-process value."""
        if not self.world.active or not batch.rows:
            return total / count.clamp(min=1)
        counts = count.detach().reshape(1).to(torch.float64)
        self.world.sum_([counts])
        return total / (counts[0].to(total.dtype).clamp(min=1) * self.world.weight(batch.rows))

    @torch.no_grad()
    def outputs(self, fn: Callable[[torch.Tensor], torch.Tensor], data: ImageSet, batch_size: int = 256,
                mean=None, std=None, shard: bool = True) -> torch.Tensor:
        """``fn`` (e.g. logits for one task, or features) over a whole set, test-transformed, on the CPU.
        Under torchrun each rank computes its shard and every rank gets all rows (``shard=False``:
        every rank computes all of them, e.g. the fixed-batch probes of unforgetting)."""
        part = self.shard(data) if shard else data
        outs = []
        with self._autocast():
            for b in self.iterate(part, batch_size, train=False, mean=mean, std=std):
                outs.append(fn(b.x).float().cpu())
        local = torch.cat(outs) if outs else torch.zeros(0)
        return self.gather(local, len(data)) if shard and len(data) else local

    def accuracy(self, fn: Callable[[torch.Tensor], torch.Tensor], data: ImageSet, mean=None, std=None) -> float:
        if len(data) == 0:
            return float("nan")
        logits = self.outputs(fn, data, mean=mean, std=std)
        return (logits.argmax(1) == data.labels).float().mean().item()

    # ------------------------------------------------------------------ the loop
    def fit(self, phase: Phase) -> list[EpochStats]:
        """Train ``phase.epochs`` epochs over ``phase.data``; returns per-epoch statistics (of the main
        phase; an ``interleave`` phase's epochs are logged, not returned)."""
        self._phase_counter += 1
        gen = self.generator()
        history: list[EpochStats] = []
        if phase.epochs <= 0 or len(phase.data) == 0:
            return history
        if self.world.active and self.sync_bn and self.model is not None:
            sync_batchnorm(self.model)  # again each phase: a method may have grown its networks
        if self.channels_last and self.model is not None:
            self.model.to(memory_format=torch.channels_last)  # again each phase, as above
        run = self._start(phase, gen)
        sub = None
        if phase.interleave is not None and phase.interleave.epochs > 0 and len(phase.interleave.data):
            self._phase_counter += 1
            sub = self._start(phase.interleave, self.generator())
        for epoch in range(phase.epochs):
            stats, stop, keep_going = self._epoch(run, epoch)
            history.append(stats)
            if sub is not None:
                self._epoch(sub, epoch)
            if stop or not keep_going:
                break
        return history

    def _start(self, phase: Phase, gen: torch.Generator) -> _Run:
        params = list(phase.params)
        optimizer = build_optimizer(params, phase.optim)
        schedule = Schedule(optimizer, phase.optim, phase.epochs)
        extra = [(opt, Schedule(opt, cfg, phase.epochs))
                 for opt, cfg in ((build_optimizer(list(p), c), c) for p, c in phase.extra_optims)]
        optimizers = [optimizer] + [opt for opt, _ in extra]
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and self.precision == "16")
        owned = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        inputs = owned if phase.grad_only_params else None
        leaves: list[torch.Tensor] = []
        if self.world.active:
            others = [] if inputs is not None or self.model is None else list(self.model.parameters())
            leaves = grad_leaves(owned + others)
        loss: Callable[[Batch], StepOutput] = phase.loss
        if self.compile:  # the loss closure, not the modules: a deep-copied teacher must stay its own network
            loss = torch.compile(phase.loss, backend=self.compile)
        return _Run(phase, gen, optimizer, schedule, extra, optimizers, scaler, inputs, loss, leaves)

    def _epoch(self, run: _Run, epoch: int) -> tuple[EpochStats, bool | None, bool]:
        """One epoch of ``run.phase``: steps, statistics, logging, its hooks and its schedule step."""
        phase, gen, optimizer, optimizers, scaler = run.phase, run.gen, run.optimizer, run.optimizers, run.scaler
        amp = self.device.type == "cuda" and self.precision in ("bf16", "16")
        if phase.train_mode is not None:
            phase.train_mode()
        else:
            for m in phase.modules:
                m.train()
        start = time.perf_counter()
        world = self.world
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = torch.zeros((), dtype=torch.float64)  # rows, counted once over ranks (summed at the end)
        counted = torch.zeros((), dtype=torch.float64)
        batches = self.iterate(phase.data, phase.batch_size, True, gen, phase.mean, phase.std, phase.augment,
                               phase.shuffle, shard=True)
        bar = self._bar(phase, epoch)
        for batch in batches:
            if phase.zero_grad:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
            n = len(batch.y)
            share = world.weight(batch.rows) if world.active else 1.0  # this rank's part of the batch's mean
            before = snapshot_grads(run.leaves) if world.active else []
            with replicas(world.size if world.active and batch.rows < world.size else 1):
                if amp:
                    with self._autocast():
                        out = run.loss(batch)
                else:
                    out = run.loss(batch)
            loss = out.loss if share == 1.0 else out.loss * share
            if scaler.is_enabled():
                scaler.scale(loss).backward(inputs=run.inputs)
                reduce_gradients(world, run.leaves, before)
                for opt in optimizers:
                    scaler.unscale_(opt)  # hooks see true gradients
                if phase.after_backward is not None:
                    phase.after_backward()
                for opt in optimizers:
                    scaler.step(opt)
                scaler.update()
            else:  # the plain path: no scaler bookkeeping per step
                loss.backward(inputs=run.inputs)
                reduce_gradients(world, run.leaves, before)
                if phase.after_backward is not None:
                    phase.after_backward()
                for opt in optimizers:
                    opt.step()
            if phase.after_step is not None:
                phase.after_step()
            rows = n / world.size if world.active and batch.rows < world.size else n  # a replica counts 1/size
            loss_sum += out.loss.detach() * rows
            if out.logits is not None:
                correct += (out.logits.detach().argmax(1) == batch.y).sum() * (rows / n)
                counted += rows
            seen += rows
            if bar is not None:
                bar.update(n)
                steps = bar.n // max(1, phase.batch_size)
                if steps % 10 == 1:  # a device sync only every 10 steps, and only with a bar shown
                    bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}",
                                    acc="-" if not counted else f"{correct.item() / counted:.3f}")
        totals = torch.stack([loss_sum.double().cpu(), correct.double().cpu(), seen, counted])
        world.sum_([totals])  # several ranks: the epoch's figures over the whole data
        loss_total, correct_total, seen_total, counted_total = totals.tolist()
        seconds = time.perf_counter() - start
        loss = loss_total / max(1.0, seen_total)
        stats = EpochStats(phase.name, epoch + 1, loss, (correct_total / counted_total) if counted_total else None,
                           optimizer.param_groups[0]["lr"], seconds, seen_total / max(seconds, 1e-9))
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", acc="-" if stats.accuracy is None else f"{stats.accuracy:.3f}",
                            img_s=f"{stats.samples_per_s:.0f}")
            bar.close()
        if self.epoch_log is not None:
            self.epoch_log({"task": self.task_id + 1, **stats.__dict__})
        stop = phase.on_epoch_end(epoch + 1, stats) if phase.on_epoch_end is not None else None
        keep_going = run.schedule.step(phase.monitor() if phase.monitor is not None else loss)
        for _, extra_schedule in run.extra:
            extra_schedule.step(loss)
        return stats, stop, keep_going

    def _bar(self, phase: Phase, epoch: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=len(phase.data), desc=f"task {self.task_id + 1} {phase.name} {epoch + 1}/{phase.epochs}",
                    unit="img", leave=False, dynamic_ncols=True, unit_scale=True, disable=None)
