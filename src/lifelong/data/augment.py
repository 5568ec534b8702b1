"""Batched augmentation on the training device.

A per-sample PIL pipeline in DataLoader workers is the usual bottleneck for small
images; here one batch of uint8 images is cropped, flipped and normalised with a
handful of tensor ops (``bench/data_pipeline.py`` measures the difference).
Random numbers come from an explicit CPU ``torch.Generator`` so that runs are
reproducible on any device and resumable from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """What a scenario's images need: train-time augmentation and normalisation.

    ``size`` is the network's input size; stored images larger than it are
    centre-cropped at test time (e.g. stored 256, fed 224, as ImageNet protocols).
    """

    size: int
    crop_padding: int = 0  # RandomCrop(size, padding) as CIFAR protocols
    flip: bool = False
    random_resized_crop: bool = False  # for large images: scale (0.08, 1), ratio (3/4, 4/3)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


Part = tuple[int, int, int]  # (rows in the whole batch, start, stop): a rank's shard of it


def _draw(x: torch.Tensor, part: Part | None) -> tuple[int, slice]:
    """How many images to draw random numbers for, and which of them are ``x``'s: a rank draws for
    the whole batch and keeps its shard's, so a sharded batch is augmented as in one process."""
    if part is None:
        return x.shape[0], slice(None)
    return part[0], slice(part[1], part[2])


def random_crop(x: torch.Tensor, size: int, padding: int, gen: torch.Generator, part: Part | None = None) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding, an independent offset per image.

    One ``gather`` over flattened pixels (works on uint8, so the crop moves 1 byte per
    pixel instead of 4), instead of a Python loop over images.
    """
    n, c, h, w = x.shape
    total, rows = _draw(x, part)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    ph, pw = padded.shape[-2:]
    dy = torch.randint(0, ph - size + 1, (total,), generator=gen)[rows].to(x.device)
    dx = torch.randint(0, pw - size + 1, (total,), generator=gen)[rows].to(x.device)
    ar = torch.arange(size, device=x.device)
    flat = ((dy[:, None] + ar)[:, :, None] * pw + (dx[:, None] + ar)[:, None, :]).reshape(n, 1, size * size)
    return padded.reshape(n, c, ph * pw).gather(2, flat.expand(n, c, size * size)).reshape(n, c, size, size)


def random_flip(x: torch.Tensor, gen: torch.Generator, part: Part | None = None) -> torch.Tensor:
    total, rows = _draw(x, part)
    flip = (torch.rand(total, generator=gen)[rows] < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def random_resized_crop(x: torch.Tensor, size: int, gen: torch.Generator, flip: bool,
                        part: Part | None = None) -> torch.Tensor:
    """RandomResizedCrop(size) (and optional flip) as one batched affine resample."""
    n = x.shape[0]
    total, rows = _draw(x, part)
    area = torch.empty(total).uniform_(0.08, 1.0, generator=gen)
    log_ratio = torch.empty(total).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = torch.exp(log_ratio)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(total, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(total, generator=gen) * 2 - 1) * (1 - sh)
    sign = torch.ones(total)
    if flip:
        sign = torch.where(torch.rand(total, generator=gen) < 0.5, -1.0, 1.0)
    sw, sh, cx, cy, sign = sw[rows], sh[rows], cx[rows], cy[rows], sign[rows]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def train_batch(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator, mean=None, std=None,
                part: Part | None = None) -> torch.Tensor:
    """uint8 (N,C,H,W) on the device -> augmented, normalised float32.

    Crop and flip run on uint8; the conversion to float and the normalisation are one
    fused multiply-add at the end. ``part``: ``x`` is rows ``start:stop`` of a batch of ``total``
    (a rank's shard), augmented exactly as those rows of the whole batch would be.
    """
    if spec.random_resized_crop:
        x = random_resized_crop(x.float().div_(255.0), spec.size, gen, spec.flip, part)
        return _normalise(x, mean or spec.mean, std or spec.std)
    if spec.crop_padding or x.shape[-1] != spec.size or x.shape[-2] != spec.size:
        x = random_crop(x, spec.size, spec.crop_padding, gen, part)
    if spec.flip:
        x = random_flip(x, gen, part)
    return _to_float_normalised(x, mean or spec.mean, std or spec.std)


def _to_float_normalised(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x / 255 - mean) / std as a single x * a + b."""
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(-m / s, x.float(), 1.0 / (255.0 * s))


def eval_batch(x: torch.Tensor, spec: AugmentSpec, mean=None, std=None) -> torch.Tensor:
    """uint8 (N,C,H,W) -> centre-cropped, normalised float32."""
    return _to_float_normalised(_center_crop(x, spec.size), mean or spec.mean, std or spec.std)
