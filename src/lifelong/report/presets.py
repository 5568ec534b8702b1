"""``lifelong presets`` (= ``lifelong list --presets``): every ``configs/*.yaml`` with its method, benchmark,
the paper numbers it targets (read from the file's comment header: its "Paper target ...", "Target ...",
"Paper ...", "Reported ..." sentence, else the sentence that says which table it follows or that no
number is published) and whether its data is present under ``--data-root``."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

_TARGET = re.compile(r"\b(Paper target|Target|Paper|Reported)\b")
_FALLBACK = re.compile(r"\b(paper|table|reported|published|numbers?)\b", re.I)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z(`])")


@dataclass
class Preset:
    path: Path
    method: str
    benchmark: str
    setting: str
    target: str | None
    data: str  # embedded | present | missing | needs --data-root | unknown benchmark


def header_text(text: str) -> str:
    """The leading comment block as one line, without its usage line (``lifelong run --config ...``)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if not body.startswith("lifelong run"):
            lines.append(body)
    return " ".join(lines)


def target_of(text: str) -> str | None:
    """The sentence of a preset's header that states the numbers it targets (see the module docstring)."""
    header = header_text(text)
    m = _TARGET.search(header)
    if m:
        rest = header[m.start():]
        end = _SENTENCE_END.search(rest)
        return rest[: end.start() + 1] if end else rest
    for sentence in _SENTENCE_END.split(header):
        if _FALLBACK.search(sentence) and (re.search(r"\d", sentence) or re.search(r"\bno\b|\bnot\b", sentence, re.I)):
            return sentence.strip().rstrip(".") + "."
    return None


def default_configs_dir() -> Path:
    """``./configs`` when it holds presets, else the repository's ``configs/`` next to the package."""
    here = Path("configs")
    if here.is_dir() and any(here.glob("*.yaml")):
        return here
    repo = Path(__file__).resolve().parents[3] / "configs"
    if repo.is_dir():
        return repo
    raise ConfigError("no configs/ folder with presets found here or beside the package; pass --configs DIR")


def data_status(benchmark: str, data_root: Path | None) -> str:
    from ..data.benchmarks import BENCHMARKS

    b = BENCHMARKS.get(benchmark)
    if b is None:
        return "unknown benchmark"
    if b.embedded:
        return "embedded"
    found, looked = b.locate(data_root)
    if found is not None:
        return "present"
    return "missing" if looked else "needs --data-root"


def load_presets(folder: Path | None = None, data_root: Path | None = None) -> list[Preset]:
    import yaml

    folder = Path(folder) if folder is not None else default_configs_dir()
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if not files:
        raise ConfigError(f"{folder} holds no *.yaml presets")
    root = Path(data_root).expanduser() if data_root else None
    out = []
    for f in files:
        text = f.read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"preset {f} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"preset {f} must hold a mapping of keys to values")
        bench = str(data.get("benchmark", "?"))
        out.append(Preset(f, str(data.get("method", "?")), bench, str(data.get("setting") or "-"), target_of(text),
                          data_status(bench, root)))
    return out


def format_presets(presets: list[Preset], width: int = 110) -> str:
    name_w = max(len(p.path.name) for p in presets)
    meth_w = max(len(p.method) for p in presets)
    bench_w = max(len(f"{p.benchmark}/{p.setting}") for p in presets)
    data_w = max(len(p.data) for p in presets)
    lines = [f"{'preset':<{name_w}}  {'method':<{meth_w}}  {'benchmark/setting':<{bench_w}}  {'data':<{data_w}}  target"]
    indent = " " * 4
    for p in presets:
        lines.append(f"{p.path.name:<{name_w}}  {p.method:<{meth_w}}  {p.benchmark + '/' + p.setting:<{bench_w}}  {p.data:<{data_w}}")
        lines += textwrap.wrap(p.target or "(no target stated in the file's header)", width, initial_indent=indent,
                               subsequent_indent=indent)
    return "\n".join(lines)
