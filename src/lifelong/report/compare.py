"""``lifelong compare``: finished runs side by side, runs that differ only by seed grouped.

One row per group with the mean, the sample standard deviation (n - 1; none for a single run) and n of
final accuracy, average incremental accuracy, average forgetting, BWT, parameters, footprint, exemplar
memory and training time, read from each run's ``metrics.json``; and a plot of the accuracy on
everything seen so far after each step, one line per group with a mean +- std band.

Runs of different benchmarks or protocols (benchmark options, setting, task layout) are refused,
naming the first difference, unless ``mixed=True``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import HOW_IT_RAN, flatten
from ..errors import CheckpointError, ConfigError

# Where a run lives and how it ran, not what it is: never split a group, never compared.
PLACE_KEYS = HOW_IT_RAN | {"keep"}
FORMATS = ("table", "csv", "markdown", "json")


@dataclass
class RunRecord:
    path: Path | None
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def flat(self) -> dict[str, Any]:
        return flatten(self.config) if self.config else {k: self.metrics.get(k) for k in ("method", "benchmark", "setting", "seed")}

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"{self.metrics.get('method')} seed {self.metrics.get('seed')}"


# ------------------------------------------------------------------ loading
def _natural(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def expand(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders: each path is one (it has ``config.yaml``) or holds some (``--seeds``'s ``seed-*``
    folders, a sweep's output); duplicates dropped, order kept, children in natural order."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if (p / "config.yaml").is_file():
            found.append(p)
            continue
        children = sorted((c for c in p.iterdir() if (c / "config.yaml").is_file()), key=_natural) if p.is_dir() else []
        if not children:
            what = "does not exist" if not p.exists() else "is neither a run folder (no config.yaml) nor a folder of runs"
            raise CheckpointError(f"{p} {what}; pass folders written by `lifelong run`")
        found += children
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def load_runs(paths: Sequence[str | Path], allow_unfinished: bool = False) -> list[RunRecord]:
    """Every run under ``paths`` (see ``expand``) with its metrics and configuration; an unfinished run is
    refused, naming the command that finishes it."""
    from ..engine.rundir import RunDir

    runs = []
    for p in expand(paths):
        rd = RunDir.open_existing(p)
        metrics = rd.read_metrics()
        done, total = metrics.get("tasks_completed", len(metrics["accuracy"])), len(metrics["tasks"])
        if done < total and not allow_unfinished:
            raise CheckpointError(f"{p} has finished {done} of {total} tasks; finish it with "
                                  f"`lifelong run --resume --out {p}` or leave it out")
        runs.append(RunRecord(p, metrics, rd.read_config()))
    return runs


# ------------------------------------------------------------------ protocol
def _protocol(run: RunRecord) -> dict[str, Any]:
    flat = run.flat
    out = {k: v for k, v in flat.items() if k in ("benchmark", "setting") or k.startswith("benchmark_options.")}
    out["tasks (classes per task, in order)"] = [list(t.get("classes") or []) for t in run.metrics.get("tasks", [])]
    return out


def protocol_difference(runs: Sequence[RunRecord]) -> str | None:
    """The first way two runs' data streams differ (benchmark, setting, a benchmark option, the task
    layout), as a sentence naming the key and both runs; ``None`` when they share one protocol."""
    if not runs:
        return None
    first = _protocol(runs[0])
    for r in runs[1:]:
        other = _protocol(r)
        for key in list(first) + [k for k in other if k not in first]:
            a, b = first.get(key), other.get(key)
            if a != b:
                show = lambda v: _short(v)  # noqa: E731
                return f"{key} is {show(a)} in {runs[0].name} but {show(b)} in {r.name}"
    return None


def _short(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_protocol(runs: Sequence[RunRecord], mixed: bool = False) -> None:
    diff = protocol_difference(runs)
    if diff and not mixed:
        raise ConfigError(f"these runs do not share a benchmark and protocol: {diff}; compare runs of one protocol, "
                          "or pass --mixed to compare them anyway")


# ------------------------------------------------------------------ statistics
@dataclass
class Stat:
    values: list[float]  # the runs' values (runs that have none left out)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below two values."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": self.values}


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    get: Callable[[dict[str, Any]], float | None]
    kind: str  # "pct" (a fraction shown in %), "int", "mb", "s"


def _final_seen(m: dict[str, Any]) -> float | None:
    return m.get("final_accuracy")


COLUMNS: list[Column] = [
    Column("final_accuracy", "final accuracy %", _final_seen, "pct"),
    Column("average_incremental_accuracy", "avg incremental acc %", lambda m: m.get("average_incremental_accuracy"), "pct"),
    Column("average_forgetting", "forgetting %", lambda m: m.get("average_forgetting"), "pct"),
    Column("bwt", "BWT %", lambda m: m.get("bwt"), "pct"),
    Column("parameters", "parameters", lambda m: (m.get("footprint") or {}).get("parameters"), "int"),
    Column("footprint_mb", "footprint MB", lambda m: _div((m.get("footprint") or {}).get("bytes"), 2**20), "mb"),
    Column("memory", "exemplars", lambda m: (m.get("memory") or {}).get("size"), "int"),
    Column("time_s", "time s", lambda m: sum(m["time_s"]) if m.get("time_s") else None, "s"),
]
COLUMN_KEYS = [c.key for c in COLUMNS]


def _div(v: float | None, d: float) -> float | None:
    return None if v is None else v / d


@dataclass
class Group:
    label: str
    runs: list[RunRecord]
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        return [r.metrics.get("seed") for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    def stat(self, key: str) -> Stat:
        col = next(c for c in COLUMNS if c.key == key)
        vals = [col.get(r.metrics) for r in self.runs]
        return Stat([float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))])

    @property
    def unforgetting(self) -> bool | None:
        """All runs' ``unforgetting_verified`` (isolation methods); None when no run records it."""
        flags = [r.metrics["unforgetting_verified"] for r in self.runs if "unforgetting_verified" in r.metrics]
        return None if not flags else all(bool(f) for f in flags)

    def seen_curves(self) -> list[list[float]]:
        return [list(r.metrics.get("seen_accuracy") or []) for r in self.runs]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "n": self.n, "seeds": self.seeds,
                "runs": [str(r.path) if r.path is not None else None for r in self.runs], "key": self.key,
                "metrics": {c.key: self.stat(c.key).to_dict() for c in COLUMNS},
                "unforgetting_verified": self.unforgetting,
                "seen_accuracy": _curve_stats(self.seen_curves())}


def group_of(label: str, metrics: Sequence[dict[str, Any]]) -> Group:
    """A group from ``metrics.json`` dicts alone (scripts that hold them already, e.g. bench drivers)."""
    return Group(label, [RunRecord(None, m) for m in metrics])


def _curve_stats(curves: list[list[float]]) -> list[dict[str, Any]]:
    steps = max((len(c) for c in curves), default=0)
    return [Stat([c[i] for c in curves if i < len(c) and c[i] is not None]).to_dict() for i in range(steps)]


def resolve_group_keys(keys: Sequence[str], runs: Sequence[RunRecord]) -> list[str]:
    """``--group-by`` names as flattened config keys: ``method``, ``benchmark``, ``hparams.lr`` (or ``lr``),
    ``backbone.name``, ``benchmark.per_class`` (= ``benchmark_options.per_class``)."""
    known = sorted({k for r in runs for k in r.flat} | {"method", "benchmark", "setting", "seed"})
    out = []
    for raw in keys:
        k = raw.strip()
        if not k:
            continue
        candidates = [k, f"hparams.{k}", k.replace("benchmark.", "benchmark_options.", 1), f"benchmark_options.{k}"]
        hit = next((c for c in candidates if c in known), None)
        if hit is None:
            last = {key.rsplit(".", 1)[-1]: key for key in known}  # "memroy" -> hparams.memory
            close = list(dict.fromkeys([last[c] for c in get_close_matches(k, list(last), n=3)]
                                       + get_close_matches(k, known, n=3)))[:3]
            raise ConfigError(f"--group-by {k!r} is not a configuration key of these runs"
                              + (f"; did you mean {', '.join(close)}?" if close else "; e.g. method, benchmark, hparams.lr"))
        out.append(hit)
    if not out:
        raise ConfigError("--group-by needs at least one key, e.g. --group-by method")
    return out


def group_runs(runs: Sequence[RunRecord], by: Sequence[str] | None = None) -> list[Group]:
    """Groups in order of first appearance. ``by=None``: runs whose configurations differ only by seed
    (and where or how they ran: device, precision, data root, checkpoints kept, processes) form one group, labelled
    with the method plus whatever tells it apart from other groups of that method; else the runs that
    agree on the keys ``by`` (see ``resolve_group_keys``), labelled with their values."""
    keys = resolve_group_keys(by, runs) if by else None
    groups: dict[str, Group] = {}
    for r in runs:
        flat = r.flat
        key = {k: flat.get(k) for k in keys} if keys else {k: v for k, v in flat.items() if k not in PLACE_KEYS | {"seed"}}
        ident = json.dumps(key, sort_keys=True, default=str)
        if ident not in groups:
            groups[ident] = Group("", [], key)
        groups[ident].runs.append(r)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: (r.metrics.get("seed") is None, r.metrics.get("seed") or 0))
    if keys:
        for g in out:
            g.label = " ".join(_value(g.key[k]) for k in keys) if len(keys) == 1 else \
                ", ".join(f"{k.removeprefix('hparams.')}={_value(g.key[k])}" for k in keys)
    else:
        _label_by_difference(out)
    return out


def _value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def _label_by_difference(groups: list[Group]) -> None:
    """Method name, then the keys whose values differ from another group (of the same method first:
    ``icarl memory=20`` vs ``icarl memory=40``; between methods only data keys, as the hyperparameters
    of two methods always differ)."""
    for g in groups:
        method = g.key.get("method", "?")
        same = [o for o in groups if o is not g and o.key.get("method") == method]
        diff: list[str] = []
        for o in same:
            for k in list(g.key) + [k for k in o.key if k not in g.key]:
                if k == "epochs":  # the --epochs flag as given; its effect shows as hparams.epochs
                    continue
                if g.key.get(k) != o.key.get(k) and k not in diff:
                    diff.append(k)
        for o in groups:  # mixed comparisons: benchmark / protocol differences are part of every label
            if o is g:
                continue
            for k in g.key:
                if (k in ("benchmark", "setting") or k.startswith("benchmark_options.")) and g.key.get(k) != o.key.get(k) \
                        and k not in diff:
                    diff.append(k)
        parts = [str(method)] + [f"{_short_key(k)}={_value(g.key.get(k))}" for k in diff[:4]]
        if len(diff) > 4:
            parts.append(f"(+{len(diff) - 4} more)")
        g.label = " ".join(parts)


def _short_key(k: str) -> str:
    return k.removeprefix("hparams.").replace("benchmark_options.", "benchmark.")


# ------------------------------------------------------------------ formatting
def _num(v: float | None, kind: str, digits: int) -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{v * 100:.{digits}f}"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "mb":
        return f"{v:.2f}"
    return f"{v:.1f}"


def cell(stat: Stat, kind: str, digits: int = 2) -> str:
    """``mean ± std`` (the mean alone for one run, or when every run has the same value)."""
    if stat.n == 0:
        return "-"
    text = _num(stat.mean, kind, digits)
    if stat.n > 1 and stat.std:
        std_kind = "s" if kind == "int" else kind
        text += " ± " + (_num(stat.std, std_kind, digits) if kind != "int" else f"{stat.std:,.0f}")
    return text


def headline(groups: Sequence[Group]) -> str:
    runs = [r for g in groups for r in g.runs]
    if not runs:
        return "no runs"
    m = runs[0].metrics
    benches = sorted({str(r.metrics.get("benchmark")) for r in runs})
    settings = sorted({str(r.metrics.get("setting")) for r in runs})
    tasks = sorted({len(r.metrics.get("tasks", [])) for r in runs})
    what = f"{'/'.join(benches)}, {'/'.join(settings)}-incremental, {'/'.join(map(str, tasks))} tasks" if m else ""
    return (f"{what}; {len(runs)} run(s) in {len(groups)} group(s); mean ± sample std (n-1) over each group's runs")


Extra = Sequence[tuple[str, Callable[[Group], str]]]


def _rows(groups: Sequence[Group], columns: Sequence[str], digits: int, extra: Extra = ()) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in COLUMNS if c.key in columns]
    header = ["method", "n", "seeds"] + [c.title for c in cols]
    with_unforgetting = any(g.unforgetting is not None for g in groups)
    if with_unforgetting:
        header.append("unforgetting verified")
    rows = []
    for g in groups:
        row = [g.label, str(g.n), ",".join(_value(s) for s in g.seeds)] + [cell(g.stat(c.key), c.kind, digits) for c in cols]
        if with_unforgetting:
            row.append("-" if g.unforgetting is None else ("yes" if g.unforgetting else "NO"))
        rows.append(row + [fn(g) for _, fn in extra])
    return header + [title for title, _ in extra], rows


def format_groups(groups: Sequence[Group], fmt: str = "table", columns: Sequence[str] | None = None,
                  digits: int = 2, title: bool = True, extra: Extra = ()) -> str:
    """The comparison as ``table`` (aligned text), ``markdown``, ``csv`` (raw values: fractions, bytes,
    seconds; mean and std columns) or ``json`` (everything, per-step seen accuracy included).
    ``columns``: a subset of ``COLUMN_KEYS``; ``extra``: (title, group -> text) columns appended to the
    table and markdown formats (a script's own figures, e.g. LASEM's peak accuracy)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    columns = list(columns or COLUMN_KEYS)
    if fmt == "json":
        return json.dumps({"groups": [g.to_dict() for g in groups]}, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["label", "method", "benchmark", "setting", "n", "seeds"]
                   + [f"{k}_{s}" for k in columns for s in ("mean", "std")] + ["unforgetting_verified"])
        for g in groups:
            m = g.runs[0].metrics
            stats = [g.stat(k) for k in columns]
            w.writerow([g.label, m.get("method"), m.get("benchmark"), m.get("setting"), g.n, " ".join(_value(s) for s in g.seeds)]
                       + [("" if v is None else repr(v)) for st in stats for v in (st.mean, st.std)]
                       + ["" if g.unforgetting is None else str(g.unforgetting).lower()])
        return buf.getvalue()
    header, rows = _rows(groups, columns, digits, extra)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return (headline(groups) + "\n\n" if title else "") + "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt_row = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt_row(header)] + [fmt_row(r) for r in rows]
    return (headline(groups) + "\n" if title else "") + "\n".join(line.rstrip() for line in lines)


# ------------------------------------------------------------------ the plot
def seen_accuracy_figure(groups: Sequence[Group], title: str | None = None) -> Any:
    """Accuracy on everything seen so far after each step: one line per group (its mean), a band of
    mean +- sample std where the group has several runs."""
    from .plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    steps = 0
    for g in groups:
        stats = _curve_stats(g.seen_curves())
        xs = [i + 1 for i, s in enumerate(stats) if s["mean"] is not None]
        means = [s["mean"] * 100 for s in stats if s["mean"] is not None]
        line, = ax.plot(xs, means, marker="o", ms=3, lw=1.5, label=f"{g.label} (n={g.n})")
        stds = [(s["std"] or 0.0) * 100 for s in stats if s["mean"] is not None]
        if g.n > 1:
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.2, lw=0)
        steps = max(steps, len(xs))
    runs = [r for g in groups for r in g.runs]
    setting = runs[0].metrics.get("setting") if runs else "class"
    ax.set_xlabel("after training step")
    ax.set_ylabel(f"accuracy on all {'classes' if setting == 'class' else 'tasks'} seen (%)")
    if steps:
        ax.set_xticks(range(1, steps + 1))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    bench = "/".join(sorted({str(r.metrics.get("benchmark")) for r in runs}))
    ax.set_title(title or f"{bench}: accuracy on everything seen so far, mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def write_plot(groups: Sequence[Group], path: Path) -> None:
    """The seen-accuracy plot as PNG, SVG or PDF (by the file's suffix)."""
    from ..engine.checkpoint import atomic_write_bytes
    from .plots import figure_bytes

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"--plot {path}: use a .png, .svg or .pdf file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: folder {path.parent} does not exist")
    data = figure_bytes(seen_accuracy_figure(groups), suffix[1:])
    atomic_write_bytes(path, lambda f: f.write(data))
