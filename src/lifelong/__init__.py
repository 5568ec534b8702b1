"""lifelong: continual learning in PyTorch, every method behind one interface.

See README.md; ``lifelong.run(...)`` is the one-call entry point.
"""

from .api import Result, create_method, load_run, load_scenario, run
from .errors import CheckpointError, ConfigError, DataError, LifelongError
from .methods.base import Footprint, Method, TaskMeta

__version__ = "0.1.0"
__all__ = ["run", "load_scenario", "create_method", "load_run", "Result", "Method", "TaskMeta", "Footprint",
           "LifelongError", "DataError", "ConfigError", "CheckpointError"]
