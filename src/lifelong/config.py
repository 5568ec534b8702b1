"""The run configuration: one resolved, typed, validated tree written to ``config.yaml``.

Layers, later wins: method defaults (the paper's) -> the method's per-setting
defaults -> the benchmark's epoch budget -> ``--config FILE`` -> command-line flags
-> ``--set KEY=VALUE``. Keys of ``--set``: a method hyperparameter (``lr``, or
``method.lr``), ``backbone.KEY`` or ``benchmark.KEY``. Values are parsed as YAML
and checked against the dataclass field's type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml

from .data.benchmarks import BENCHMARKS, BenchmarkConfig, get_benchmark
from .errors import ConfigError
from .methods.registry import method_class
from .nn.backbones import DEFAULT_BACKBONE, BackboneConfig

# Embedded toy benchmarks (a few hundred 8x8 images per task) train for a few epochs per phase
# with small batches, not the CIFAR/ImageNet schedules. ``epochs`` scales every *epochs field and
# its milestones, as --epochs does; a smaller ``batch_size`` scales every *lr field by the same
# factor (the linear scaling rule, Goyal et al. 2017). Recorded in config.yaml and overridable.
BENCHMARK_HPARAMS: dict[str, dict[str, int]] = {
    "digits": {"epochs": 10, "batch_size": 32},
    "permuted-digits": {"epochs": 5, "batch_size": 32},
    # MNIST family (60,000 28x28 train images): a few epochs at batch 64 fit a CPU (docs/benchmarks.md).
    "mnist": {"epochs": 3, "batch_size": 64},
    "fashion-mnist": {"epochs": 3, "batch_size": 64},
    "permuted-mnist": {"epochs": 3, "batch_size": 64},
    "permuted-fashion-mnist": {"epochs": 3, "batch_size": 64},
    "rotated-mnist": {"epochs": 2, "batch_size": 64},  # 10 tasks of 60,000 images through a conv net
    "rotated-fashion-mnist": {"epochs": 2, "batch_size": 64},
}

DEVICES = "auto|cpu|cuda|cuda:I"
# Where and how a run ran, not what it is: may change on --resume, may differ between the seeds of one
# --seeds folder, and do not split `lifelong compare`'s groups.
HOW_IT_RAN = frozenset({"out", "device", "precision", "data_root", "world_size", "backend", "channels_last", "compile"})
PRECISIONS = ("32", "bf16", "16")


@dataclass
class RunConfig:
    method: str
    benchmark: str
    setting: str
    seed: int = 0
    epochs: int | None = None
    data_root: str | None = None
    out: str | None = None
    device: str = "auto"
    precision: str = "32"
    keep: str = "all"  # checkpoints: "all" or "last"
    channels_last: bool = False  # NHWC networks and inputs (--channels-last), for CUDA tensor cores
    compile: str | None = None  # --compile [BACKEND]: torch.compile each phase's loss (inductor; eager for debugging)
    sync_bn: bool = True  # under torchrun: BatchNorm over the global batch, as one process (docs/scaling.md)
    world_size: int = 1  # recorded, not chosen: the processes torchrun started (set by the runner)
    backend: str | None = None  # recorded: the process group's backend (gloo, nccl), None in one process
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    benchmark_options: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    hparams: Any = None  # the method's Config dataclass

    def to_dict(self) -> dict[str, Any]:
        # ``out`` is where this run lives, not part of what it is: re-running config.yaml makes a new folder.
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "out"}
        d["backbone"] = dataclasses.asdict(self.backbone)
        d["benchmark_options"] = dataclasses.asdict(self.benchmark_options)
        d["hparams"] = dataclasses.asdict(self.hparams)
        return d


# ----------------------------------------------------------------- typed values
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int, float, bool, str, list[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}={value!r} is not a valid {' or '.join(_type_name(a) for a in args if a is not type(None))}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and inner is not Any:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not a list; write e.g. {key}=[1,2,3]")
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} is not an integer")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r} is not a number") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{key}={value!r} is not a (finite) number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} is not a string")
    return value


def set_field(obj: Any, name: str, raw: Any, key: str, parse: bool) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    if name not in names:
        close = get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(names)}"
        raise ConfigError(f"unknown key {key!r}{hint}")
    if parse and isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            pass  # keep the string; coerce() decides
    setattr(obj, name, coerce(raw, hints[name], key))


def apply_epochs(hp: Any, epochs: int) -> None:
    """Set every ``epochs``/``*_epochs`` field; scale its ``milestones``/``*_milestones`` to match."""
    for f in fields(hp):
        if f.name != "epochs" and not f.name.endswith("_epochs"):
            continue
        old = getattr(hp, f.name)
        if old is None:
            continue
        setattr(hp, f.name, epochs)
        ms = "milestones" if f.name == "epochs" else f.name[: -len("epochs")] + "milestones"
        if hasattr(hp, ms) and old:
            scaled = sorted({max(1, round(m * epochs / old)) for m in getattr(hp, ms) if m < old})
            setattr(hp, ms, [m for m in scaled if m < epochs] or [])


def scale_batch(hp: Any, batch_size: int) -> None:
    """Set ``batch_size`` and scale ``lr``/``*_lr`` linearly with it."""
    factor = batch_size / hp.batch_size
    hp.batch_size = batch_size
    for f in fields(hp):
        if (f.name == "lr" or f.name.endswith("_lr")) and isinstance(getattr(hp, f.name), float):
            setattr(hp, f.name, getattr(hp, f.name) * factor)


# ----------------------------------------------------------------- resolution
def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


_TOP = {f.name for f in fields(RunConfig)} - {"backbone", "benchmark_options", "hparams"}


def resolve(
    method: str | None = None,
    benchmark: str | None = None,
    setting: str | None = None,
    config_file: Path | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Build the run's configuration from every layer; raises ``ConfigError`` naming the bad key."""
    base = load_yaml(config_file) if config_file else {}
    top = {k: v for k, v in base.items() if k in _TOP}
    unknown = set(base) - _TOP - {"backbone", "benchmark_options", "hparams"}
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} in {config_file}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    top.update({k: v for k, v in overrides.items() if k in _TOP})
    method = method or top.get("method")
    benchmark = benchmark or top.get("benchmark")
    if not method:
        raise ConfigError("no method given; pass --method NAME (see `lifelong list`)")
    if not benchmark:
        raise ConfigError("no benchmark given; pass --benchmark NAME (see `lifelong list`)")
    cls = method_class(method)
    bench = get_benchmark(benchmark)
    setting = setting or top.get("setting") or (cls.settings[0] if cls.settings[0] in bench.settings else bench.settings[0])
    if setting not in ("task", "class"):
        raise ConfigError(f"unknown setting {setting!r}; use task or class")
    if setting not in cls.settings:
        raise ConfigError(f"method {method} supports --setting {' or '.join(cls.settings)}, not {setting}")
    if setting not in bench.settings:
        raise ConfigError(f"benchmark {benchmark} supports --setting {' or '.join(bench.settings)}, not {setting}")

    hp = cls.Config()
    for k, v in cls.setting_defaults.get(setting, {}).items():
        setattr(hp, k, v)
    for key, choices in cls.variant_defaults.items():  # e.g. iCaRL's variant=aanets schedule
        for k, v in choices.get(_chosen(key, base.get("hparams") or {}, sets or [], getattr(hp, key)), {}).items():
            setattr(hp, k, v)
    for k, v in BENCHMARK_HPARAMS.get(benchmark, {}).items():
        if k == "epochs":
            apply_epochs(hp, v)
        elif k == "batch_size" and hasattr(hp, k):
            scale_batch(hp, v)
    for k, v in cls.benchmark_defaults.get(benchmark, {}).items():  # a method's own toy-budget overrides
        setattr(hp, k, v)
    cfg = RunConfig(method=method, benchmark=benchmark, setting=setting, hparams=hp)
    cfg.backbone.name = DEFAULT_BACKBONE.get(benchmark)

    for section, target in (("backbone", cfg.backbone), ("benchmark_options", cfg.benchmark_options), ("hparams", hp)):
        values = base.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{section} in {config_file} must be a mapping")
        for k, v in values.items():
            set_field(target, k, v, f"{section}.{k}", parse=False)
    for k, v in top.items():
        if k not in ("method", "benchmark", "setting"):
            set_field(cfg, k, v, k, parse=False)

    # Command-line structural flags map onto the benchmark / method sections.
    for flag in ("tasks", "base", "increment"):
        if flag in overrides:
            set_field(cfg.benchmark_options, flag, overrides[flag], f"--{flag}", parse=False)
    if "memory" in overrides:
        if not hasattr(hp, "memory"):
            from .methods.registry import METHODS

            keepers = [m for m in METHODS if any(f.name == "memory" for f in fields(method_class(m).Config))]
            raise ConfigError(f"method {method} keeps no exemplar memory; --memory applies to {', '.join(keepers)}")
        set_field(hp, "memory", overrides["memory"], "--memory", parse=False)
    if "backbone" in overrides:
        cfg.backbone.name = str(overrides["backbone"])
    if "epochs" in overrides or cfg.epochs is not None:
        epochs = coerce(overrides.get("epochs", cfg.epochs), int, "--epochs")
        if epochs < 1:
            raise ConfigError(f"--epochs {epochs} must be at least 1")
        cfg.epochs = epochs
        apply_epochs(hp, epochs)

    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE (e.g. --set lr=0.05)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key.startswith("backbone."):
            set_field(cfg.backbone, key.split(".", 1)[1], raw, key, parse=True)
        elif key.startswith("benchmark."):
            set_field(cfg.benchmark_options, key.split(".", 1)[1], raw, key, parse=True)
        else:
            name = key.removeprefix("method.")
            if name in _TOP and not any(f.name == name for f in fields(hp)):
                set_field(cfg, name, raw, key, parse=True)
            elif not any(f.name == name for f in fields(hp)) and any(f.name == name for f in fields(BenchmarkConfig)):
                set_field(cfg.benchmark_options, name, raw, key, parse=True)
            else:
                set_field(hp, name, raw, key, parse=True)

    validate(cfg)
    return cfg


def _chosen(key: str, file_hparams: dict[str, Any], sets: list[str], default: Any) -> Any:
    """The value ``key`` will end up with from the config file and ``--set`` (last wins), read ahead of
    the other layers so the defaults that depend on it can go underneath them."""
    value = file_hparams.get(key, default)
    for item in sets:
        k, _, raw = item.partition("=")
        if k.strip().removeprefix("method.") == key:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
    return value


def validate(cfg: RunConfig) -> None:
    if cfg.seed < 0:
        raise ConfigError(f"--seed {cfg.seed} must be >= 0")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"--precision {cfg.precision} is not one of {', '.join(PRECISIONS)}")
    if cfg.keep not in ("all", "last"):
        raise ConfigError(f"--keep {cfg.keep} must be 'all' or 'last'")
    if cfg.benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {cfg.benchmark}")
    for name in ("tasks", "base", "increment"):
        v = getattr(cfg.benchmark_options, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name} {v} must be at least 1")
    if hasattr(cfg.hparams, "validate"):
        cfg.hparams.validate()


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a ``RunConfig`` from ``config.yaml`` or a checkpoint's copy."""
    cls = method_class(d["method"])
    hp = cls.Config()
    for k, v in (d.get("hparams") or {}).items():
        set_field(hp, k, v, f"hparams.{k}", parse=False)
    cfg = RunConfig(method=d["method"], benchmark=d["benchmark"], setting=d["setting"], hparams=hp)
    for k, v in (d.get("backbone") or {}).items():
        set_field(cfg.backbone, k, v, f"backbone.{k}", parse=False)
    for k, v in (d.get("benchmark_options") or {}).items():
        set_field(cfg.benchmark_options, k, v, f"benchmark_options.{k}", parse=False)
    for k in _TOP - {"method", "benchmark", "setting"}:
        if k in d:
            set_field(cfg, k, d[k], k, parse=False)
    return cfg


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested configuration as ``{"hparams.lr": 0.1, ...}``: what comparisons of configurations walk."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
