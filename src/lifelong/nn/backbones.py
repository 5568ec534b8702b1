"""The backbone registry: one contract (``forward(x) -> (N, out_dim)`` features), heads separate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .cnn20 import CNN20
from .convnets import MLP, SmallConvNet
from .lasem_cnn import LasemCNN, lasem_spec
from .preact_resnet import PreActResNet18
from .resnet import BasicBlock, Bottleneck, CifarResNet, ResNet
from .vgg import VGG16BN


@dataclass
class BackboneConfig:
    """``--backbone NAME`` and ``--set backbone.KEY=VALUE``."""

    name: str | None = None  # None: the benchmark's default (see DEFAULT_BACKBONE)
    weights: str | None = None  # a local state dict (torchvision names for resnet18/50); never downloaded
    width: float = 1.0  # channel multiplier
    last_relu: bool = True  # False drops the final ReLU (LUCIR's cosine classifier)
    cifar_stem: bool | None = None  # resnet18/50: 3x3 stem without max-pool; default: inputs <= 64 px
    shortcut: str = "B"  # resnet32: "B" 1x1 conv + BN (LUCIR/AANets, manets.md 2.1), "A" zero-padded identity (iCaRL)
    variant: str | None = None  # lasem_cnn: cifar4|cifar6|officehome4|officehome6|stl6 (lasem.md 2); default by input size


# Default backbone per benchmark: the protocols' networks (CPG's VGG-16-BN, iCaRL/LUCIR's ResNet-32, ...).
DEFAULT_BACKBONE = {
    "digits": "convnet",
    "permuted-digits": "mlp",
    "cifar100": "resnet32",
    "cifar100-superclass20": "vgg16_bn",
    "stl10": "resnet18",
    "folder": "resnet18",
    "list": "resnet18",
    "dct": "resnet18",  # CLR's DCT protocol (ResNet-50 in the preset, with published weights)
    "cifar100-lasem": "lasem_cnn",  # lasem.md 2 (variant by input size: 32 px -> cifar4, 96 px -> stl6)
    "stl10-lasem": "lasem_cnn",
    "officehome-lasem": "lasem_cnn",  # 128 px -> officehome4
    "officehome-incremental": "lasem_cnn",
    # 28x28 grey images: a small conv net; permuted pixels have no spatial structure, so the
    # permuted streams keep the MLP of the permuted-MNIST papers (Kirkpatrick et al. 2017).
    "mnist": "convnet_fc",
    "fashion-mnist": "convnet_fc",
    "rotated-mnist": "convnet_fc",
    "rotated-fashion-mnist": "convnet_fc",
    "permuted-mnist": "mlp",
    "permuted-fashion-mnist": "mlp",
}


def _cifar_stem(cfg: BackboneConfig, size: int) -> bool:
    return cfg.cifar_stem if cfg.cifar_stem is not None else size <= 64


BUILDERS: dict[str, Callable[[BackboneConfig, int, int], nn.Module]] = {
    "convnet": lambda c, ch, s: SmallConvNet(ch, c.width),
    "convnet_fc": lambda c, ch, s: SmallConvNet(ch, c.width, (32, 64), (0, 1), fc=128, image_size=s),  # 28x28 MNIST family
    "mlp": lambda c, ch, s: MLP(ch * s * s, width=c.width),
    "resnet32": lambda c, ch, s: CifarResNet(32, ch, c.width, c.last_relu, c.shortcut),
    "resnet18": lambda c, ch, s: ResNet(BasicBlock, [2, 2, 2, 2], ch, c.width, _cifar_stem(c, s), c.last_relu),
    "resnet50": lambda c, ch, s: ResNet(Bottleneck, [3, 4, 6, 3], ch, c.width, _cifar_stem(c, s), c.last_relu),
    "vgg16_bn": lambda c, ch, s: VGG16BN(ch, c.width, s),
    "cnn20": lambda c, ch, s: CNN20(ch, c.width, s),  # CPG's face experiment (cpg.md 3)
    "preact_resnet18": lambda c, ch, s: PreActResNet18(ch, c.width, _cifar_stem(c, s), c.last_relu),  # BiC (bic.md 2)
    "lasem_cnn": lambda c, ch, s: LasemCNN(lasem_spec(c.variant, ch, s, c.width)),  # LASEM family (lasem.md 2)
}


def build_backbone(cfg: BackboneConfig, in_channels: int, image_size: int) -> nn.Module:
    """A fresh backbone (seeded by the caller's RNG state), with local weights loaded if given."""
    if cfg.name not in BUILDERS:
        from difflib import get_close_matches

        close = get_close_matches(str(cfg.name), BUILDERS, n=3)
        raise ConfigError(f"unknown backbone {cfg.name!r}; " + (f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(BUILDERS)}"))
    if cfg.width <= 0:
        raise ConfigError(f"backbone.width must be positive, got {cfg.width}")
    if cfg.shortcut not in ("A", "B"):
        raise ConfigError(f"backbone.shortcut {cfg.shortcut!r} is not one of A, B")
    if cfg.shortcut == "A" and cfg.name != "resnet32":
        raise ConfigError(f"backbone.shortcut=A is an option of resnet32 only, not {cfg.name}")
    net = BUILDERS[cfg.name](cfg, in_channels, image_size)
    if cfg.weights:
        load_weights(net, Path(cfg.weights))
        net.pretrained_from = str(cfg.weights)  # methods that treat published weights specially (Piggyback)
    return net


def load_weights(net: nn.Module, path: Path) -> None:
    """Load a published state dict (e.g. torchvision's) from a local file; head (``fc.*``) keys are ignored."""
    if not path.is_file():
        raise ConfigError(f"backbone weights {path} not found; pass a local state-dict file with --set backbone.weights=PATH")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read backbone weights {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise CheckpointError(f"backbone weights {path} do not match the {type(net).__name__} backbone ({detail})")
    net.load_state_dict(state)
