"""Several processes, one run: ``torchrun`` and ``torch.distributed`` (gloo on the CPU, NCCL on CUDA).

Every rank builds the same method from the same seed and executes the same code; what differs is
which rows of each global batch (and of each evaluated set) it computes. The rules that keep every
rank's state identical and equal to a one-process run (docs/scaling.md):

- a training batch is drawn whole, as one process draws it (``loop.batch_indices``), and split into
  contiguous shards; a batch smaller than the world is computed whole on every rank;
- each rank's mean loss is weighted by its share of the batch (``World.weight``), and the gradients
  of every leaf the backward touched are summed over ranks (``reduce_gradients``), so a step sees
  the gradient of the global batch's mean loss;
- sets passed through ``TrainContext.outputs`` (evaluation, features for herding and class means,
  validation accuracies) are sharded and gathered back in order, so every rank continues from
  the same numbers.

Why not ``DistributedDataParallel``: DDP's reducer needs every forward to go through the wrapper,
but methods call their networks' parts directly (features then a head, old and new branches),
grow them between phases and train tensors that are not module parameters (CPG's picking masks,
AANets' alphas). Summing the touched leaves' gradients after each backward is DDP's all-reduce
without those constraints, one flat collective per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (``size == 1``: a plain run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the only one that prints, writes the run folder and saves checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------ shards
    def part(self, n: int) -> tuple[int, int]:
        """This rank's contiguous ``[start, stop)`` of ``n`` rows (sizes differ by at most one);
        all of them when ``n < size``, so no rank ever holds an empty batch."""
        if not self.active or n < self.size:
            return 0, n
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def weight(self, n: int) -> float:
        """The factor on this rank's mean loss over its shard that makes the ranks' sum the mean over
        all ``n`` rows: its share of the rows (1/size when every rank holds all of them)."""
        if not self.active:
            return 1.0
        if n < self.size:
            return 1.0 / self.size
        start, stop = self.part(n)
        return (stop - start) / n

    # ------------------------------------------------------------ collectives
    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` over ranks in place: one flat all-reduce per dtype."""
        if not self.active or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows every rank computed for its ``part(n)``, concatenated in rank order: the whole set's
        rows, identical on every rank. (``n < size``: every rank computed all of them.)"""
        if not self.active or n < self.size:
            return local
        dtype = local.dtype
        x = local.to(torch.uint8) if dtype == torch.bool else local
        rows = max(self.part_size(r, n) for r in range(self.size))
        padded = x.new_zeros((rows, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        out = torch.cat([p[: self.part_size(r, n)] for r, p in enumerate(parts)])
        return out.to(dtype) if dtype == torch.bool else out

    def part_size(self, rank: int, n: int) -> int:
        start, stop = World(rank, self.size).part(n)
        return stop - start

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a run folder's name, RNG states)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def disagreeing(self, fingerprints: dict[str, str]) -> list[str]:
        """The keys whose fingerprint is not the same on every rank (none: the ranks agree)."""
        if not self.active:
            return []
        seen: list[Any] = [None] * self.size
        dist.all_gather_object(seen, fingerprints)
        keys = sorted(set().union(*seen))
        return [k for k in keys if len({s.get(k) for s in seen}) > 1]


def init_world(device_spec: str = "auto") -> World:
    """The world ``torchrun`` set up through its environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    rendezvous address), joining its process group once; a plain ``World()`` outside torchrun. The
    backend follows the device: NCCL for CUDA, gloo for the CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    if not dist.is_initialized():
        cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache entry), then the other ranks (which find it);
    a plain block outside a process group."""
    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if group and dist.get_rank() != 0:
        dist.barrier()
    yield
    if group and dist.get_rank() == 0:
        dist.barrier()


def shutdown_world() -> None:
    """Leave the process group cleanly once a job is done: wait for every rank, then destroy it (a rank
    that exits while another still reads from it makes gloo abort that one). Nothing in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launched_rank() -> int:
    """This process's rank as torchrun announced it (0 outside torchrun), readable before any set-up."""
    return int(os.environ.get("RANK", "0") or 0)


def grad_leaves(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Distinct tensors that require gradients, in first-seen order (the same order on every rank)."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if t.requires_grad and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def snapshot_grads(leaves: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Gradients already present before a backward (a phase that does not clear its gradients, a leaf
    outside the phase's optimisers): only what the backward adds is summed over ranks."""
    return [None if p.grad is None else p.grad.clone() for p in leaves]


def reduce_gradients(world: World, leaves: list[torch.Tensor], before: list[torch.Tensor | None]) -> None:
    """Sum over ranks what the last backward added to each leaf's ``.grad``.

    A leaf a rank's shard did not reach (a head no row of its shard uses) counts as zero there, and
    still gets the others' gradient; a leaf no rank reached keeps ``grad is None``, as in one process
    (an optimiser then skips it)."""
    if not world.active or not leaves:
        return
    touched = torch.tensor([p.grad is not None for p in leaves], dtype=torch.uint8)
    dist.all_reduce(touched, op=dist.ReduceOp.MAX)
    deltas, owners = [], []
    for p, b, hit in zip(leaves, before, touched.tolist()):
        if not hit:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        deltas.append(p.grad if b is None else p.grad.sub_(b))
        owners.append((p, b))
    world.sum_(deltas)
    for p, b in owners:
        if b is not None:
            p.grad.add_(b)


def state_fingerprints(state: dict[str, Any]) -> dict[str, str]:
    """A hash per top-level entry of a state dict (dtype, shape and bytes of every tensor in it, nested
    dicts and lists included), so ranks that disagree can name what differs."""

    def visit(h: Any, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                h.update(f"<{k}>".encode())
                visit(h, value[k])
        elif isinstance(value, (list, tuple)):
            for v in value:
                h.update(b"[")
                visit(h, v)
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}:{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())

    out = {}
    for key, value in state.items():
        h = hashlib.sha256()
        visit(h, value)
        out[str(key)] = h.hexdigest()
    return out
