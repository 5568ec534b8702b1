"""Distillation and margin losses of the class-incremental methods, each checked by hand in the tests.

| function | used by | spec |
|---|---|---|
| ``sigmoid_distillation`` | iCaRL (original) | Rebuffi et al. 2017, manets.md 4 (last bullet) |
| ``kl_distillation`` | iCaRL (AANets code) | manets.md 4 |
| ``soft_cross_entropy`` | BiC stage 1 | bic.md 3 |
| ``less_forget`` | LUCIR | manets.md 5, L_LF |
| ``margin_ranking`` | LUCIR | manets.md 5, L_MR |
| ``adaptive_lambda`` | LUCIR's weight of L_LF (AANets) | manets.md 5 |
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def sigmoid_distillation(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                         num_outputs: int | None = None) -> torch.Tensor:
    """iCaRL's loss: binary cross-entropy of every seen-class output against one-hot labels, where the
    old classes' targets are the old network's sigmoid outputs instead (classification and
    distillation in one term).

    ``logits``: (B, n_seen); ``teacher_logits``: (B, n_old) or None at the first step.
    ``num_outputs``: the size of the original's output layer (every class of the stream, 100 on
    CIFAR). The Theano code takes ``binary_crossentropy(...).mean()`` over batch x 100 outputs, unseen
    classes with target 0, so the sum over the seen outputs is divided by ``B * num_outputs``, not by
    ``B * n_seen``: with the seen-class mean, step 0 of B0-10 would get 10x the gradient (lr 2.0 acting
    as 20) and weight decay would be 10-20x weaker relative to the loss. The unseen outputs'
    own terms (pushing never-trained rows toward 0) are left out: the head here grows with the classes.
    """
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if teacher_logits is not None and teacher_logits.shape[1]:
        n_old = teacher_logits.shape[1]
        targets = torch.cat([torch.sigmoid(teacher_logits.detach()).to(logits.dtype), targets[:, n_old:]], dim=1)
    total = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    return total / (logits.shape[0] * max(num_outputs or logits.shape[1], logits.shape[1]))


def kl_distillation(student_old: torch.Tensor, teacher_old: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * (1/B) sum_i KL(softmax(t_i/T) || softmax(s_i/T))`` (Hinton; the AANets/LUCIR iCaRL,
    manets.md 4: ``KLDivLoss()`` x n_old is ``batchmean``)."""
    log_p = F.log_softmax(student_old / T, dim=1)
    q = F.softmax(teacher_old.detach() / T, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (T * T)


def soft_cross_entropy(student_old: torch.Tensor, teacher_old: torch.Tensor, T: float) -> torch.Tensor:
    """``mean_b( - sum_k softmax(t/T)_k log softmax(s/T)_k )``, no ``T^2`` (BiC code, bic.md 3 and
    pitfall 2); the softmax runs over classes (pitfall 3: avalanche's ran over the batch)."""
    q = F.softmax(teacher_old.detach() / T, dim=1)
    return -(q * F.log_softmax(student_old / T, dim=1)).sum(1).mean()


def less_forget(features: torch.Tensor, ref_features: torch.Tensor) -> torch.Tensor:
    """LUCIR's feature distillation ``mean_b (1 - cos(f(x), f_ref(x)))`` (``CosineEmbeddingLoss``
    with target 1), reference detached."""
    return (1.0 - F.cosine_similarity(features, ref_features.detach(), dim=1)).mean()


def margin_ranking(cosines: torch.Tensor, labels: torch.Tensor, n_old: int, k: int, margin: float,
                   mean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """LUCIR's inter-class separation: for every sample of an OLD class, its ground-truth unscaled
    cosine ``c_y`` against the top-``k`` unscaled cosines of the NEW classes (columns ``n_old:``);
    ``mean over (sample, k) of max(0, margin - c_y + c_k)``; zero when the batch has no old sample.

    ``mean(total, count)``: the average over the whole batch when a rank holds a shard of it
    (``ctx.shard_mean``: the count of old samples differs between shards); default ``total / count``."""
    n_new = cosines.shape[1] - n_old
    if n_old == 0 or n_new <= 0:
        return cosines.sum() * 0.0
    old = labels < n_old
    k = min(k, n_new)
    gt = cosines[old].gather(1, labels[old][:, None])  # (b, 1)
    hard = cosines[old, n_old:].topk(k, dim=1).values  # (b, k); (0, k) when the batch has no old sample
    total = F.relu(margin - gt + hard).sum()
    count = old.sum() * k
    return mean(total, count) if mean is not None else total / count.clamp(min=1)


def adaptive_lambda(lambda_base: float, n_old: int, n_new: int) -> float:
    """LUCIR's adaptive less-forget weight ``lambda_base * sqrt(n_old / n_new)`` (the code's ratio;
    the paper prints it inverted, hshustc #4; manets.md 5); 0 before there are old classes."""
    return lambda_base * math.sqrt(n_old / n_new) if n_old else 0.0
