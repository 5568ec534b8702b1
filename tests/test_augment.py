"""Batched augmentation: exact crops and flips, reproducible from the generator."""

from __future__ import annotations

import torch

from lifelong.data.augment import AugmentSpec, random_crop, random_flip, random_resized_crop, eval_batch, train_batch


def _images(n: int = 6, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)


def test_random_crop_is_a_shifted_window_of_the_padded_image() -> None:
    x = _images()
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 8, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    g = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (6,), generator=g)
    dx = torch.randint(0, 5, (6,), generator=g)
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])


def test_flip_flips_about_half_and_only_horizontally() -> None:
    x = _images(200)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(200)]
    kept = [torch.equal(out[i], x[i]) for i in range(200)]
    assert all(a or b for a, b in zip(flipped, kept)) and 70 < sum(flipped) < 130


def test_train_batch_is_reproducible_and_normalised() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    spec = AugmentSpec(size=32, crop_padding=4, flip=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a = train_batch(x, spec, torch.Generator().manual_seed(5))
    b = train_batch(x, spec, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (16, 3, 32, 32)
    t = eval_batch(x, spec)
    assert torch.allclose(t, (x.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_test_batch_centre_crops_large_images() -> None:
    x = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    spec = AugmentSpec(size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert torch.allclose(eval_batch(x, spec), x[:, :, 1:9, 1:9].float() / 255, atol=1e-6)


def test_random_resized_crop_shape_and_range() -> None:
    x = torch.rand(4, 3, 40, 40)
    out = random_resized_crop(x, 32, torch.Generator().manual_seed(0), flip=True)
    assert out.shape == (4, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
