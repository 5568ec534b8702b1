"""``lifelong predict`` and ``lifelong.Predictor``: class names and probabilities for new images.

A new image is prepared exactly as the run's own images were: decoded to RGB, the shorter side
resized to the size the run stores its images at and centre-cropped (``images.fit_image``, the
cache's decoding), converted to the run's channels (``taskfolder.to_channels``), then the run's
test-time transform (``augment.eval_batch``: centre crop to the network's input size, the task's
normalisation). No training data is needed: the checkpoint's serving spec (``data/spec.py``) says
all of it. Probabilities are the softmax of the served logits (for iCaRL's nearest-mean
classifier, of its cosine scores).

Class setting: no task is needed, every class seen is scored. Task setting: the task must be named.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import RunConfig, from_dict
from ..data import augment
from ..data.images import IMAGE_SUFFIXES, _decode, fit_image
from ..data.scenario import Scenario
from ..data.spec import scenario_spec, skeleton_scenario
from ..data.taskfolder import to_channels
from ..engine.device import pick_device
from ..engine.rundir import RunDir
from ..errors import CheckpointError, ConfigError, DataError
from ..methods.base import Method

FORMATS = ("table", "json", "csv")


def load_served(run_dir: str | Path, device: str = "cpu",
                data_root: str | Path | None = None) -> tuple[Method, Scenario, RunConfig, dict[str, Any]]:
    """The method of a run's newest checkpoint over a scenario without images (its serving spec), in eval mode."""
    from ..engine.runner import build_method, scenario_for

    rundir = RunDir.open_existing(Path(run_dir))
    ckpt = rundir.latest_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; a run serves once it has finished a task")
    cfg = from_dict(ckpt["config"])
    spec = ckpt.get("serving")
    if spec is None:  # checkpoints written before serving specs: the scenario itself (needs its data)
        if data_root is not None:
            cfg.data_root = str(data_root)
        spec = scenario_spec(scenario_for(cfg, ckpt["record"].get("learned")))
    scenario = skeleton_scenario(spec)
    dev = pick_device(device)
    method = build_method(cfg, scenario, dev)
    method.rebuild(ckpt["structure"])
    try:
        method.load_state_dict(ckpt["state"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit method {cfg.method}: {str(exc).splitlines()[0]}") from None
    method.to(dev).eval()
    return method, scenario, cfg, spec


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Image files as given; a folder: every image under it (by suffix), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {p} holds no images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"image {p} not found")
    return out


class Predictor:
    """A finished run's model, served: ``Predictor(run_dir).predict(images, task=None, top=5)``.

    ``images``: a path, a PIL image or a uint8 array (H x W, or H x W x C with C in 1, 3, 4), or a
    list of them (a 4-d uint8 array is N images of H x W x C). The run's own test-time transform is
    applied (see the module docstring); ``preprocess`` gives the uint8 tensors, ``inputs`` the
    normalised network inputs (what an exported model takes), ``logits`` the scores."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", data_root: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.method, self.scenario, self.config, self.spec = load_served(run_dir, device, data_root)
        self.device = next(self.method.parameters()).device
        self.setting = self.scenario.setting
        self.channels, self.side = int(self.spec["image_shape"][0]), int(self.spec["image_shape"][1])

    # ------------------------------------------------------------------ tasks and classes
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.scenario.tasks]

    def task_index(self, task: str | int | None) -> int | None:
        """The task id ``predict`` needs: None in the class setting; a name (or index) in the task setting."""
        names = self.task_names
        if self.setting == "class":
            if task is not None:
                raise ConfigError(f"{self.run_dir} is class-incremental: every class is scored, so --task does not apply")
            return None
        if task is None:
            raise ConfigError(f"{self.run_dir} is task-incremental: pass --task NAME, one of {', '.join(names)}")
        if isinstance(task, int) and not isinstance(task, bool):
            if not 0 <= task < len(names):
                raise ConfigError(f"task index {task} is out of range: {self.run_dir} has {len(names)} tasks")
            return task
        if task not in names:
            raise ConfigError(f"no task {task!r} in {self.run_dir}; its tasks: {', '.join(names)}")
        return names.index(task)

    def class_names(self, t: int | None) -> list[str]:
        if t is None:
            return [c for task in self.scenario.tasks for c in task.class_names]
        return list(self.scenario.tasks[t].class_names)

    def normalisation(self, t: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean and std ``evaluate`` applies to task ``t``'s images (None: the class setting's)."""
        spec = self.scenario.augment
        if t is not None:
            task = self.scenario.tasks[t]
            return task.mean or spec.mean, task.std or spec.std
        if any(task.mean is not None for task in self.scenario.tasks):
            raise ConfigError(f"{self.run_dir} normalises each step's images with that step's own statistics "
                              "(per_task_norm), so an image of unknown step cannot be prepared for this class-incremental run")
        return spec.mean, spec.std

    # ------------------------------------------------------------------ preprocessing
    def _one(self, image: Any) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            rgb = _decode(Path(image), self.side)
        elif isinstance(image, Image.Image):
            rgb = fit_image(image, self.side)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise DataError(f"an image array must be uint8 H x W or H x W x C (C = 1, 3 or 4), got "
                                f"{image.dtype} {tuple(image.shape)}")
            rgb = fit_image(Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image), self.side)
        else:
            raise DataError(f"cannot read an image from a {type(image).__name__}; pass paths, PIL images or uint8 arrays")
        return torch.as_tensor(to_channels(np.ascontiguousarray(rgb)[None], self.channels))[0]

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 (N, C, H, W) as the run stores its images."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return torch.zeros((0, self.channels, self.side, self.side), dtype=torch.uint8)
        return torch.stack([self._one(im) for im in images])

    def inputs(self, images: Any, task: str | int | None = None) -> torch.Tensor:
        """The normalised float inputs of the network for ``task`` (the run's test-time transform)."""
        t = self.task_index(task)
        return self._transform(self.preprocess(images), t)

    def transform(self, x: torch.Tensor, task: str | int | None = None) -> torch.Tensor:
        """uint8 (N, C, H, W) images as the run stores them -> the network's inputs for ``task``."""
        return self._transform(x, self.task_index(task))

    def _transform(self, x: torch.Tensor, t: int | None) -> torch.Tensor:
        mean, std = self.normalisation(t)
        return augment.eval_batch(x.to(self.device), self.scenario.augment, mean, std)

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def logits(self, images: Any, task: str | int | None = None, batch_size: int = 256) -> torch.Tensor:
        t = self.task_index(task)
        x = self.preprocess(images)
        self.method.eval()
        outs = [self.method.predict(self._transform(x[i:i + batch_size], t), t).float().cpu()
                for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.zeros((0, len(self.class_names(t))))

    def probabilities(self, images: Any, task: str | int | None = None) -> torch.Tensor:
        return torch.softmax(self.logits(images, task), dim=1)

    def predict(self, images: Any, task: str | int | None = None, top: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``top`` classes (name, probability), most probable first."""
        if top < 1:
            raise ConfigError(f"--top {top} must be at least 1")
        t = self.task_index(task)
        names = self.class_names(t)
        probs = self.probabilities(images, t)
        k = min(top, probs.shape[1])
        values, idx = probs.topk(k, dim=1)
        return [[(names[j], float(v)) for v, j in zip(vs.tolist(), js.tolist())] for vs, js in zip(values, idx)]


def format_predictions(files: Sequence[str], preds: list[list[tuple[str, float]]], fmt: str) -> str:
    """``table`` (one line per image), ``json`` (a list of {image, predictions}) or ``csv`` (image, rank, class, probability)."""
    if fmt == "json":
        return json.dumps([{"image": f, "predictions": [{"class": c, "probability": p} for c, p in ps]}
                           for f, ps in zip(files, preds)], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "rank", "class", "probability"])
        for f, ps in zip(files, preds):
            for r, (c, p) in enumerate(ps, start=1):
                w.writerow([f, r, c, f"{p:.6f}"])
        return buf.getvalue().rstrip("\n")
    width = max([len("image")] + [len(f) for f in files])
    lines = [f"{'image':<{width}}  predictions (probability)"]
    for f, ps in zip(files, preds):
        lines.append(f"{f:<{width}}  " + "  ".join(f"{c} ({p:.3f})" for c, p in ps))
    return "\n".join(lines)
