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
    "pae": "lifelong.methods.pae:PAE",
    "icarl": "lifelong.methods.icarl:ICaRL",
    "lucir": "lifelong.methods.lucir:LUCIR",
    "bic": "lifelong.methods.bic:BiC",
    "clr": "lifelong.methods.clr:CLR", "clr-full": "lifelong.methods.clr:CLRFull",
    "prognn": "lifelong.methods.prognn:ProgNN",
    # LASEM family (lasem.md): baselines, static transfer configurations, EM search
    "stl": "lifelong.methods.stl:STL",
    "snn": "lifelong.methods.stl:SNN",
    "hps": "lifelong.methods.selective:HPS",
    "tf": "lifelong.methods.selective:TF",
    "dfcnn": "lifelong.methods.selective:DFCNN",
    "lasem-hps": "lifelong.methods.lasem:LASEMHPS",
    "lasem-tf": "lifelong.methods.lasem:LASEMTF",
    "lasem-dfcnn": "lifelong.methods.lasem:LASEMDFCNN",
    "lasemg-hps": "lifelong.methods.lasem:LASEMGHPS",
    "lasemg-tf": "lifelong.methods.lasem:LASEMGTF",
    "lasemg-dfcnn": "lifelong.methods.lasem:LASEMGDFCNN",
    # the rest of LASEM's table (lasem_baselines.md): the configuration oracle, APD, CCGN, DEN
    "bruteforce-hps": "lifelong.methods.bruteforce:BruteForceHPS",
    "bruteforce-tf": "lifelong.methods.bruteforce:BruteForceTF",
    "bruteforce-dfcnn": "lifelong.methods.bruteforce:BruteForceDFCNN",
    "apd": "lifelong.methods.apd:APD",
    "ccgn": "lifelong.methods.ccgn:CCGN",
    "den": "lifelong.methods.den:DEN",
    "darts-hps": "lifelong.methods.darts:DARTSHPS",
    "darts-dfcnn": "lifelong.methods.darts:DARTSDFCNN",
    "replay": "lifelong.methods.replay:Replay",
    "lwf": "lifelong.methods.lwf:LwF",
    "ewc": "lifelong.methods.ewc:EWC",
    "si": "lifelong.methods.si:SI",
    "aanets": "lifelong.methods.aanets:AANets",
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        close = get_close_matches(name, METHODS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(METHODS))}"
        raise ConfigError(f"unknown method {name!r}; {hint}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
