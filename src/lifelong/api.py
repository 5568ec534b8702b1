"""The Python API: the same job as the CLI, and the pieces to build your own.

    import lifelong
    result = lifelong.run(method="joint", benchmark="digits", epochs=3)
    result.average_accuracy

Pieces: ``load_scenario`` (a preset or your own folder), ``create_method``,
``TrainContext`` (for ``fit_task``; ``ctx.outputs(fn, data)`` applies the test transform and
normalisation), ``evaluate``, ``load_run`` (a finished run's method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from .config import RunConfig, from_dict, resolve
from .data.benchmarks import BenchmarkConfig, build_scenario
from .data.scenario import Scenario
from .engine.device import pick_device
from .engine.loop import TrainContext
from .engine.rundir import RunDir
from .engine.runner import Result, build_method, run_job, scenario_for
from .methods.base import Method, TaskMeta

_CLI_KEYS = {"tasks", "base", "increment", "memory", "backbone", "device", "precision", "keep"}


def run(method: str, benchmark: str, setting: str | None = None, out: str | Path | None = None, seed: int = 0,
        epochs: int | None = None, data_root: str | Path | None = None, resume: bool = False, verbose: bool = False,
        **overrides: Any) -> Result:
    """Train ``method`` on ``benchmark`` and return its metrics (also written to the run folder).

    ``overrides``: ``tasks``, ``base``, ``increment``, ``memory``, ``backbone``, ``device``, ``precision``,
    ``keep`` as on the command line; any other keyword is a ``--set`` key (``lr=0.05``,
    ``backbone__width=2`` for ``backbone.width``, ``benchmark__class_order=[...]``).
    ``resume=True`` continues the run in ``out`` as its checkpoint's configuration says; of the
    arguments given, only ``device``, ``precision`` and ``data_root`` apply then.
    """
    flags = {k: v for k, v in overrides.items() if k in _CLI_KEYS}
    sets = [f"{k.replace('__', '.')}={_yaml(v)}" for k, v in overrides.items() if k not in _CLI_KEYS]
    cfg = resolve(method, benchmark, setting, sets=sets,
                  overrides={"seed": seed, "epochs": epochs, "data_root": str(data_root) if data_root else None, **flags})
    return run_job(cfg, Path(out) if out else None, resume=resume, echo=print if verbose else None)


def _yaml(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def load_scenario(benchmark: str, setting: str | None = None, data_root: str | Path | None = None,
                  val_fraction: float = 0.0, **options: Any) -> Scenario:
    """A scenario from a preset (``digits``, ``cifar100``, ...) or your folder (``folder`` + ``data_root``)."""
    cfg = BenchmarkConfig(**options)
    return build_scenario(benchmark, setting, cfg, Path(data_root) if data_root else None, val_fraction)


def create_method(method: str, scenario: Scenario, device: str = "auto", **overrides: Any) -> tuple[Method, TrainContext]:
    """A method ready for ``fit_task`` on ``scenario``'s tasks, and the context to train it with.

        m, ctx = lifelong.create_method("finetune", scen, epochs=2)
        for task in scen.tasks:
            ctx.start_task(task.id, task.mean, task.std); m.begin_task(lifelong.TaskMeta.of(task)); m.fit_task(task, ctx)
    """
    epochs = overrides.pop("epochs", None)
    sets = [f"{k.replace('__', '.')}={_yaml(v)}" for k, v in overrides.items()]
    cfg = resolve(method, scenario.name, scenario.setting, sets=sets, overrides={"epochs": epochs, "device": device})
    dev = pick_device(cfg.device)
    return build_method(cfg, scenario, dev), TrainContext(dev, scenario.augment, cfg.seed, num_tasks=len(scenario))


def evaluate(method: Method, scenario: Scenario, ctx: TrainContext | None = None, upto: int | None = None) -> dict[str, Any]:
    """Accuracy of ``method`` on the test split of every task up to ``upto`` (default: all of them), with
    the scenario's test transform: ``{"accuracy": [per task], "seen_accuracy": over all those tasks' images}``
    (in the class setting ``seen_accuracy`` is the papers' accuracy on every class seen)."""
    from .engine.evaluate import evaluate as evaluate_row

    if ctx is None:
        ctx = TrainContext(next(method.parameters()).device, scenario.augment)
    last = len(scenario) - 1 if upto is None else upto
    was_training = method.training
    row = evaluate_row(method, scenario, last, ctx)
    method.train(was_training)
    return {"accuracy": list(row.top1), "seen_accuracy": row.seen_top1}


def load_run(run_dir: str | Path, data_root: str | Path | None = None, device: str = "auto") -> tuple[Method, Scenario, RunConfig]:
    """The method of a run's newest checkpoint, rebuilt, with its scenario and configuration."""
    rundir = RunDir.open_existing(Path(run_dir))
    ckpt = rundir.latest_checkpoint()
    if ckpt is None:
        from .errors import CheckpointError

        raise CheckpointError(f"{run_dir} has no checkpoint")
    cfg = from_dict(ckpt["config"])
    if data_root is not None:
        cfg.data_root = str(data_root)
    scenario = scenario_for(cfg, ckpt["record"].get("learned"))  # with the tasks `lifelong learn` appended
    dev = pick_device(device)
    method = build_method(cfg, scenario, dev)
    method.rebuild(ckpt["structure"])
    method.load_state_dict(ckpt["state"])
    method.to(dev).eval()
    return method, scenario, cfg


__all__ = ["run", "load_scenario", "create_method", "evaluate", "load_run", "Result", "TaskMeta", "TrainContext"]
