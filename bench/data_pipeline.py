"""Our batched augmentation against a per-sample pipeline, and against the model's training speed.

Per-sample baseline: what torchvision-style code does, PIL transforms per image
(RandomCrop(32, padding=4), RandomHorizontalFlip, to-tensor, Normalize) in a
``DataLoader`` with worker processes. Ours: ``augment.train_batch`` on uint8 batches.
Both produce normalised float batches of the same shape; the model's samples/s
(ResNet-32 forward+backward) says whether the pipeline can keep up.

    python bench/data_pipeline.py [--n 8192] [--workers 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageOps

from common import CIFAR_SPEC, best_of, cifar_like, machine
from lifelong.data import augment
from lifelong.nn.backbones import BackboneConfig, build_backbone


class PerSample(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
        self.images = images  # (N, H, W, C) uint8 as PIL expects
        self.labels = labels
        self.mean = np.array(CIFAR_SPEC.mean, dtype=np.float32)[:, None, None]
        self.std = np.array(CIFAR_SPEC.std, dtype=np.float32)[:, None, None]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = ImageOps.expand(Image.fromarray(self.images[i]), border=4, fill=0)
        x, y = self.rng.integers(0, 9, size=2)
        img = img.crop((x, y, x + 32, y + 32))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((arr - self.mean) / self.std), int(self.labels[i])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    data = cifar_like(a.n)
    hwc = data.images.permute(0, 2, 3, 1).contiguous().numpy()

    def per_sample() -> int:
        loader = torch.utils.data.DataLoader(PerSample(hwc, data.labels.numpy()), batch_size=a.batch, shuffle=True,
                                             num_workers=a.workers, persistent_workers=False)
        n = 0
        for x, _ in loader:
            n += len(x)
        return n

    def batched() -> int:
        gen = torch.Generator().manual_seed(0)
        n = 0
        for idx in torch.randperm(a.n, generator=gen).split(a.batch):
            x = augment.train_batch(data.images[idx], CIFAR_SPEC, gen)
            n += len(x)
        return n

    net = build_backbone(BackboneConfig("resnet32"), 3, 32)
    head = torch.nn.Linear(net.out_dim, 10)
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch,))

    def model() -> int:
        for _ in range(4):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(net(x)), y).backward()
            opt.step()
        return 4 * a.batch

    ps, bt, md = best_of(per_sample, 2), best_of(batched), best_of(model, 2)
    print(f"machine: {machine()}")
    print(f"{a.n} images 32x32, batch {a.batch}; per-sample pipeline with {a.workers} DataLoader workers")
    print(f"per-sample PIL pipeline : {ps:10.0f} images/s")
    print(f"batched (lifelong)      : {bt:10.0f} images/s")
    print(f"ResNet-32 training      : {md:10.0f} images/s")
    print(f"ratio batched/per-sample: {bt / ps:.1f}x")
    print(f"pipeline headroom over the model: per-sample {ps / md:.1f}x, batched {bt / md:.1f}x")


if __name__ == "__main__":
    main()
