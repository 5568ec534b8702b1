"""``lifelong export RUN_DIR --task NAME --format torchscript|onnx|state_dict``: a standalone model.

What is exported:

- isolation methods (PackNet, Piggyback, PAE, CPG; ``independent``): the task's subnetwork as a plain
  registry backbone at the task's own width with its effective weights (owner masks and picking
  masks applied, so they are plain weights), its own BatchNorm/bias state, and its head;
- CLR: the immutable network with the task's CLR kernels folded into its convs
  (``Reprogrammed.export``: exact, border included) and the task's BatchNorms, plus its head;
- class-incremental methods: the whole model over all classes seen (LUCIR's cosine classifier,
  iCaRL's nearest-mean classifier as a cosine layer over the class means, BiC's last bias
  correction folded into its classes' rows);
- any other method (progressive nets, LASEM, ...): ``method.predict(x, task)`` traced, frozen to
  the tensors it uses (TorchScript, ONNX), or refused for ``state_dict``.

Every export is checked before it is kept: the written file is loaded back (TorchScript,
``state_dict``; ONNX with ``onnxruntime`` where it is installed) and its outputs on a seeded batch
must equal ``method.predict`` within ``TOLERANCE``, else nothing is written. A JSON file beside the
model (its file name plus ``.json``) holds the class names, the preprocessing (``serve.predict``'s, to be
applied before the model) and, for ``state_dict``, how to rebuild the module (``load_export``).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.checkpoint import atomic_write_bytes, atomic_write_text
from ..errors import CheckpointError, ConfigError
from ..methods.base import Method
from ..nn.backbones import BackboneConfig, build_backbone
from ..nn.cosine import CosineIncrementalHead
from ..nn.heads import IncrementalHead, MultiHead
from .predict import Predictor

FORMATS = ("torchscript", "onnx", "state_dict")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "state_dict": ".pth"}
# max |exported - library| over a check batch of logits: 1e-5, relative to the largest logit when that is > 1
# (ONNX Runtime's kernels sum in another order than PyTorch's; a logit of 40 carries ~4e-6 of float32 rounding)
TOLERANCE = 1e-5


class CosineLinear(nn.Module):
    """``sigma * <normalise(f), normalise(w_c)>``: LUCIR's classifier rows (and iCaRL's class means, sigma 1)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.sigma = nn.Parameter(torch.ones(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.sigma * (F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).t())


class ExportedNet(nn.Module):
    """``head(backbone(x))``: what ``state_dict`` exports hold (``backbone.*``, ``head.*``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _Served(nn.Module):
    """``method.predict(x, task)`` as a module, for tracing (frozen afterwards to what it uses)."""

    def __init__(self, method: Method, task: int | None) -> None:
        super().__init__()
        self.method = method
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.predict(x, self.task)


# --------------------------------------------------------------------------- plain networks
def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


def _cosine(weight: torch.Tensor, sigma: torch.Tensor | float) -> CosineLinear:
    head = CosineLinear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.sigma.fill_(float(sigma))
    return head


def _head_spec(head: nn.Module) -> dict[str, Any]:
    if isinstance(head, CosineLinear):
        return {"kind": "cosine", "in_features": head.weight.shape[1], "out_features": head.weight.shape[0],
                "formula": "sigma * normalize(f) @ normalize(weight).T"}
    assert isinstance(head, nn.Linear)
    return {"kind": "linear", "in_features": head.in_features, "out_features": head.out_features}


def _class_head(method: Method) -> nn.Module | None:
    """The class-incremental classifier over every class seen, as one plain layer."""
    from ..methods.bic import BiC

    head = getattr(method, "head", None)
    if getattr(method.config, "classifier", None) == "nme" and hasattr(method, "means"):  # iCaRL's (or LUCIR's) NME
        return _cosine(method.means.means.detach(), 1.0)
    if isinstance(head, CosineIncrementalHead):
        return _cosine(torch.cat([c.weight.detach() for c in head.chunks]), head.sigma.detach())
    if isinstance(head, IncrementalHead):
        weight = torch.cat([c.weight.detach() for c in head.chunks]).clone()
        bias = torch.cat([c.bias.detach() for c in head.chunks]).clone()
        if isinstance(method, BiC) and len(method.tasks) > 1:  # alpha * (W f + b) + beta on the newest step's rows
            meta, layer = method.tasks[-1], method.bias_layers[len(method.tasks) - 1]
            rows = slice(meta.offset, meta.offset + meta.num_classes)
            weight[rows] *= layer.alpha.detach()
            bias[rows] = bias[rows] * layer.alpha.detach() + layer.beta.detach()
        return _linear(weight, bias)
    return None


def plain_network(method: Method, t: int | None, backbone_cfg: BackboneConfig, in_channels: int,
                  input_size: int) -> tuple[nn.Module | None, dict[str, Any] | None, str]:
    """(module, how to rebuild it or None, why not) for task ``t`` (None: the class-incremental model).
    ``None`` as module: only tracing ``predict`` can export this method."""
    from ..methods.clr import CLR
    from ..methods.independent import Independent
    from ..methods.pruning import IsolationMethod

    plain = dataclasses.replace(backbone_cfg, weights=None)
    if isinstance(method, IsolationMethod):
        assert t is not None
        mb = method.mb
        cfg = dataclasses.replace(plain, width=plain.width * mb.widths[t])
        tensors = mb._finished_tensors(t)  # effective weights: owner and picking masks applied
        net = build_backbone(cfg, in_channels, input_size)
        net.load_state_dict({k: v.detach().clone() for k, v in tensors.items()})
        return ExportedNet(net, copy.deepcopy(method.heads[t])), {"backbone": dataclasses.asdict(cfg)}, ""
    if isinstance(method, Independent):
        assert t is not None
        backbone, head = method.nets[t][0], method.nets[t][1]
        return ExportedNet(copy.deepcopy(backbone), copy.deepcopy(head)), {"backbone": dataclasses.asdict(plain)}, ""
    if isinstance(method, CLR):
        assert t is not None
        return (ExportedNet(method.rp.export(t), copy.deepcopy(method.head.heads[t])), None,
                "its convs hold the task's folded CLR kernels (larger than the backbone's), not a registry backbone")
    backbone, head = getattr(method, "backbone", None), getattr(method, "head", None)
    if isinstance(backbone, nn.Module) and t is None:
        cls_head = _class_head(method)
        if cls_head is not None:
            return ExportedNet(copy.deepcopy(backbone), cls_head), {"backbone": dataclasses.asdict(plain)}, ""
    if isinstance(backbone, nn.Module) and isinstance(head, MultiHead) and t is not None:
        return ExportedNet(copy.deepcopy(backbone), copy.deepcopy(head.heads[t])), {"backbone": dataclasses.asdict(plain)}, ""
    return None, None, "its served network is not one registry backbone plus a head"


# --------------------------------------------------------------------------- checks
def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| in units of the tolerance's scale (1, or the largest |b| when that is larger)."""
    if a.shape != b.shape:
        return float("inf")
    if not a.numel():
        return 0.0
    scale = max(1.0, float(b.float().abs().max()))
    return float((a.float() - b.float()).abs().max()) / scale


def _check(name: str, diff: float) -> None:
    if not diff <= TOLERANCE:
        raise ConfigError(f"the exported {name} model's outputs differ from lifelong's by {diff:.3g} (> {TOLERANCE:g}, "
                          "relative to logits above 1) on a check batch; nothing was written")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------- export
def export(run_dir: str | Path, task: str | None = None, fmt: str = "torchscript", out: str | Path | None = None,
           data_root: str | Path | None = None) -> tuple[Path, Path]:
    """Write task ``task``'s standalone model (the whole model in the class setting) and its JSON; returns both paths."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    pred = Predictor(run_dir, "cpu", data_root)
    method, cfg = pred.method, pred.config
    t = pred.task_index(task)
    out = Path(out) if out is not None else Path(run_dir) / "export" / f"{'model' if t is None else pred.task_names[t]}{SUFFIX[fmt]}"
    meta_path = meta_path_of(out)

    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (8, pred.channels, pred.side, pred.side), generator=gen, dtype=torch.uint8)
    x, x3 = pred._transform(raw, t), pred._transform(raw[:3].flip(0), t)
    with torch.no_grad():
        ref, ref3 = method.predict(x, t).float(), method.predict(x3, t).float()

    module, rebuild, why = plain_network(method, t, cfg.backbone, pred.scenario.in_channels, pred.scenario.augment.size)
    if module is not None:
        module.eval()
        with torch.no_grad():
            if _max_diff(module(x), ref) > TOLERANCE:  # a method whose predict is more than backbone + head
                module, rebuild, why = None, None, "its predictions are more than one backbone plus a head"
    if fmt == "state_dict" and rebuild is None:
        raise ConfigError(f"{cfg.method} cannot be exported as a state_dict: {why}; use --format torchscript or onnx")
    served = module if module is not None else _Served(method, t).eval()

    check: dict[str, Any] = {"tolerance": TOLERANCE, "relative_to": "max(1, max |logit|)",
                             "batch": "8 seeded random images, then 3 (another batch size)"}
    if fmt == "torchscript":
        data, diff = _torchscript(served, module is None, x, (x, ref), (x3, ref3))
        check["max_diff"] = diff
    elif fmt == "onnx":
        data, diff = _onnx(served, x, (x, ref), (x3, ref3))
        check["max_diff"], check["onnxruntime"] = diff, diff is not None
    else:
        assert module is not None and rebuild is not None
        head = module.head
        rebuild = {**rebuild, "in_channels": pred.scenario.in_channels, "input_size": pred.scenario.augment.size,
                   "head": _head_spec(head), "python": f"lifelong.serve.export.load_export({str(out)!r})"}
        buf = io.BytesIO()
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, buf)
        data = buf.getvalue()
        again = _rebuild(rebuild, torch.load(io.BytesIO(data), weights_only=True))
        with torch.no_grad():
            diff = max(_max_diff(again(x), ref), _max_diff(again(x3), ref3))
        _check("state_dict", diff)
        check["max_diff"] = diff

    meta = _metadata(pred, t, fmt, out, check, rebuild if fmt == "state_dict" else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda f: f.write(data))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return out, meta_path


def _torchscript(served: nn.Module, freeze: bool, x: torch.Tensor, *checks: tuple[torch.Tensor, torch.Tensor]) -> tuple[bytes, float]:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit's deprecation notice (TorchScript is the format asked for) and tracer warnings about
            # spatial sizes becoming constants (the export's input size is fixed; the batch size stays free)
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(served, x, check_trace=False)
            if freeze:  # keep only the tensors the task's predict reads (not every other task's)
                traced = torch.jit.freeze(traced, optimize_numerics=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            loaded = torch.jit.load(io.BytesIO(buf.getvalue()))
            diff = max(_max_diff(loaded(a), b) for a, b in checks)
    except Exception as exc:  # tracing refused (data-dependent control flow, unsupported ops)
        raise ConfigError(f"cannot export as torchscript: tracing failed ({_first_line(exc)})") from None
    _check("torchscript", diff)
    return buf.getvalue(), diff


def _onnx(served: nn.Module, x: torch.Tensor, *checks: tuple[torch.Tensor, torch.Tensor]) -> tuple[bytes, float | None]:
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices (no onnxscript needed)
            torch.onnx.export(served, (x,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"ONNX export needs {exc.name}: pip install 'lifelong[onnx]'") from None
    except Exception as exc:
        raise ConfigError(f"cannot export as onnx: {_first_line(exc)}") from None
    data = buf.getvalue()
    try:
        import onnxruntime as ort
    except ImportError:
        return data, None  # written unchecked; the JSON says so (check.onnxruntime false)
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        diff = max(_max_diff(torch.from_numpy(sess.run(None, {"input": a.numpy()})[0]), b) for a, b in checks)
    except Exception as exc:
        raise ConfigError(f"onnxruntime cannot run the exported model: {_first_line(exc)}") from None
    _check("onnx", diff)
    return data, diff


def _rebuild(rebuild: dict[str, Any], state: dict[str, torch.Tensor]) -> ExportedNet:
    net = build_backbone(BackboneConfig(**rebuild["backbone"]), int(rebuild["in_channels"]), int(rebuild["input_size"]))
    h = rebuild["head"]
    head: nn.Module = (CosineLinear(h["in_features"], h["out_features"]) if h["kind"] == "cosine"
                       else nn.Linear(h["in_features"], h["out_features"]))
    model = ExportedNet(net, head)
    model.load_state_dict(state)
    return model.eval()


def _metadata(pred: Predictor, t: int | None, fmt: str, out: Path, check: dict[str, Any],
              rebuild: dict[str, Any] | None) -> dict[str, Any]:
    from .. import __version__

    aug = pred.scenario.augment
    mean, std = pred.normalisation(t)
    gray = pred.channels == 1
    meta: dict[str, Any] = {
        "format": fmt, "file": out.name, "lifelong": __version__,
        "run": str(pred.run_dir), "method": pred.config.method, "benchmark": pred.config.benchmark,
        "setting": pred.setting, "task": None if t is None else pred.task_names[t],
        "classes": pred.class_names(t),  # output index -> class name
        "input": {"shape": ["batch", pred.channels, aug.size, aug.size], "dtype": "float32", "layout": "NCHW"},
        "preprocessing": {
            "decode": f"RGB; resize the shorter side to {pred.side} (bilinear), centre crop {pred.side}x{pred.side}",
            "channels": "grayscale: L = (19595 R + 38470 G + 7471 B + 32768) >> 16 (PIL 'L')" if gray else "RGB",
            "center_crop": aug.size, "scale": "x / 255", "mean": list(mean), "std": list(std),
            "python": f"lifelong.Predictor({str(pred.run_dir)!r}).inputs(images{'' if t is None else ', task=' + repr(pred.task_names[t])})"},
        "output": "logits over the classes above (softmax gives probabilities)",
        "check": check,
    }
    if rebuild is not None:
        meta["rebuild"] = rebuild
    return meta


def meta_path_of(model: Path) -> Path:
    """The JSON beside an exported model: its file name plus ``.json`` (``perm1.onnx.json``)."""
    return model.with_name(model.name + ".json")


def load_export(path: str | Path) -> nn.Module:
    """A TorchScript or ``state_dict`` export back as a module (its JSON must be beside it)."""
    path = Path(path)
    meta_path = meta_path_of(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} (the export's description) is missing or unreadable: {exc}") from None
    if meta.get("format") == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path)).eval()
    if meta.get("format") == "state_dict":
        return _rebuild(meta["rebuild"], torch.load(path, map_location="cpu", weights_only=True))
    raise ConfigError(f"{path} is a {meta.get('format')} export; load ONNX models with onnxruntime.InferenceSession")
