"""Configuration layering, typed --set, epoch scaling, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lifelong.config import apply_epochs, from_dict, resolve
from lifelong.errors import ConfigError
from lifelong.methods.finetune import FinetuneConfig


def test_defaults_are_the_papers_and_digits_budget() -> None:
    cfg = resolve("finetune", "digits", "task")
    hp = cfg.hparams
    assert (hp.epochs, hp.batch_size, hp.lr, hp.milestones) == (10, 32, 0.01, [5, 8])  # 100 ep, [50, 80] scaled
    cls = resolve("finetune", "digits", "class").hparams
    assert cls.batch_size == 32 and cls.lr == pytest.approx(0.1 * 32 / 128)  # linear scaling from 128
    assert resolve("finetune", "cifar100", "class").hparams.epochs == 160


def test_set_is_typed_and_routed() -> None:
    assert resolve("finetune", "digits", "task", sets=["lr=1e-3"]).hparams.lr == 0.001  # YAML 1.1 reads 1e-3 as a string
    cfg = resolve("finetune", "digits", "task", sets=["lr=0.5", "backbone.width=2", "benchmark.class_order=[9,8,7,6,5,4,3,2,1,0]",
                                                     "nesterov=false", "milestones=[3]"])
    assert cfg.hparams.lr == 0.5 and cfg.backbone.width == 2.0 and cfg.benchmark_options.class_order[0] == 9
    assert cfg.hparams.nesterov is False and cfg.hparams.milestones == [3]


@pytest.mark.parametrize("item,match", [
    ("lr=abc", "lr='abc' is not a number"),
    ("lr=nan", "finite"),
    ("epochs=2.5", "not an integer"),
    ("lrr=0.1", "did you mean lr"),
    ("backbone.widht=2", "did you mean width"),
    ("nesterov=maybe", "boolean"),
    ("noequals", "KEY=VALUE"),
    ("epochs=-3", "at least 1"),
])
def test_bad_set_values(item: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve("finetune", "digits", "task", sets=[item])


def test_epochs_override_scales_milestones() -> None:
    hp = FinetuneConfig()
    apply_epochs(hp, 20)
    assert hp.epochs == 20 and hp.milestones == [10, 16]
    with pytest.raises(ConfigError, match="--epochs"):
        resolve("finetune", "digits", "task", overrides={"epochs": -3})


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="independent supports --setting task"):
        resolve("independent", "digits", "class")
    with pytest.raises(ConfigError, match="permuted-digits supports --setting task"):
        resolve("finetune", "permuted-digits", "class")
    with pytest.raises(ConfigError, match="keeps no exemplar memory"):
        resolve("finetune", "digits", "class", overrides={"memory": 40})


def test_config_file_round_trip(tmp_path: Path) -> None:
    cfg = resolve("joint", "digits", "class", sets=["lr=0.02"], overrides={"seed": 3, "tasks": 5})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = resolve(config_file=path)
    assert again.to_dict() == cfg.to_dict()
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    (tmp_path / "bad.yaml").write_text("method: joint\nbenchmark: digits\nhparams: {lr: fast}\n")
    with pytest.raises(ConfigError, match="hparams.lr"):
        resolve(config_file=tmp_path / "bad.yaml")
