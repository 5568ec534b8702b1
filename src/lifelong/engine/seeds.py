"""``lifelong run ... --seeds 0,1,2``: one run folder per seed, ``<out>/seed-<s>``, resumable as a whole.

Running the same command again continues where it stopped: a finished seed is read back, a seed with
checkpoints resumes from its last finished task (``run_job(resume=True)``, exactly as ``--resume``), a
seed not started yet starts. A folder whose saved configuration differs from the command's (other
than the seed and where or how it runs: device, precision, data root) is refused, naming the key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable

from ..config import HOW_IT_RAN, RunConfig, flatten
from .distributed import launched_rank
from ..errors import ConfigError

_MAY_DIFFER = HOW_IT_RAN


def parse_seeds(text: str) -> list[int]:
    """``0,1,2``, ``0..4`` (inclusive) or a mix (``0..2,7``); distinct, in the order given."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"seed range {part} is empty; write LOW..HIGH, e.g. 0..4")
            seeds += range(lo, hi + 1)
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise ConfigError(f"seeds {text!r}: expected seeds >= 0 as 0,1,2 or a range 0..4")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {text!r} name a seed twice")
    return seeds


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def state(folder: Path) -> str:
    """``done`` (every task finished), ``partial`` (checkpoints to resume from) or ``new``."""
    import json

    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            m = json.loads(metrics.read_text())
            if m.get("tasks_completed") == len(m.get("tasks") or []) and m.get("tasks"):
                return "done"
        except (OSError, ValueError):
            pass
    ckpts = folder / "checkpoints"
    if ckpts.is_dir() and any(ckpts.glob("task-*.pt")):
        return "partial"
    return "new"


def check_same(cfg: RunConfig, folder: Path) -> None:
    """Refuse to continue ``folder`` with a configuration other than the one it was started with."""
    from .rundir import RunDir

    saved = flatten(RunDir.open_existing(folder).read_config())
    wanted = flatten(cfg.to_dict())
    for key in list(wanted) + [k for k in saved if k not in wanted]:
        if key in _MAY_DIFFER:
            continue
        if saved.get(key) != wanted.get(key):
            raise ConfigError(f"{folder} was run with {key}={saved.get(key)!r} but this command gives {wanted.get(key)!r}; "
                              "use the command it was started with, or another --out")


def run_seeds(cfg: RunConfig, seeds: list[int], out: Path, echo: Callable[[str], None] | None = None,
              progress: bool = False, log: str | None = None) -> list[Path]:
    """Train ``cfg`` once per seed into ``out/seed-<s>``; returns the run folders in seed order."""
    from .runner import run_job

    say = echo or (lambda s: None)
    plans = []
    for s in seeds:  # every folder checked before anything trains
        c = copy.deepcopy(cfg)
        c.seed = s
        folder = seed_dir(out, s)
        st = state(folder)
        if st != "new":
            check_same(c, folder)
        elif folder.is_dir() and launched_rank() == 0:
            from .rundir import RunDir

            RunDir(folder).create()  # a kill mid-write before the first checkpoint leaves only temp files: drop them
        plans.append((s, c, folder, st))
    for s, c, folder, st in plans:
        if st == "done":
            say(f"seed {s}: finished earlier, read back from {folder}")
            continue
        say(f"seed {s}: {'resuming' if st == 'partial' else 'training'} in {folder}")
        run_job(c, folder, resume=st == "partial", echo=echo, progress=progress, log=log)
    return [folder for _, _, folder, _ in plans]
