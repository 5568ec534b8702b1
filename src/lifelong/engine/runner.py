"""The job: build the scenario and method, train task by task, evaluate, checkpoint, report.

``run_job`` is what ``lifelong run`` and ``lifelong.run`` both call.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import RunConfig, from_dict
from ..data.benchmarks import build_scenario
from ..data.scenario import Scenario
from ..data.spec import scenario_spec
from ..data.taskfolder import learned_task
from ..errors import CheckpointError, ConfigError, DistributedError, Interrupted
from ..methods.base import Method, TaskMeta
from ..methods.registry import method_class
from ..nn.backbones import build_backbone
from . import metrics as M
from .checkpoint import rng_state, set_rng_state
from .device import check_precision, pick_device, seed_everything
from .distributed import World, init_world, state_fingerprints
from .evaluate import Row, evaluate, probe_outputs
from .loop import TrainContext
from .rundir import RunDir


@dataclass
class Result:
    """What a finished (or resumed) run produced; the same numbers as ``metrics.json``."""

    run_dir: Path
    accuracy: list[list[float | None]]
    final_accuracy: float  # class setting: accuracy over every class seen; task setting: mean of the last row
    average_accuracy: float
    average_incremental_accuracy: float
    forgetting: list[float | None]
    average_forgetting: float | None
    footprint: dict[str, Any]
    metrics: dict[str, Any] = field(repr=False, default_factory=dict)
    method: Method | None = field(repr=False, default=None)
    scenario: Scenario | None = field(repr=False, default=None)


def default_out(cfg: RunConfig) -> Path:
    """``runs/<method>-<benchmark>-<time>``, with ``-2``, ``-3``... when runs start within the same second."""
    base = Path("runs") / f"{cfg.method}-{cfg.benchmark}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def build_method(cfg: RunConfig, scenario: Scenario, device: torch.device) -> Method:
    cls = method_class(cfg.method)

    def make_backbone(width: float = 1.0) -> torch.nn.Module:
        # ``width``: a channel multiplier on top of backbone.width (CPG's growing); a grown network
        # starts from its own init (no published weights at another width).
        bcfg = cfg.backbone if width == 1.0 else dataclasses.replace(cfg.backbone, width=cfg.backbone.width * width, weights=None)
        return build_backbone(bcfg, scenario.in_channels, scenario.augment.size).to(device)

    return cls(cfg.hparams, cfg.setting, make_backbone).to(device)


def scenario_for(cfg: RunConfig, learned: list[dict[str, Any]] | None = None) -> Scenario:
    """The run's stream from its configuration, plus the tasks ``lifelong learn`` appended (their specs)."""
    cls = method_class(cfg.method)
    scenario = build_scenario(cfg.benchmark, cfg.setting, cfg.benchmark_options,
                              Path(cfg.data_root) if cfg.data_root else None, cls.val_fraction)
    for spec in learned or []:
        scenario.tasks.append(learned_task(spec["folder"], spec["name"], scenario, cfg.benchmark_options,
                                           val_fraction_for(cfg), expect=spec)[0])
    return scenario


def val_fraction_for(cfg: RunConfig) -> float:
    """The held-out fraction of the run's tasks: the benchmark option, else the method's preference."""
    v = cfg.benchmark_options.val_fraction
    return method_class(cfg.method).val_fraction if v is None else v


def _clean(x: Any) -> Any:
    """NaN (an empty split) becomes null in JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


class _Record:
    """Metrics accumulated task by task; lives in checkpoints so a resumed run continues it."""

    def __init__(self, n_tasks: int) -> None:
        self.n = n_tasks
        self.rows: list[list[float | None]] = []
        self.top5: list[list[float | None]] = []
        self.seen: list[float] = []
        self.seen_top5: list[float] = []
        self.variants: dict[str, list[list[float | None]]] = {}
        self.variants_seen: dict[str, list[float]] = {}
        self.infos: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.summaries: list[str] = []  # method.task_summary(info) per task, for reports
        # model size and exemplars after each task (checkpoints of older runs lack the first entries)
        self.growth: list[dict[str, int | None]] = []
        self.probes: list[torch.Tensor] = []
        self.unforgetting: bool | None = None
        self.learned: list[dict[str, Any]] = []  # specs of the tasks ``lifelong learn`` appended (data/taskfolder.py)

    def extend(self, n_tasks: int) -> None:
        """Room for more tasks (``lifelong learn``): every row so far gets ``None`` in the new columns."""
        self.n = n_tasks
        for rows in [self.rows, self.top5, *self.variants.values()]:
            rows[:] = [list(r) + [None] * (n_tasks - len(r)) for r in rows]

    def pad(self, row: list[float]) -> list[float | None]:
        return list(row) + [None] * (self.n - len(row))

    def add(self, row: Row, info: dict[str, Any], seconds: float, summary: str = "",
            growth: dict[str, int | None] | None = None) -> None:
        self.rows.append(self.pad(row.top1))
        self.top5.append(self.pad(row.top5))
        self.seen.append(row.seen_top1)
        self.seen_top5.append(row.seen_top5)
        for name, vals in row.variants.items():
            self.variants.setdefault(name, []).append(self.pad(vals))
            self.variants_seen.setdefault(name, []).append(row.variants_seen[name])
        self.infos.append(info)
        self.times.append(seconds)
        self.summaries = [""] * (len(self.rows) - 1 - len(self.summaries)) + self.summaries + [summary]
        empty = {"parameters": None, "bytes": None, "memory": None}
        self.growth = [empty] * (len(self.rows) - 1 - len(self.growth)) + self.growth + [growth or empty]

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @staticmethod
    def from_state(state: dict[str, Any]) -> "_Record":
        r = _Record(state["n"])
        r.__dict__.update(state)
        return r


def metrics_json(cfg: RunConfig, scenario: Scenario, rec: _Record, method: Method) -> dict[str, Any]:
    R = rec.rows
    summary = M.summarise(R, rec.seen)
    footprint = method.footprint().to_dict()
    out: dict[str, Any] = {
        "method": cfg.method,
        "benchmark": cfg.benchmark,
        "setting": cfg.setting,
        "seed": cfg.seed,
        "tasks": [{"name": t.name, "classes": t.class_names, "info": rec.infos[i] if i < len(rec.infos) else None,
                   "summary": rec.summaries[i] if i < len(rec.summaries) else None}
                  for i, t in enumerate(scenario.tasks)],
        "accuracy": R,
        "top5": rec.top5 if cfg.setting == "class" else None,
        # the papers' "last accuracy": over every test image seen (class setting), the last row's mean (task)
        "final_accuracy": rec.seen[-1] if cfg.setting == "class" else summary["average_accuracy"],
        **summary,
        "seen_accuracy": rec.seen,
        "footprint": footprint,
        "memory": {"size": method.memory_size()},
        # after each task: parameters and bytes as footprint counts them, exemplars stored (null: not recorded)
        "growth": {k: [g[k] for g in rec.growth] for k in ("parameters", "bytes", "memory")},
        "time_s": rec.times,
        "tasks_completed": len(R),
        "distributed": {"world_size": cfg.world_size, "backend": cfg.backend},
    }
    if cfg.setting == "class":
        out["average_incremental_top5"] = M.average_incremental_accuracy(rec.seen_top5)
    if rec.variants:
        out["variants"] = {
            name: {"accuracy": rows, "seen_accuracy": rec.variants_seen[name],
                   "average_accuracy": M.average_accuracy(rows),
                   "average_incremental_accuracy": M.average_incremental_accuracy(rec.variants_seen[name])}
            for name, rows in rec.variants.items()
        }
    if method.guarantees_unforgetting:
        out["unforgetting_verified"] = rec.unforgetting
    return _clean(out)


def served_equals_trained(method: Method, task: Any, ctx: TrainContext, info: dict[str, Any]) -> bool | None:
    """Whether the network served for ``task`` is the one it was trained and chosen with.

    The probe check compares a task only with its own earlier outputs, so a served network that
    differs from the trained one (a stored mask ignored, private state not restored) passes it. A
    method that guarantees unforgetting records in ``info["chosen"]`` the accuracy of the model it
    kept, measured with ``ctx.accuracy`` on a named split ("val", "test", or "train_eval": the
    training images, test-transformed) before the task was stored; here ``method.predict`` must
    give exactly that accuracy on the same split. None when the method records nothing."""
    chosen = info.get("chosen")
    if not isinstance(chosen, dict) or "split" not in chosen:
        return None
    data = {"val": task.val, "test": task.test, "train_eval": task.train}[chosen["split"]]
    method.eval()
    return ctx.accuracy(lambda x: method.predict(x, task.id), data) == chosen["accuracy"]


def _train_tasks(cfg: RunConfig, scenario: Scenario, method: Method, ctx: TrainContext, rec: _Record, rundir: RunDir,
                 log_rows: list[dict[str, Any]], start: int, say: Callable[[str], None], stop_after: int | None,
                 tb: Any = None) -> None:
    """Train, evaluate and checkpoint tasks ``start..``; each finished task is on disk before the next starts."""
    for i in range(start, len(scenario)):
        task = scenario.tasks[i]
        ctx.start_task(i, task.mean, task.std)
        method.begin_task(TaskMeta.of(task))
        method.to(ctx.device)
        t0 = time.perf_counter()
        info = method.fit_task(task, ctx) or {}
        seconds = time.perf_counter() - t0
        row = evaluate(method, scenario, i, ctx)
        if method.guarantees_unforgetting:
            if rec.probes:  # the first task has nothing to compare with: unforgetting stays null
                ok = all(torch.equal(probe_outputs(method, scenario, j, ctx), rec.probes[j]) for j in range(len(rec.probes)))
                rec.unforgetting = ok if rec.unforgetting is None else (rec.unforgetting and ok)
            rec.probes.append(probe_outputs(method, scenario, i, ctx))
            info["served_equals_trained"] = served_equals_trained(method, task, ctx, info)
        if ctx.world.active:
            _check_ranks_agree(ctx.world, method, row, i)
        decided = method.task_summary(info)
        size = method.footprint()
        rec.add(row, info, seconds, decided, {"parameters": size.parameters, "bytes": size.bytes, "memory": method.memory_size()})
        metrics = metrics_json(cfg, scenario, rec, method)
        rundir.write_metrics(metrics)
        rundir.write_log(log_rows)
        rundir.save_checkpoint(i, {"config": cfg.to_dict(), "task": i, "structure": method.structure(),
                                   "state": method.state_dict(), "rng": rng_state(), "record": rec.state(),
                                   "serving": scenario_spec(scenario)}, cfg.keep)
        if tb is not None:
            tb.task(i + 1, metrics)
        if cfg.setting == "class":
            figures = f"new classes {row.top1[-1]:.3f}, all seen classes {row.seen_top1:.3f}"
        else:
            figures = f"this task {row.top1[-1]:.3f}, mean over tasks {metrics['average_accuracy']:.3f}"
        say(f"task {i + 1}/{len(scenario)} {task.name}: accuracy {figures} ({seconds:.1f}s)"
            + (f"; {decided}" if decided else ""))
        if stop_after is not None and i + 1 >= stop_after:
            break


def _check_ranks_agree(world: World, method: Method, row: Row, task_index: int) -> None:
    """Every rank must hold the same state and accuracies after a task; then all continue from rank 0's
    RNG states (a rank's shard may have drawn a different count of global random numbers, e.g. dropout)."""
    differ = world.disagreeing(state_fingerprints({**method.state_dict(), "(structure)": method.structure(),
                                                   "(accuracy)": [row.top1, row.seen_top1]}))
    if differ:
        raise DistributedError(f"the {world.size} processes disagree after task {task_index + 1} on "
                               f"{', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}: a bug in how the method "
                               f"shares its data over ranks; run it in one process")
    set_rng_state(world.broadcast_object(rng_state()))


def shared_out(cfg: RunConfig) -> Path:
    """The default run folder, named once by rank 0 under torchrun (the ranks' clocks may straddle a second)."""
    world = init_world(cfg.device)
    return Path(world.broadcast_object(str(default_out(cfg)) if world.main else None))


def run_job(cfg: RunConfig, out: Path | None = None, resume: bool = False, echo: Callable[[str], None] | None = None,
            progress: bool = False, stop_after: int | None = None, log: str | None = None) -> Result:
    """Train ``cfg.method`` on every task of ``cfg.benchmark``; see the README's "Output folder".

    ``log="tensorboard"`` also writes TensorBoard event files into the run folder (``engine.tblog``);
    it is not part of the configuration, so a resumed run may add or drop it."""
    if log not in (None, "tensorboard"):
        raise ConfigError(f"--log {log} is not a known logger; use --log tensorboard")
    if log == "tensorboard":
        from .tblog import require_tensorboard

        require_tensorboard()  # before anything trains or is written
    world = init_world(cfg.device)  # torchrun: join the process group (one process: nothing)
    say = (echo if world.main else None) or (lambda s: None)
    progress = progress and world.main
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out DIR, the run folder to continue")
        rundir = RunDir.open_existing(out)
        ckpt = rundir.latest_checkpoint()
        if ckpt is None:
            raise CheckpointError(f"{out} has no checkpoint to resume from; start it again without --resume")
        saved = from_dict(ckpt["config"])
        saved.device, saved.precision = cfg.device, cfg.precision  # where to continue is the user's choice
        saved.channels_last, saved.compile = cfg.channels_last, cfg.compile
        saved.data_root = cfg.data_root or saved.data_root  # ... and where the data now lives
        cfg = saved
    else:
        out = Path(out) if out else shared_out(cfg)
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) or (out / "metrics.json").exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        rundir = RunDir(out)
        ckpt = None
    cfg.out = str(out)
    cfg.world_size, cfg.backend = world.size, world.backend
    rundir.writable = world.main  # only rank 0 writes the folder and the checkpoints
    device = pick_device(cfg.device)
    if world.active and device.type == "cuda":  # one GPU per process: torchrun's LOCAL_RANK
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    check_precision(cfg.precision, device)
    if cfg.compile:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if cfg.compile not in known:
            raise ConfigError(f"--compile {cfg.compile} is not a torch.compile backend; use one of "
                              f"{', '.join(torch._dynamo.list_backends())}")
    seed_everything(cfg.seed)
    scenario = scenario_for(cfg, ckpt["record"].get("learned") if ckpt is not None else None)
    method = build_method(cfg, scenario, device)
    method.check_stream([TaskMeta.of(t) for t in scenario.tasks])  # before anything is trained or written
    log_rows: list[dict[str, Any]] = rundir.read_log() if resume else []
    tb = None
    epoch_log: Callable[[dict[str, Any]], None] = log_rows.append  # no logger: nothing else runs per epoch
    if log == "tensorboard" and rundir.writable:
        from .tblog import TensorBoardLog

        tb = TensorBoardLog(rundir.path)

        def epoch_log(row: dict[str, Any]) -> None:
            log_rows.append(row)
            tb.epoch(len(log_rows), row)  # the step: the epoch's row in log.csv, continued on resume
    ctx = TrainContext(device, scenario.augment, cfg.seed, cfg.precision, epoch_log, progress, len(scenario),
                       scenario.num_classes, world, cfg.sync_bn, cfg.channels_last, cfg.compile)
    ctx.model = method
    rec = _Record(len(scenario))
    start = 0
    if ckpt is not None:
        method.rebuild(ckpt["structure"])
        try:
            method.load_state_dict(ckpt["state"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint in {out} does not fit method {cfg.method}: {str(exc).splitlines()[0]}") from None
        method.to(device)
        rec = _Record.from_state(ckpt["record"])
        start = ckpt["task"] + 1
        log_rows[:] = [r for r in log_rows if int(r["task"]) <= start]
        for t in scenario.tasks[:start]:
            method.on_resume(t)
        set_rng_state(ckpt["rng"])
        say(f"resuming {out} after task {start}/{len(scenario)}")
    rundir.create()
    rundir.write_config(cfg.to_dict())

    try:
        _train_tasks(cfg, scenario, method, ctx, rec, rundir, log_rows, start, say, stop_after, tb)
    except KeyboardInterrupt:
        raise Interrupted(rundir.path, len(rec.rows)) from None
    finally:
        if tb is not None:
            tb.close()

    metrics = metrics_json(cfg, scenario, rec, method)
    write_figures(cfg, scenario, rec, method, rundir)
    return Result(rundir.path, metrics["accuracy"], metrics["final_accuracy"], metrics["average_accuracy"],
                  metrics["average_incremental_accuracy"],
                  metrics["forgetting"], metrics["average_forgetting"], metrics["footprint"], metrics, method, scenario)


def write_figures(cfg: RunConfig, scenario: Scenario, rec: _Record, method: Method, rundir: RunDir) -> None:
    """``accuracy.png`` (and AANets' ``alphas.png``) from the record so far."""
    if not rundir.writable:
        return
    from ..report.plots import accuracy_heatmap

    accuracy_heatmap(rec.rows, [t.name for t in scenario.tasks], rundir.path / "accuracy.png",
                     f"{cfg.method} on {cfg.benchmark} ({cfg.setting}-incremental)")
    if callable(getattr(method, "alpha_history", None)):  # AANets' aggregation weights per epoch
        from ..report.plots import alpha_curves

        alpha_curves(method.alpha_history(rec.infos), rundir.path / "alphas.png", f"{cfg.method} on {cfg.benchmark}")
