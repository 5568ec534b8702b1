"""The run folder: every file a run writes goes through here (rank 0 only under DDP).

Layout: ``config.yaml``, ``metrics.json``, ``log.csv``, ``accuracy.png``,
``checkpoints/task-NN.pt``. Every write is atomic, so an interrupted run never
leaves a half-written file and nothing already written is lost.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

LOG_FIELDS = ["task", "phase", "epoch", "loss", "accuracy", "lr", "seconds", "samples_per_s"]
_CKPT = re.compile(r"task-(\d+)\.pt$")
# atomic_write_bytes's temp names: ".<final name>.<random>"
_TEMP = re.compile(r"^\.(config\.yaml|metrics\.json|log\.csv|accuracy\.png|task-\d+\.pt)\..+$")


class RunDir:
    def __init__(self, path: Path, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable

    # ------------------------------------------------------------- opening
    @staticmethod
    def open_existing(path: Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise CheckpointError(f"{path} is not a lifelong run folder (no config.yaml); pass the folder `lifelong run` wrote")
        return RunDir(path)

    def create(self) -> None:
        """Make the folder; remove temp files a killed run left behind (they were never renamed into place)."""
        if not self.writable:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        for folder in (self.path, self.path / "checkpoints"):
            for tmp in folder.iterdir():
                if tmp.is_file() and _TEMP.match(tmp.name):
                    tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------- files
    def write_config(self, config: dict[str, Any]) -> None:
        if self.writable:
            atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(f"{self.path / 'config.yaml'} is unreadable: {exc}") from None
        if not isinstance(data, dict) or "method" not in data:
            raise CheckpointError(f"{self.path / 'config.yaml'} is not a lifelong run configuration")
        return data

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.writable:
            atomic_write_text(self.path / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False, default=_json_default))

    def read_metrics(self) -> dict[str, Any]:
        p = self.path / "metrics.json"
        if not p.is_file():
            raise CheckpointError(f"{self.path} has no metrics.json yet (the run has not finished a task)")
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{p} is damaged: {exc}") from None

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``log.csv`` whole (atomic) from all epoch rows so far."""
        if not self.writable:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path / "log.csv", buf.getvalue())

    def read_log(self) -> list[dict[str, Any]]:
        p = self.path / "log.csv"
        if not p.is_file():
            return []
        with p.open() as f:
            return list(csv.DictReader(f))

    # ------------------------------------------------------------- checkpoints
    def checkpoint_path(self, task_index: int) -> Path:
        return self.path / "checkpoints" / f"task-{task_index + 1:02d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        found = []
        for p in (self.path / "checkpoints").glob("task-*.pt"):
            m = _CKPT.search(p.name)
            if m:
                found.append((int(m.group(1)) - 1, p))
        return sorted(found)

    def save_checkpoint(self, task_index: int, payload: dict[str, Any], keep: str) -> None:
        if not self.writable:
            return
        save_checkpoint(self.checkpoint_path(task_index), payload)
        if keep == "last":
            for i, p in self.checkpoints():
                if i != task_index:
                    p.unlink(missing_ok=True)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        ckpts = self.checkpoints()
        return load_checkpoint(ckpts[-1][1]) if ckpts else None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
