"""What serving a run's model needs of its scenario, without its data: the serving spec.

Every checkpoint carries ``scenario_spec(scenario)``: the setting, the stored image shape, the
test-time transform (``AugmentSpec``: input size, normalisation) and per task its name, class
names, label offset and normalisation. ``skeleton_scenario`` turns it back into a ``Scenario``
whose tasks hold no images, which is all ``build_method`` and ``Method.rebuild`` read, so
``lifelong predict`` and ``lifelong export`` work where the training data is not.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from .augment import AugmentSpec
from .imageset import ImageSet
from .scenario import Scenario, Task

VERSION = 1


def _floats(v: Any) -> list[float] | None:
    return None if v is None else [float(x) for x in v]


def scenario_spec(scenario: Scenario) -> dict[str, Any]:
    first = scenario.tasks[0]
    shape = first.train.shape if len(first.train) else first.test.shape
    aug = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(scenario.augment).items()}
    return {"version": VERSION, "benchmark": scenario.name, "setting": scenario.setting,
            "in_channels": int(scenario.in_channels), "image_shape": [int(s) for s in shape], "augment": aug,
            "tasks": [{"name": t.name, "class_names": list(t.class_names), "offset": int(t.offset),
                       "mean": _floats(t.mean), "std": _floats(t.std)} for t in scenario.tasks]}


def skeleton_scenario(spec: dict[str, Any]) -> Scenario:
    aug = dict(spec["augment"])
    aug["mean"], aug["std"] = tuple(aug["mean"]), tuple(aug["std"])
    c, h, w = spec["image_shape"]
    tasks = []
    for i, t in enumerate(spec["tasks"]):
        empty = ImageSet(torch.zeros((0, c, h, w), dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                         class_names=list(t["class_names"]))
        k = len(t["class_names"])
        tasks.append(Task(i, t["name"], list(range(t["offset"], t["offset"] + k)), list(t["class_names"]), empty, empty,
                          empty, t["offset"], None if t["mean"] is None else tuple(t["mean"]),
                          None if t["std"] is None else tuple(t["std"])))
    return Scenario(spec["benchmark"], spec["setting"], tasks, AugmentSpec(**aug), int(spec["in_channels"]))
