"""User-facing errors. The CLI prints ``error: <message>`` and exits with status 2.

Every message names the thing that is wrong and how to fix it; code raising these
never needs a traceback to be understood.
"""

from __future__ import annotations


class LifelongError(Exception):
    """Base class of every error caused by the user's input rather than a bug."""


class DataError(LifelongError):
    """Missing, malformed or unsafe dataset files."""


class ConfigError(LifelongError):
    """Unknown names, bad values, settings a method does not support."""


class CheckpointError(LifelongError):
    """A run folder or checkpoint that is missing, foreign or damaged."""


class DistributedError(LifelongError):
    """A multi-process (torchrun) run whose processes do not agree."""


class Interrupted(Exception):
    """Ctrl-C during a run: carries the run folder so the message can say how to continue."""

    def __init__(self, run_dir: object, finished: int) -> None:
        super().__init__(f"interrupted after {finished} finished task(s) in {run_dir}")
        self.run_dir = run_dir
        self.finished = finished
