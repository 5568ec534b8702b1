"""lifelong: continual learning in PyTorch, every method behind one interface.

See README.md; ``lifelong.run(...)`` is the one-call entry point.

The public names are imported on first use (PEP 562), so ``import lifelong.cli`` does not load
torch: the command sets OpenMP's wait policy before torch starts its thread pool.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "api", "load_scenario": "api", "create_method": "api", "load_run": "api", "evaluate": "api",
    "Result": "api", "TrainContext": "api",
    "learn": "serve.learn", "Predictor": "serve.predict", "export": "serve.export",
    "Method": "methods.base", "TaskMeta": "methods.base", "Footprint": "methods.base",
    "LifelongError": "errors", "DataError": "errors", "ConfigError": "errors", "CheckpointError": "errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lifelong' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
