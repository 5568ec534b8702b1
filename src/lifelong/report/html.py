"""``lifelong report``: one self-contained HTML file for one or more runs.

No network fetches (a Content-Security-Policy forbids them; no scripts, no external styles or fonts)
and every figure inline as a base64 PNG, so the file can be mailed or archived alone. For several
runs: the comparison table and the seen-accuracy plot with seed bands, and average forgetting per
group; then for every run: the accuracy-matrix heat map, each task's accuracy across the stream,
forgetting per task, footprint and exemplar memory after each task, per-epoch loss and training
accuracy, and the method's own decisions (a table of every task's ``info`` and, where recorded, CPG's
pruning ratios / widths / goals, BiC's bias-correction parameters and accuracy before and after it,
AANets' alphas, LASEM's chosen configurations and priors, DARTS' share weights, DEN's expansions).
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from . import compare as C
from .plots import accuracy_heatmap_figure, alpha_curves_figure, figure_bytes, pyplot

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 0 18px 40px; color: #1d232b; background: #fff; }
h1 { font-size: 22px; margin: 22px 0 4px; } h2 { font-size: 18px; margin: 30px 0 8px; border-bottom: 1px solid #d8dde3; }
h3 { font-size: 15px; margin: 18px 0 6px; } .meta { color: #5b6470; font-size: 12px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0 12px; } th, td { border: 1px solid #d8dde3; padding: 3px 7px; }
th { background: #f2f4f7; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; } .grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 6px 0; border: 1px solid #e3e7ec; padding: 6px; background: #fff; }
figure img { display: block; max-width: 100%; height: auto; } figcaption { font-size: 12px; color: #5b6470; margin-top: 3px; }
nav a { margin-right: 12px; } .note { color: #5b6470; font-size: 12px; }
"""


# ------------------------------------------------------------------ small helpers
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(fig: Any, alt: str, caption: str) -> str:
    data = base64.b64encode(figure_bytes(fig, "png", dpi=96)).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = "".join(f'<td class="n">{_e(v)}</td>' if i >= numeric_from else f"<td>{_e(v)}</td>" for i, v in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _tasks_axis(ax: Any, n: int, label: str = "after training task") -> None:
    ax.set_xlabel(label)
    ax.set_xticks(range(1, n + 1))
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------ per-run figures
def task_curves_figure(m: dict[str, Any]) -> Any:
    """R[i][j] for every task j across the steps i >= j: how each task is remembered as the stream goes on."""
    plt = pyplot()
    R, names = m["accuracy"], [t["name"] for t in m["tasks"]]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for j in range(len(R[-1]) if R else 0):
        xs = [i + 1 for i in range(len(R)) if R[i][j] is not None]
        if xs:
            ax.plot(xs, [R[i - 1][j] * 100 for i in xs], marker="o", ms=3, lw=1.2, label=f"{j + 1} {names[j]}")
    _tasks_axis(ax, len(R))
    ax.set_ylabel("test accuracy on task j (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=6, ncol=2 if len(names) > 8 else 1, loc="lower left")
    ax.set_title("each task's accuracy across the stream", fontsize=9)
    fig.tight_layout()
    return fig


def forgetting_figure(m: dict[str, Any]) -> Any | None:
    vals = [(j, f) for j, f in enumerate(m.get("forgetting") or []) if f is not None]
    if not vals:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    ax.bar([j + 1 for j, _ in vals], [f * 100 for _, f in vals], color="#c0504d")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks([j + 1 for j, _ in vals])
    ax.set_xlabel("task")
    ax.set_ylabel("forgetting (percentage points)")
    avg = m.get("average_forgetting")
    ax.set_title("forgetting per task" + (f" (average {avg * 100:.2f})" if avg is not None else ""), fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def growth_figure(m: dict[str, Any]) -> Any | None:
    growth = m.get("growth") or {}
    nbytes = growth.get("bytes") or []
    memory = growth.get("memory") or []
    if not any(v is not None for v in nbytes + memory):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    steps = list(range(1, len(nbytes) + 1))
    ax.plot([s for s, b in zip(steps, nbytes) if b is not None], [b / 2**20 for b in nbytes if b is not None],
            marker="o", ms=3, color="#1f77b4", label="footprint (MB)")
    ax.set_ylabel("footprint (MB)", color="#1f77b4")
    ax.set_ylim(bottom=0)
    _tasks_axis(ax, len(steps))
    if any(v is not None for v in memory):
        ax2 = ax.twinx()
        ax2.plot([s for s, v in zip(steps, memory) if v is not None], [v for v in memory if v is not None],
                 marker="s", ms=3, color="#ff7f0e", label="memory (exemplars)")
        ax2.set_ylabel("exemplars stored", color="#ff7f0e")
        ax2.set_ylim(bottom=0)
    ax.set_title("model footprint and exemplar memory after each task", fontsize=9)
    fig.tight_layout()
    return fig


def epochs_figure(rows: list[dict[str, Any]]) -> Any | None:
    """Loss and training accuracy of every logged epoch in stream order, coloured by phase (numbered
    stages such as CPG's ``prune-0.3`` share a colour), a dashed line where each task starts."""
    if not rows:
        return None
    import re

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8.0, 4.6), sharex=True)
    phases: dict[str, list[tuple[int, float | None, float | None]]] = {}
    starts: dict[int, int] = {}
    for k, r in enumerate(rows, start=1):
        task = int(float(r["task"]))
        starts.setdefault(task, k)
        phases.setdefault(re.sub(r"[-_ ]?[\d.]+$", "", str(r["phase"])) or str(r["phase"]), []).append((k, _float(r.get("loss")), _float(r.get("accuracy"))))
    for name, pts in phases.items():
        xs = [p[0] for p in pts]
        a1.plot(xs, [p[1] for p in pts], ".", ms=4, label=name)
        acc = [(x, p[2]) for x, p in zip(xs, pts) if p[2] is not None]
        if acc:
            a2.plot([x for x, _ in acc], [a * 100 for _, a in acc], ".", ms=4, label=name)
    for task, k in starts.items():
        for ax in (a1, a2):
            ax.axvline(k - 0.5, color="grey", ls="--", lw=0.5)
        a1.text(k, a1.get_ylim()[1], f"task {task}", fontsize=6, va="top", color="grey")
    a1.set_ylabel("loss")
    a2.set_ylabel("train accuracy (%)")
    a2.set_xlabel("epoch (every phase of every task, in order)")
    a1.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="phase", title_fontsize=6)
    a1.set_title("per-epoch loss and training accuracy (log.csv)", fontsize=9)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _float(v: Any) -> float | None:
    if v in (None, ""):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# ------------------------------------------------------------------ method decisions
def _infos(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [t.get("info") or {} for t in m["tasks"][: len(m["accuracy"])]]


def decision_rows(m: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every task's ``info``: its scalars, one level of nested scalars (``peak.test_accuracy``) and short
    lists of numbers, one row per task, with the method's own summary first."""
    infos = _infos(m)
    keys: list[str] = []
    flat_rows = []
    for info in infos:
        flat: dict[str, Any] = {}
        for k, v in info.items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    if _scalar(v2):
                        flat[f"{k}.{k2}"] = v2
            elif _scalar(v) or (isinstance(v, list) and len(v) <= 8 and all(_scalar(x) for x in v)):
                flat[k] = v
        flat_rows.append(flat)
        keys += [k for k in flat if k not in keys]
    summaries = [t.get("summary") for t in m["tasks"][: len(infos)]]
    header = ["task"] + (["decided"] if any(summaries) else []) + keys
    rows = []
    for i, flat in enumerate(flat_rows):
        row = [f"{i + 1} {m['tasks'][i]['name']}"] + ([summaries[i] or ""] if any(summaries) else [])
        rows.append(row + [_fmt(flat.get(k)) for k in keys])
    return header, rows


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _series(infos: list[dict[str, Any]], key: str) -> list[float | None]:
    return [float(i[key]) if _num(i.get(key)) else None for i in infos]


def cpg_figure(m: dict[str, Any]) -> Any | None:
    """CPG / PAE / PackNet: the pruning ratio chosen, the width after growing, the accuracy goal and what was reached."""
    infos = _infos(m)
    if not any(_num(i.get("pruning_ratio")) for i in infos):
        return None
    panels = [("pruning_ratio", "pruning ratio chosen")]
    if any(_num(i.get("width_multiplier")) for i in infos):
        panels.append(("width_multiplier", "width multiplier"))
    has_goal = any(_num(i.get("goal")) for i in infos)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels) + has_goal, figsize=(3.3 * (len(panels) + has_goal), 3.0))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    xs = list(range(1, len(infos) + 1))
    for ax, (key, title) in zip(axes, panels):
        ax.bar(xs, [v or 0 for v in _series(infos, key)], color="#4f81bd")
        ax.set_title(title, fontsize=9)
        _tasks_axis(ax, len(xs), "task")
    if has_goal:
        ax = axes[-1]
        goal, got = _series(infos, "goal"), _series(infos, "accuracy_selected")
        ax.plot(xs, [g * 100 if g is not None else None for g in goal], "k_", ms=14, mew=2, label="goal")
        met = [bool(i.get("goal_met")) for i in infos]
        ax.scatter([x for x, v, ok in zip(xs, got, met) if v is not None and ok],
                   [v * 100 for v, ok in zip(got, met) if v is not None and ok], color="#2ca02c", label="reached: met", zorder=3)
        ax.scatter([x for x, v, ok in zip(xs, got, met) if v is not None and not ok],
                   [v * 100 for v, ok in zip(got, met) if v is not None and not ok], color="#d62728", marker="x",
                   label="reached: missed", zorder=3)
        ax.set_title("accuracy goal and accuracy selected (%)", fontsize=9)
        ax.legend(fontsize=6)
        _tasks_axis(ax, len(xs), "task")
    fig.tight_layout()
    return fig


def bic_figure(m: dict[str, Any]) -> Any | None:
    """BiC: the two bias-correction parameters per step and the accuracy on every class seen before and after it."""
    infos = _infos(m)
    if not any(_num(i.get("alpha")) and _num(i.get("beta")) for i in infos):
        return None
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    xs = list(range(1, len(infos) + 1))
    a1.plot(xs, _series(infos, "alpha"), "o-", label="alpha (scale)")
    a1.plot(xs, _series(infos, "beta"), "s-", label="beta (shift)")
    a1.axhline(1, color="grey", lw=0.5, ls=":")
    a1.axhline(0, color="grey", lw=0.5, ls=":")
    a1.set_title("bias correction of the new classes' logits", fontsize=9)
    a1.legend(fontsize=6)
    _tasks_axis(a1, len(xs), "step")
    after = m.get("seen_accuracy") or []
    before = ((m.get("variants") or {}).get("before_correction") or {}).get("seen_accuracy") or []
    if before:
        w = 0.38
        a2.bar([x - w / 2 for x in xs[: len(before)]], [b * 100 if b is not None else 0 for b in before], w, label="before correction")
        a2.bar([x + w / 2 for x in xs[: len(after)]], [a * 100 if a is not None else 0 for a in after], w, label="after correction")
        a2.set_ylim(0, 100)
        a2.legend(fontsize=6)
    else:
        a2.plot(xs, [(_series(infos, "val_accuracy_before")[k] or 0) * 100 for k in range(len(xs))], "o-", label="val before")
        a2.plot(xs, [(_series(infos, "val_accuracy_after")[k] or 0) * 100 for k in range(len(xs))], "s-", label="val after")
        a2.legend(fontsize=6)
    a2.set_title("accuracy on every class seen (%), test", fontsize=9)
    _tasks_axis(a2, len(xs), "step")
    fig.tight_layout()
    return fig


def matrix_figure(m: dict[str, Any], key: str, title: str, xlabel: str, mark: str | None = None) -> Any | None:
    """A per-task list (LASEM's prior over configurations, DARTS' share weights) as a tasks x entries heat
    map; ``mark`` names the info key of the entry chosen (LASEM's ``config_index``)."""
    infos = _infos(m)
    rows = [(i, info[key]) for i, info in enumerate(infos) if isinstance(info.get(key), list) and info[key]
            and all(_num(v) for v in info[key])]
    if not rows:
        return None
    import numpy as np

    width = max(len(v) for _, v in rows)
    data = np.full((len(infos), width), np.nan)
    for i, v in rows:
        data[i, : len(v)] = v
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(11, 2.5 + 0.45 * width), 1.2 + 0.35 * len(infos)))
    im = ax.imshow(data, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(infos)), [f"{i + 1}" + (f" {infos[i].get('config')}" if infos[i].get("config") else "")
                                      for i in range(len(infos))], fontsize=7)
    ax.set_xticks(range(width), [str(k) for k in range(width)], fontsize=6)
    if mark:
        for i, info in enumerate(infos):
            if _num(info.get(mark)):
                ax.plot(info[mark], i, "c*", ms=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def den_figure(m: dict[str, Any]) -> Any | None:
    """DEN: each hidden layer's width after every task, and the units added and pruned."""
    infos = _infos(m)
    widths = [i.get("widths") for i in infos]
    if not any(isinstance(w, list) and w for w in widths):
        return None
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    xs = list(range(1, len(infos) + 1))
    layers = max(len(w) for w in widths if isinstance(w, list))
    for layer in range(layers):
        a1.plot(xs, [w[layer] if isinstance(w, list) and layer < len(w) else None for w in widths], "o-", ms=3,
                label=f"layer {layer + 1}")
    a1.set_title("layer widths after each task", fontsize=9)
    a1.legend(fontsize=6)
    _tasks_axis(a1, len(xs), "task")
    added = [sum(i.get("added") or []) for i in infos]
    pruned = [sum(i.get("pruned") or []) for i in infos]
    split = [sum(len(s) for s in (i.get("split") or [])) for i in infos]
    w = 0.28
    a2.bar([x - w for x in xs], added, w, label="added")
    a2.bar(xs, pruned, w, label="pruned")
    a2.bar([x + w for x in xs], split, w, label="split")
    a2.set_title("units added / pruned / split per task (all layers)", fontsize=9)
    a2.legend(fontsize=6)
    _tasks_axis(a2, len(xs), "task")
    fig.tight_layout()
    return fig


def decision_figures(m: dict[str, Any]) -> list[str]:
    title = f"{m['method']} on {m['benchmark']}"
    out = []
    fig = cpg_figure(m)
    if fig is not None:
        out.append(_img(fig, "pruning ratio, width and goals per task",
                        "CPG / PAE / PackNet: the pruning ratio each task kept, the width after growing and the accuracy goal"))
    fig = bic_figure(m)
    if fig is not None:
        out.append(_img(fig, "bias correction", "BiC: alpha and beta of each step and the accuracy before and after the correction"))
    history = [list(i.get("alphas") or []) for i in _infos(m)]
    fig = alpha_curves_figure(history, title) if any(history) else None
    if fig is not None:
        out.append(_img(fig, "aggregation weights", "AANets: each level's alpha (weight of the stable block) per epoch"))
    fig = matrix_figure(m, "prior", "prior over transfer configurations (star: chosen)", "configuration index", "config_index")
    if fig is not None:
        out.append(_img(fig, "LASEM priors", "LASEM: the prior over configurations after each task and the configuration chosen"))
    fig = matrix_figure(m, "share_weight", "share weight per layer (1 = shared)", "layer")
    if fig is not None:
        out.append(_img(fig, "DARTS share weights", "DARTS: softmax weight of the shared option per layer, per task"))
    fig = den_figure(m)
    if fig is not None:
        out.append(_img(fig, "DEN expansions", "DEN: widths, units added, pruned and split"))
    return out


# ------------------------------------------------------------------ sections
def _summary_rows(m: dict[str, Any]) -> list[list[str]]:
    pct = lambda v: "-" if v is None else f"{v * 100:.2f}%"  # noqa: E731
    fp = m.get("footprint") or {}
    rows = [["final accuracy", pct(m.get("final_accuracy"))],
            ["average incremental accuracy", pct(m.get("average_incremental_accuracy"))],
            ["average accuracy (mean of last row)", pct(m.get("average_accuracy"))],
            ["average forgetting", pct(m.get("average_forgetting"))], ["BWT", pct(m.get("bwt"))],
            ["parameters", f"{fp['parameters']:,}" if fp.get("parameters") is not None else "-"],
            ["footprint", f"{fp['bytes'] / 2**20:.3f} MB" if fp.get("bytes") is not None else "-"],
            ["memory (exemplars)", _fmt((m.get("memory") or {}).get("size"))],
            ["training time", f"{sum(m.get('time_s') or []):.1f} s"]]
    if "unforgetting_verified" in m:
        rows.append(["unforgetting verified", _fmt(m["unforgetting_verified"])])
    if fp.get("note"):
        rows.append(["footprint counts", fp["note"]])
    return rows


def run_section(run: C.RunRecord, index: int) -> str:
    from ..engine.rundir import RunDir

    m = run.metrics
    title = f"{m['method']} on {m['benchmark']} ({m['setting']}-incremental), seed {m['seed']}"
    parts = [f'<h2 id="run{index}">{_e(title)}</h2>', f'<p class="meta">{_e(run.path)}</p>']
    figs = [_table(["summary", "value"], _summary_rows(m), numeric_from=1),
            _img(accuracy_heatmap_figure(m["accuracy"], [t["name"] for t in m["tasks"]], "accuracy matrix (%)"), "accuracy matrix",
                 "accuracy matrix R[i][j] (%): after training task i (rows), on task j (columns)"),
            _img(task_curves_figure(m), "per-task accuracy curves", "each task's test accuracy after every later task")]
    fig = forgetting_figure(m)
    if fig is not None:
        figs.append(_img(fig, "forgetting per task", "forgetting per task: max over earlier rows minus the last row"))
    fig = growth_figure(m)
    if fig is not None:
        figs.append(_img(fig, "footprint and memory growth", "footprint (as the papers count it) and exemplars after each task"))
    rows = RunDir(run.path).read_log() if run.path is not None else []
    fig = epochs_figure(rows)
    if fig is not None:
        figs.append(_img(fig, "per-epoch loss and accuracy", "every epoch of every phase, from log.csv"))
    parts.append('<div class="grid">' + "".join(figs) + "</div>")
    parts.append("<h3>The method's decisions</h3>")
    dfigs = decision_figures(m)
    if dfigs:
        parts.append('<div class="grid">' + "".join(dfigs) + "</div>")
    header, drows = decision_rows(m)
    if len(header) > 1:
        parts.append(_table(header, drows, numeric_from=len(header)))
    else:
        parts.append('<p class="note">This method records no per-task decisions.</p>')
    return "\n".join(parts)


def group_forgetting_figure(groups: Sequence[C.Group]) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    labels, means, stds = [], [], []
    for g in groups:
        st = g.stat("average_forgetting")
        labels.append(g.label)
        means.append((st.mean or 0.0) * 100)
        stds.append((st.std or 0.0) * 100)
    ax.bar(range(len(groups)), means, yerr=stds, capsize=4, color="#c0504d")
    ax.set_xticks(range(len(groups)), labels, fontsize=7, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel("average forgetting (points)")
    ax.set_title("average forgetting, mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def build_report(runs: Sequence[C.RunRecord], groups: Sequence[C.Group] | None = None, title: str | None = None) -> str:
    """The HTML text (see the module docstring)."""
    groups = list(groups) if groups is not None else C.group_runs(runs)
    title = title or (f"{runs[0].metrics['method']} on {runs[0].metrics['benchmark']}" if len(runs) == 1
                      else f"{len(runs)} runs: " + ", ".join(g.label for g in groups))
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">lifelong report, {_e(datetime.now().strftime("%Y-%m-%d %H:%M"))}; '
            f"{len(runs)} run(s): {_e(', '.join(str(r.path) for r in runs))}</p>"]
    nav = ['<a href="#compare">comparison</a>'] if len(runs) > 1 else []
    nav += [f'<a href="#run{i}">{_e(r.metrics["method"])} seed {_e(r.metrics["seed"])}</a>' for i, r in enumerate(runs)]
    body.append("<nav>" + "".join(nav) + "</nav>")
    if len(runs) > 1:
        header, rows = C._rows(groups, C.COLUMN_KEYS, 2)
        body += ['<h2 id="compare">Comparison</h2>', f'<p class="meta">{_e(C.headline(groups))}</p>', _table(header, rows)]
        body.append('<div class="grid">'
                    + _img(C.seen_accuracy_figure(groups), "seen accuracy per step with seed bands",
                           "accuracy on everything seen so far after each step: mean over seeds, band = ± one sample std")
                    + _img(group_forgetting_figure(groups), "average forgetting per group", "average forgetting per group")
                    + "</div>")
    for i, run in enumerate(runs):
        body.append(run_section(run, i))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(paths: Sequence[str | Path], out: Path | None = None, mixed: bool = False) -> Path:
    """Read the runs under ``paths``, write the report to ``out`` (default: ``report.html`` in the one
    folder given, else in the current folder) and return its path."""
    from ..engine.checkpoint import atomic_write_text
    from ..errors import ConfigError

    runs = C.load_runs(paths, allow_unfinished=len(C.expand(paths)) == 1)  # one run may be watched as it trains
    if len(runs) > 1:
        C.check_protocol(runs, mixed)
    if out is None:
        out = (Path(paths[0]) if len(paths) == 1 else Path(".")) / "report.html"
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the report is one HTML file; name it *.html")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    atomic_write_text(out, build_report(runs))
    return out
