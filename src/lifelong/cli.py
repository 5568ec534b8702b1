"""The ``lifelong`` command: run, list, show, eval, learn, predict, export.

User mistakes print one line ``error: ...`` and exit with status 2 (``--debug``
shows the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import ConfigError, Interrupted, LifelongError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, like every other user error
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lifelong", description="Continual learning: train a method on a stream of tasks.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="train a method on a benchmark")
    r.add_argument("--method", help="see `lifelong list`")
    r.add_argument("--benchmark", help="see `lifelong list`")
    r.add_argument("--setting", choices=["task", "class"])
    r.add_argument("--data-root", help="folder holding the benchmark's files")
    r.add_argument("--out", help="run folder (default runs/<method>-<benchmark>-<timestamp>)")
    r.add_argument("--seed", help="the run's seed (default 0); several (0,1,2 or 0..4) work as --seeds")
    r.add_argument("--seeds", metavar="LIST", help="one run per seed, --out/seed-<s> (0,1,2 or 0..4); the same command "
                   "again resumes unfinished seeds; then the compare table")
    r.add_argument("--dry-run", action="store_true", help="print the resolved configuration and the task/class layout; "
                   "train and write nothing")
    r.add_argument("--log", choices=["tensorboard"], help="also log to TensorBoard in the run folder "
                   "(pip install 'lifelong[tensorboard]')")
    r.add_argument("--epochs", type=int, help="epochs per task for every training phase")
    r.add_argument("--tasks", type=int)
    r.add_argument("--base", type=int, help="class-incremental: classes in the first step")
    r.add_argument("--increment", type=int, help="class-incremental: classes per later step")
    r.add_argument("--memory", type=int, help="exemplars kept in total (replay methods)")
    r.add_argument("--backbone")
    r.add_argument("--config", help="a YAML config (e.g. configs/*.yaml or a run's config.yaml)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any hyperparameter")
    r.add_argument("--device", help="auto|cpu|cuda|cuda:I")
    r.add_argument("--precision", choices=["32", "bf16", "16"])
    r.add_argument("--channels-last", action="store_true", help="NHWC networks and inputs (CUDA tensor cores)")
    r.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="torch.compile each phase's loss (default backend inductor)")
    r.add_argument("--keep", choices=["all", "last"], help="checkpoints to keep")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished task")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, one per core)")

    ls = sub.add_parser("list", help="methods and benchmarks")
    ls.add_argument("--data-root", help="check which benchmarks' files are present here")
    ls.add_argument("--presets", action="store_true", help="list configs/*.yaml instead (as `lifelong presets`)")
    ls.add_argument("--configs", metavar="DIR", help="with --presets: the presets folder (default ./configs)")

    cmp_ = sub.add_parser("compare", help="finished runs side by side: mean ± std over seeds per method")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of runs (e.g. a --seeds --out)")
    cmp_.add_argument("--group-by", metavar="KEYS", help="config keys, comma-separated (method, benchmark, hparams.lr, ...); "
                      "default: runs that differ only by seed")
    cmp_.add_argument("--format", choices=["table", "csv", "markdown", "json"], default="table")
    cmp_.add_argument("--plot", metavar="FILE", help="also write the seen-accuracy plot with seed bands (.png/.svg/.pdf)")
    cmp_.add_argument("--mixed", action="store_true", help="compare runs of different benchmarks or protocols anyway")

    rep_ = sub.add_parser("report", help="one self-contained HTML report of one or more runs")
    rep_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of runs")
    rep_.add_argument("--out", metavar="FILE.html", help="default: report.html in the one folder given, else here")
    rep_.add_argument("--mixed", action="store_true", help="report runs of different benchmarks or protocols together")

    pre = sub.add_parser("presets", help="configs/*.yaml: method, benchmark, paper target, data present")
    pre.add_argument("--data-root", help="check whether each preset's data is present here")
    pre.add_argument("--configs", metavar="DIR", help="the presets folder (default ./configs)")

    s = sub.add_parser("show", help="the accuracy matrix and summary of a run")
    s.add_argument("run_dir")

    e = sub.add_parser("eval", help="re-evaluate a run's final checkpoint on every task")
    e.add_argument("run_dir")
    e.add_argument("--data-root")
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=int, help="CPU threads for torch")

    fp = sub.add_parser("footprint", help="model size per method as the papers count it (CPG paper, spec section 6)")
    fp.add_argument("--backbone", required=True, help="a registered backbone, e.g. resnet50")
    fp.add_argument("--heads", required=True, help="classes per task, comma-separated, e.g. 1000,200,196,102,195,250")
    fp.add_argument("--in-channels", type=int, default=3)
    fp.add_argument("--image-size", type=int, default=224)

    ln = sub.add_parser("learn", help="learn one more task from an image folder into a finished run")
    ln.add_argument("run_dir")
    ln.add_argument("--task-folder", required=True, metavar="DIR", help="DIR/<class>/<images>, or DIR/train and DIR/test")
    ln.add_argument("--name", help="the new task's name (default: the folder's name)")
    ln.add_argument("--epochs", type=int, help="epochs of every training phase for this task")
    ln.add_argument("--data-root", help="where the run's own data lives now (its earlier tasks are re-evaluated)")
    ln.add_argument("--device", help="auto|cpu|cuda|cuda:I (default: the run's)")
    ln.add_argument("--quiet", action="store_true")
    ln.add_argument("--threads", type=int, help="CPU threads for torch")

    pr = sub.add_parser("predict", help="class names and probabilities for images, with a run's test-time transform")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--task", help="task-incremental runs: the task whose classes to predict")
    pr.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    pr.add_argument("--format", choices=["table", "json", "csv"], default="table")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--threads", type=int, help="CPU threads for torch")

    ex = sub.add_parser("export", help="a standalone model of one task (class setting: the whole model) and its JSON")
    ex.add_argument("run_dir")
    ex.add_argument("--task", help="task-incremental runs: the task to export")
    ex.add_argument("--format", required=True, choices=["torchscript", "onnx", "state_dict"])
    ex.add_argument("--out", help="model file (default RUN_DIR/export/<task>.pt|.onnx|.pth); the JSON goes beside it")
    ex.add_argument("--threads", type=int, help="CPU threads for torch")

    for sp in (ln, pr, ex):
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
    for sp in (r, ls, s, e, fp):
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
    for sp in (cmp_, rep_, pre):
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def cmd_run(a: argparse.Namespace) -> int:
    from .config import resolve
    from .engine.runner import run_job
    from .report.tables import accuracy_table

    seeds = _seeds_of(a)  # None: one run (a.seed is then an int or None)
    flags = {"seed": a.seed, "epochs": a.epochs, "data_root": a.data_root, "tasks": a.tasks, "base": a.base,
             "increment": a.increment, "memory": a.memory, "backbone": a.backbone, "device": a.device,
             "precision": a.precision, "keep": a.keep, "channels_last": True if a.channels_last else None,
             "compile": a.compile}
    if a.dry_run or seeds is not None:
        return _run_plan(a, flags, seeds)
    if a.resume:
        if not a.out:
            raise ConfigError("--resume needs --out DIR, the run folder to continue")
        from .config import RunConfig

        _check_resume_flags(a, flags)
        cfg = RunConfig(method="", benchmark="", setting="", device=a.device or "auto", precision=a.precision or "32",
                        data_root=a.data_root, channels_last=bool(a.channels_last), compile=a.compile)
    else:
        cfg = resolve(a.method, a.benchmark, a.setting, Path(a.config) if a.config else None, a.set, flags)
    say = (lambda s: None) if a.quiet else print
    _image_progress(a)
    result = run_job(cfg, Path(a.out) if a.out else None, resume=a.resume, echo=say, progress=not a.quiet, log=a.log)
    from .engine.distributed import launched_rank, shutdown_world

    if launched_rank() == 0:  # under torchrun the other ranks say nothing
        print(accuracy_table(result.metrics))
        print(f"run folder: {result.run_dir}")
    shutdown_world()
    return 0


def _seeds_of(a: argparse.Namespace) -> list[int] | None:
    """``--seeds LIST`` or a multi-seed ``--seed`` (``0,1,2``, ``0..4``): the seeds; else None, ``a.seed`` an int."""
    from .engine.seeds import parse_seeds

    if a.seeds is not None and a.seed is not None:
        raise ConfigError("pass either --seed or --seeds, not both")
    if a.seeds is not None:
        return parse_seeds(a.seeds)
    if a.seed is None:
        return None
    seeds = parse_seeds(a.seed)
    if len(seeds) == 1 and "," not in a.seed and ".." not in a.seed:
        a.seed = seeds[0]
        return None
    return seeds


def _image_progress(a: argparse.Namespace) -> None:
    from .data import images

    images.show_progress(False if a.quiet else None)  # the first decode of a folder: a bar on a terminal


def _run_plan(a: argparse.Namespace, flags: dict, seeds: list[int] | None) -> int:
    """``--dry-run`` (configuration and layout, nothing written) and ``--seeds`` (one run per seed, then the
    compare table)."""
    from .config import resolve

    if a.resume and (a.dry_run or not (a.method or a.config)):
        raise ConfigError("--dry-run shows what a new run would do; drop --resume (a run's own configuration is its "
                          "config.yaml)" if a.dry_run else
                          "--seeds continues unfinished seeds when the same command runs again: give its --method and "
                          "--benchmark (or --config) and --out; --resume is not needed")
    cfg = resolve(a.method, a.benchmark, a.setting, Path(a.config) if a.config else None, a.set,
                  dict(flags, seed=seeds[0] if seeds else flags["seed"]))
    if a.dry_run:
        return _dry_run(cfg, a, seeds)
    from .engine.runner import shared_out
    from .engine.seeds import run_seeds
    from .report.compare import format_groups, group_runs, load_runs

    out = Path(a.out) if a.out else shared_out(cfg)
    _image_progress(a)
    say = (lambda s: None) if a.quiet else print
    try:
        folders = run_seeds(cfg, seeds or [], out, echo=say, progress=not a.quiet, log=a.log)
    except (Interrupted, KeyboardInterrupt):
        print(f"error: interrupted; finished tasks are checkpointed under {out}; run the same command again "
              f"(with --out {out}) to continue every unfinished seed", file=sys.stderr)
        return 130
    from .engine.distributed import launched_rank, shutdown_world

    if launched_rank() == 0:
        print(format_groups(group_runs(load_runs(folders)), "table"))
        print(f"run folders: {', '.join(str(f) for f in folders)}")
    shutdown_world()
    return 0


def _dry_run(cfg, a: argparse.Namespace, seeds: list[int] | None) -> int:
    import copy

    import yaml

    from .data import images
    from .engine.runner import scenario_for
    from .report.tables import layout_table

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    probe = copy.deepcopy(cfg)
    probe.benchmark_options.per_task_norm = False  # normalisation statistics do not change the layout
    with images.no_decoding():  # a folder's files and labels are enough: no decoding, no cache entry
        scenario = scenario_for(probe)
    print(layout_table(scenario))
    if seeds:
        print(f"seeds {', '.join(map(str, seeds))}: one run folder each, <--out>/seed-<s>")
    print("dry run: nothing trained, nothing written")
    return 0




def _check_resume_flags(a: argparse.Namespace, flags: dict) -> None:
    """``--resume`` with the run's own command line continues it; a flag whose value differs from the
    saved configuration is refused, naming the key and both values. Keys the given flags do not touch
    are not compared (resolving the same method and benchmark with no flags gives the baseline)."""
    from .config import HOW_IT_RAN, flatten, resolve
    from .engine.rundir import RunDir

    given = {k: v for k, v in flags.items() if v is not None and k not in HOW_IT_RAN}
    if not (given or a.set or a.config or a.method or a.benchmark or a.setting):
        return
    saved = RunDir.open_existing(Path(a.out)).read_config()
    method, benchmark, setting = (a.method or saved["method"], a.benchmark or saved["benchmark"],
                                  a.setting or saved["setting"])
    asked = flatten(resolve(method, benchmark, setting, Path(a.config) if a.config else None, a.set, flags).to_dict())
    plain = flatten(resolve(method, benchmark, setting).to_dict())
    old = flatten(saved)
    for key in ("method", "benchmark", "setting"):
        plain.pop(key, None)  # always compared
    for key, value in asked.items():
        if key in HOW_IT_RAN or (key in plain and plain[key] == value):  # not set by these flags
            continue
        if old.get(key) != value:
            raise ConfigError(f"--resume: {key} is {value!r} on this command line but {old.get(key)!r} in "
                              f"{Path(a.out) / 'config.yaml'}; drop the flag or start a new run with another --out")


def cmd_list(a: argparse.Namespace) -> int:
    from .data.benchmarks import BENCHMARKS
    from .methods.registry import METHODS, method_class

    if a.presets:
        return cmd_presets(a)

    lines = ["methods:"]
    for name in METHODS:
        cls = method_class(name)
        lines.append(f"  {name:<14} {'/'.join(cls.settings):<11} {cls.paper}")
    lines.append("benchmarks:")
    root = Path(a.data_root).expanduser() if a.data_root else None
    for b in BENCHMARKS.values():
        where = ""
        if b.embedded:
            status = "embedded"
        else:
            found, looked = b.locate(root)
            if found is not None:
                status, where = "present", f"in {found}"
            elif looked:
                status = "missing"
                where = ("looked in " if b.find else "looked for ") + ", ".join(str(p) for p in looked)
            else:
                status = "needs --data-root"
        lines.append(f"  {b.name:<22} {'/'.join(b.settings):<11} {status:<18} {b.description}")
        if where:
            lines.append(f"  {'':<22} {'':<11} {where}")
    print("\n".join(lines), flush=True)  # a closed pipe (`lifelong list | head`) is handled in main()
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .engine.rundir import RunDir
    from .report.tables import accuracy_table

    rundir = RunDir.open_existing(Path(a.run_dir))
    print(accuracy_table(rundir.read_metrics()))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .api import load_run
    from .engine.device import pick_device
    from .engine.evaluate import evaluate
    from .engine.loop import TrainContext
    from .engine.rundir import RunDir

    rundir = RunDir.open_existing(Path(a.run_dir))
    recorded = rundir.read_metrics()
    method, scenario, cfg = load_run(a.run_dir, a.data_root, a.device)
    last = len(recorded["accuracy"]) - 1
    ctx = TrainContext(pick_device(a.device), scenario.augment, cfg.seed)
    row = evaluate(method, scenario, last, ctx)
    want = [v for v in recorded["accuracy"][last] if v is not None]
    print("task  recorded  now")
    for j, (w, g) in enumerate(zip(want, row.top1)):
        print(f"{j + 1:>4}  {w * 100:7.2f}  {g * 100:6.2f}")
    same = all(abs(w - g) < 1e-9 for w, g in zip(want, row.top1))
    print(f"reproduces the recorded row {last + 1}: {'yes' if same else 'NO'}")
    return 0 if same else 1


def cmd_footprint(a: argparse.Namespace) -> int:
    from .report.footprint import footprint_table, format_table, parse_heads

    heads = parse_heads(a.heads)
    if a.in_channels < 1 or a.image_size < 8:
        raise ConfigError(f"--in-channels must be >= 1 and --image-size >= 8 (got {a.in_channels}, {a.image_size})")
    print(format_table(a.backbone, heads, footprint_table(a.backbone, heads, a.in_channels, a.image_size)))
    return 0


def cmd_learn(a: argparse.Namespace) -> int:
    from .report.tables import accuracy_table
    from .serve.learn import learn

    say = (lambda s: None) if a.quiet else print
    try:
        result = learn(a.run_dir, a.task_folder, a.name, a.epochs, a.data_root, a.device, say, progress=not a.quiet)
    except KeyboardInterrupt:
        print(f"error: interrupted; {a.run_dir} is unchanged (the new task is kept only once it is checkpointed)",
              file=sys.stderr)
        return 130
    m = result.metrics
    print(accuracy_table(m))
    if m.get("unforgetting_verified") is not None:
        print(f"earlier tasks' outputs bit-identical: {'yes' if m['unforgetting_verified'] else 'NO'}")
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .serve.predict import Predictor, expand_inputs, format_predictions

    predictor = Predictor(a.run_dir, a.device)
    predictor.task_index(a.task)  # a missing or unknown task is reported before any image is read
    files = expand_inputs(a.images)
    preds = predictor.predict([str(f) for f in files], a.task, a.top)
    print(format_predictions([str(f) for f in files], preds, a.format))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .serve.export import export

    model, meta = export(a.run_dir, a.task, a.format, a.out)
    print(f"wrote {model} and {meta}")
    return 0


_SERVE = {"learn": cmd_learn, "predict": cmd_predict, "export": cmd_export}


def cmd_compare(a: argparse.Namespace) -> int:
    from .report import compare as C

    runs = C.load_runs(a.run_dirs)
    C.check_protocol(runs, a.mixed)
    groups = C.group_runs(runs, a.group_by.split(",") if a.group_by else None)
    if a.plot:
        C.write_plot(groups, Path(a.plot))
    print(C.format_groups(groups, a.format), end="" if a.format == "csv" else "\n", flush=True)
    if a.plot:
        print(f"plot: {a.plot}", file=sys.stderr)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report.html import write_report

    print(f"report: {write_report(a.run_dirs, Path(a.out) if a.out else None, a.mixed)}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    from .report.presets import format_presets, load_presets

    print(format_presets(load_presets(Path(a.configs) if a.configs else None, a.data_root)), flush=True)
    return 0


_REPORTS = {"compare": cmd_compare, "report": cmd_report, "presets": cmd_presets}


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"--threads {n} must be at least 1")
    import torch

    torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # Before torch starts its OpenMP pool: idle threads sleep instead of spinning, so a busy shared
    # machine does not turn a 30 s run into 10 minutes (docs/benchmarks.md, "Threads").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        a = _parser().parse_args(argv)
        _set_threads(getattr(a, "threads", None))
        if a.command in _SERVE:
            return _SERVE[a.command](a)
        if a.command in _REPORTS:
            return _REPORTS[a.command](a)
        return {"run": cmd_run, "list": cmd_list, "show": cmd_show, "eval": cmd_eval, "footprint": cmd_footprint}[a.command](a)
    except LifelongError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"error: interrupted; {exc.finished} finished task(s) are checkpointed in {exc.run_dir}; continue with: "
              f"lifelong run --resume --out {exc.run_dir}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted before any task finished; nothing to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lifelong list | head`, `show | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
