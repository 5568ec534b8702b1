"""Device, precision and seeding set-up, done once per run by the engine."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import ConfigError


def pick_device(spec: str) -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:I``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec} asked for CUDA but this machine has no usable GPU; use --device cpu")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device(spec)
    raise ConfigError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:I")


def check_precision(precision: str, device: torch.device) -> None:
    if precision != "32" and device.type != "cuda":
        raise ConfigError(f"--precision {precision} needs a CUDA device; on the CPU use --precision 32")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG; deterministic kernels so a run (and a resumed run) repeats bit for bit."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
