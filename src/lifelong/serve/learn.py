"""``lifelong learn RUN_DIR --task-folder DIR``: one more task for a finished run, from the user's images.

The run's newest checkpoint is loaded (method, RNG state, metrics record), the run's own stream is
rebuilt from its configuration (earlier tasks must be re-evaluated and, for isolation methods,
re-verified bit for bit against their stored output fingerprints), the folder becomes task
``T + 1`` in the run's image format and label space (``data/taskfolder.py``), and the runner's
per-task path trains, evaluates, checks and checkpoints it exactly as ``lifelong run`` would have
(``engine.runner._train_tasks``): a new row and column of the accuracy matrix in ``metrics.json``,
``checkpoints/task-<T+1>.pt``, epoch rows in ``log.csv``. The task's spec travels in the record, so
``eval``, ``--resume`` and a later ``learn`` rebuild it from the same folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from ..config import apply_epochs, from_dict
from ..data.taskfolder import check_name, learned_task
from ..engine.checkpoint import set_rng_state
from ..engine.device import check_precision, pick_device, seed_everything
from ..engine.loop import TrainContext
from ..engine.rundir import RunDir
from ..engine.runner import (Result, _Record, _train_tasks, build_method, scenario_for, val_fraction_for,
                             write_figures)
from ..errors import CheckpointError, ConfigError, DataError
from ..methods.base import TaskMeta


def learn(run_dir: str | Path, task_folder: str | Path, name: str | None = None, epochs: int | None = None,
          data_root: str | Path | None = None, device: str | None = None, echo: Callable[[str], None] | None = None,
          progress: bool = False) -> Result:
    """Learn the image folder ``task_folder`` (``<class>/*``, or ``train/`` and ``test/``) as one more task
    of the finished run in ``run_dir``; ``epochs`` overrides every training phase's epochs for this task.
    Returns the run's updated metrics (also in ``metrics.json``)."""
    say = echo or (lambda s: None)
    rundir = RunDir.open_existing(Path(run_dir))
    ckpt = rundir.latest_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint; a run must finish its tasks before it can learn another")
    cfg = from_dict(ckpt["config"])
    cfg.out = str(run_dir)
    if data_root is not None:
        cfg.data_root = str(data_root)
    if device is not None:
        cfg.device = device
    rec = _Record.from_state(ckpt["record"])
    finished = int(ckpt["task"]) + 1
    dev = pick_device(cfg.device)
    check_precision(cfg.precision, dev)
    seed_everything(cfg.seed)
    try:
        scenario = scenario_for(cfg, rec.learned)
    except DataError as exc:
        raise DataError(f"learn re-evaluates the run's earlier tasks on their own test images, which cannot be loaded "
                        f"({exc}); pass --data-root DIR holding the run's {cfg.benchmark} data") from None
    if finished < len(scenario):
        raise ConfigError(f"{run_dir} has finished {finished} of its {len(scenario)} tasks; finish it first with "
                          f"`lifelong run --resume --out {run_dir}`")
    name = Path(task_folder).expanduser().resolve().name if name is None else name
    check_name(name, scenario)
    task, spec = learned_task(task_folder, name, scenario, cfg.benchmark_options, val_fraction_for(cfg))
    if scenario.setting == "class":
        seen = {c for t in scenario.tasks for c in t.class_names}
        again = [c for c in task.class_names if c in seen]
        if again:
            raise DataError(f"class-incremental: {', '.join(repr(c) for c in again)} already in the run; a new step "
                            "adds new classes only (rename the class folders)")
    scenario.tasks.append(task)

    method = build_method(cfg, scenario, dev)
    method.rebuild(ckpt["structure"])
    try:
        method.load_state_dict(ckpt["state"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit method {cfg.method}: {str(exc).splitlines()[0]}") from None
    method.to(dev)
    for t in scenario.tasks[:finished]:
        method.on_resume(t)
    method.check_stream([TaskMeta.of(t) for t in scenario.tasks])  # e.g. a memory too small for the new classes
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs {epochs} must be at least 1")
        hp = copy.deepcopy(cfg.hparams)
        apply_epochs(hp, epochs)
        hp.validate()
        method.config = hp  # this task only: the checkpoint keeps the run's configuration
        spec["epochs"] = epochs

    rec.extend(len(scenario))
    rec.learned.append(spec)
    log_rows: list[dict[str, Any]] = rundir.read_log()
    ctx = TrainContext(dev, scenario.augment, cfg.seed, cfg.precision, log_rows.append, progress, len(scenario),
                       scenario.num_classes)
    set_rng_state(ckpt["rng"])
    say(f"learning task {finished + 1} {name!r} ({len(task.class_names)} classes, {len(task.train)} train / "
        f"{len(task.test)} test images) for {cfg.method} in {run_dir}")
    _train_tasks(cfg, scenario, method, ctx, rec, rundir, log_rows, finished, say, None)  # Ctrl-C: the run is unchanged
    metrics = rundir.read_metrics()
    write_figures(cfg, scenario, rec, method, rundir)
    return Result(rundir.path, metrics["accuracy"], metrics["final_accuracy"], metrics["average_accuracy"],
                  metrics["average_incremental_accuracy"], metrics["forgetting"], metrics["average_forgetting"],
                  metrics["footprint"], metrics, method, scenario)
