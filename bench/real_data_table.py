"""The real-data comparison of docs/benchmarks.md: every method on Split Fashion-MNIST, several seeds.

Each (method, seed) is one ``lifelong.run`` into ``--out/<label>-s<seed>``; a finished run is read
back instead of trained again, so the script resumes after an interruption. Prints a Markdown
table (mean +- std over seeds): final accuracy over every class seen (class setting) or the last
row's mean (task setting), average incremental accuracy, average forgetting, exemplars, parameters
and wall time per run, then whether each paper's claimed property holds on this data.

    python bench/real_data_table.py --setting class --seeds 0 1 2 --per-class 1000 --out runs/fmnist-class
    python bench/real_data_table.py --setting task --methods finetune independent cpg --out runs/fmnist-task
    python bench/real_data_table.py --benchmark digits --per-class 0 --memory 40 --out runs/digits-class
    python bench/real_data_table.py --plan lasem --setting task --benchmark permuted-digits --backbone lasem_cnn \
        --tasks 5 --per-class 20 --epochs 30 --out runs/lasem
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import lifelong
from lifelong.methods.registry import METHODS
from lifelong.report import compare

# (label, method, overrides): the class setting with a 2,000-image memory where a method keeps one.
CLASS_RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("finetune", "finetune", {}), ("joint", "joint", {}), ("lwf", "lwf", {}), ("ewc", "ewc", {"fisher_samples": 1000}), ("si", "si", {}),
    ("replay", "replay", {"memory": 2000}), ("icarl", "icarl", {"memory": 2000}), ("lucir", "lucir", {"memory": 2000}),
    ("bic", "bic", {"memory": 2000}),
    ("icarl-cosine", "icarl", {"memory": 2000, "variant": "aanets", "classifier": "cnn"}),  # AANets' iCaRL, 1 branch
    ("aanets-icarl", "aanets", {"memory": 2000, "baseline": "icarl"}),
    ("aanets-lucir", "aanets", {"memory": 2000, "baseline": "lucir"}),
    ("aanets-lucir-single", "aanets", {"memory": 2000, "baseline": "lucir", "branch_mode": "single", "branch_1": "free"}),
    ("aanets-lucir-free-free", "aanets", {"memory": 2000, "baseline": "lucir", "branch_1": "free", "branch_2": "free",
                                          "fusion_lr": 0.0}),
]
TASK_RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("finetune", "finetune", {}), ("joint", "joint", {}), ("independent", "independent", {}), ("lwf", "lwf", {}),
    ("ewc", "ewc", {"fisher_samples": 1000}), ("si", "si", {}), ("replay", "replay", {"memory": 2000}), ("packnet", "packnet", {}),
    ("piggyback", "piggyback", {}), ("cpg", "cpg", {}), ("pae", "pae", {}), ("clr", "clr", {}),
    ("clr-full", "clr-full", {}), ("prognn", "prognn", {}),
]

# LASEM's comparison (issue: STL, SNN, every static HPS configuration, TF and DF-CNN at two
# configurations each, DARTS, LASEM and LASEMG, and the brute-force oracle as the ceiling).
LASEM_RUNS: list[tuple[str, str, dict[str, Any]]] = (
    [("stl", "stl", {}), ("snn", "snn", {})]
    + [(f"hps-{c}", "hps", {"transfer": c}) for c in ("all", "top1", "top2", "top3", "bottom1", "bottom2", "bottom3",
                                                      "alter", "alter_rev")]
    + [(f"{m}-{c}", m, {"transfer": c}) for m in ("tf", "dfcnn") for c in ("top2", "bottom3")]
    + [(m, m, {}) for m in ("darts-hps", "darts-dfcnn", "lasem-hps", "lasem-tf", "lasem-dfcnn", "lasemg-hps",
                            "bruteforce-hps")]
    + [(m, m, {}) for m in ("apd", "ccgn", "den")]
)
PLANS = {"class": CLASS_RUNS, "task": TASK_RUNS, "lasem": LASEM_RUNS}


def run_one(label: str, method: str, overrides: dict[str, Any], a: argparse.Namespace, seed: int) -> dict[str, Any] | None:
    out = Path(a.out) / f"{label}-s{seed}"
    metrics = out / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        if m.get("tasks_completed") == len(m["tasks"]):
            return m
    if method not in METHODS or a.read_only:  # not built (yet), or only finished runs are wanted
        return None
    kwargs = dict(overrides)
    if "memory" in kwargs and a.memory:
        kwargs["memory"] = a.memory
    if a.tasks:
        kwargs["tasks"] = a.tasks
    if a.backbone:
        kwargs["backbone"] = a.backbone
    if a.per_class:
        kwargs["benchmark__per_class"] = a.per_class
    if a.epochs:
        kwargs["epochs"] = a.epochs
    try:
        result = lifelong.run(method=method, benchmark=a.benchmark, setting=a.setting, seed=seed, out=out,
                              resume=(out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()), **kwargs)
    except lifelong.LifelongError as exc:  # e.g. a method that cannot use this backbone: say so, go on
        print(f"{label} seed {seed}: {exc}", file=sys.stderr)
        return None
    return result.metrics


def _peak(run: dict[str, Any]) -> float | None:
    """LASEM's peak accuracy: each task's best-validation-epoch test accuracy in its own phase, averaged."""
    vals = [(t.get("info") or {}).get("peak", {}).get("test_accuracy") for t in run["tasks"]]
    vals = [v for v in vals if v is not None]
    return statistics.mean(vals) if vals else None


def _verdict(a: float, b: float, margin: float = 0.01) -> str:
    """A claimed improvement holds when it is larger than a point (seed noise on these streams)."""
    return "yes" if a > b + margin else ("no (within a point)" if a > b - margin else "NO")


def claims(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The papers' claimed properties, checked on these runs (mean over seeds)."""
    mean = lambda label, key: statistics.mean(r[key] for r in results[label])  # noqa: E731
    out = []
    if "finetune" in results:
        for m in ("icarl", "lucir", "bic", "replay", "lwf", "aanets-icarl", "aanets-lucir"):
            if m in results:
                a, b = mean(m, "final_accuracy"), mean("finetune", "final_accuracy")
                out.append(f"- {m} beats finetune (final accuracy {a * 100:.1f} vs {b * 100:.1f}): {_verdict(a, b)}")
    if "bic" in results:
        after = statistics.mean(r["final_accuracy"] for r in results["bic"])
        before = statistics.mean(r["variants"]["before_correction"]["seen_accuracy"][-1] for r in results["bic"])
        out.append(f"- BiC's bias correction helps (final {after * 100:.1f} vs {before * 100:.1f} before): "
                   f"{_verdict(after, before)}")
    for base in ("icarl-cosine", "lucir"):
        if f"aanets-{base.split('-')[0]}" in results and base in results:
            a, b = mean(f"aanets-{base.split('-')[0]}", "average_incremental_accuracy"), mean(base, "average_incremental_accuracy")
            out.append(f"- AANets improves {base} (average incremental {a * 100:.1f} vs {b * 100:.1f}): "
                       f"{_verdict(a, b)}")
    for label, runs in results.items():
        if "unforgetting_verified" in runs[0]:
            zero = all(all(f in (None, 0.0) for f in r["forgetting"]) for r in runs)
            out.append(f"- {label} forgets nothing (forgetting exactly 0, outputs verified): "
                       f"{'yes' if zero and all(r['unforgetting_verified'] for r in runs) else 'NO'}")
    if "cpg" in results:
        met = [t["info"].get("goal_met") for r in results["cpg"] for t in r["tasks"] if t["info"]]
        out.append(f"- CPG meets its accuracy goals: {sum(bool(g) for g in met)} of {len(met)} tasks")
        if "independent" in results:
            a = results["cpg"][0]["footprint"]["bytes"]
            b = results["independent"][0]["footprint"]["bytes"]
            out.append(f"- CPG is smaller than independent networks ({a / 2**20:.2f} vs {b / 2**20:.2f} MB): "
                       f"{'yes' if a < b else 'NO'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=["class", "task"], default="class")
    ap.add_argument("--benchmark", default="fashion-mnist")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=1000, help="training images per class (0: all 6,000)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--memory", type=int, default=None, help="exemplars for the methods that keep them (default 2000)")
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--read-only", action="store_true", help="tabulate finished runs only; train nothing")
    ap.add_argument("--plan", choices=list(PLANS), default=None, help="which rows (default: the setting's)")
    ap.add_argument("--methods", nargs="*", help="labels to run (default: all)")
    ap.add_argument("--out", default="runs/real-data")
    a = ap.parse_args()
    plan = PLANS[a.plan or a.setting]
    results: dict[str, list[dict[str, Any]]] = {}
    for label, method, overrides in plan:
        if a.methods and label not in a.methods:
            continue
        runs = [m for m in (run_one(label, method, overrides, a, s) for s in a.seeds) if m is not None]
        if runs:
            results[label] = runs
    first = "all seen classes" if a.setting == "class" else "mean of last row"
    print(f"{a.benchmark}, {a.setting} setting, seeds {' '.join(map(str, a.seeds))}, "
          f"{a.per_class or 'all'} training images per class; final accuracy: {first}; mean ± sample std over seeds")
    extra = []
    if a.plan == "lasem":
        extra = [("peak accuracy %", lambda g: compare.cell(compare.Stat([p for r in g.runs if (p := _peak(r.metrics)) is not None]),
                                                             "pct", 1)),
                 ("configuration per task (seed 0)", lambda g: ", ".join(t["info"].get("config") or "-"
                                                                         for t in g.runs[0].metrics["tasks"] if t.get("info")))]
    # the table of `lifelong compare --format markdown` over these run folders, plus the plan's own columns
    groups = [compare.group_of(label, runs) for label, runs in results.items()]
    print(compare.format_groups(groups, "markdown", digits=1, title=False, extra=extra,
                                columns=["final_accuracy", "average_incremental_accuracy", "average_forgetting",
                                         "memory", "parameters", "footprint_mb", "time_s"]))
    print()
    print("\n".join(claims(results)))


if __name__ == "__main__":
    main()
