"""Known methods, imported lazily (no import-time side effects, fast ``lifelong list``).

Adding a method: write one file with a ``Method`` subclass and add one line here.
"""

from __future__ import annotations

import importlib
from difflib import get_close_matches

from ..errors import ConfigError
from .base import Method

METHODS: dict[str, str] = {
    "finetune": "lifelong.methods.finetune:Finetune",
    "joint": "lifelong.methods.joint:Joint",
    "independent": "lifelong.methods.independent:Independent",
    "packnet": "lifelong.methods.packnet:PackNet",
    "piggyback": "lifelong.methods.piggyback:Piggyback",
    "cpg": "lifelong.methods.cpg:CPG",
    "icarl": "lifelong.methods.icarl:ICaRL",
    "lucir": "lifelong.methods.lucir:LUCIR",
    "bic": "lifelong.methods.bic:BiC",
    "aanets": "lifelong.methods.aanets:AANets",
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        close = get_close_matches(name, METHODS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(METHODS))}"
        raise ConfigError(f"unknown method {name!r}; {hint}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
