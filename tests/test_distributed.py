"""torchrun with two gloo processes on the CPU: the same run as one process, one run folder, resumable.

The mechanisms (gradient sum over ranks with shard weights, BatchNorm over the global batch,
gathers in order, leaves only one rank reaches) are checked on a toy network against the
one-process computation to float precision (tests/ddp_worker.py); whole runs of finetune, iCaRL,
BiC, PackNet and CLR are compared with the 1-process run's accuracy matrix.

Tolerance of the whole-run comparison: each cell within 3 test images of the 1-process run.
A 2-process step sums two partial gradients where one process sums once, so the two runs differ by
float rounding (about 1e-7 relative, the toy checks below) and training amplifies that into the
occasional flipped prediction of a borderline test image; the 1-process run moves as much when it
uses 2 torch threads instead of 1 (docs/scaling.md). A real sharding error (a
missing gradient sum, a per-shard BatchNorm, an ungathered evaluation) moves far more, or stops
the run because the ranks' states differ.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lifelong.cli import main as cli
from lifelong.data.augment import AugmentSpec, train_batch
from lifelong.engine.distributed import World, state_fingerprints

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def torchrun(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]


def lifelong2(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    p = subprocess.run(torchrun(["-m", "lifelong", *args]), capture_output=True, text=True, env=ENV, timeout=timeout)
    assert p.returncode == 0, [ln for ln in p.stderr.splitlines() if "error" in ln.lower()][-5:]
    return p


# ---------------------------------------------------------------- shards, without processes
def test_parts_are_contiguous_disjoint_and_cover_every_row() -> None:
    for size in (1, 2, 3, 4):
        for n in range(0, 14):
            parts = [World(r, size).part(n) for r in range(size)]
            weights = [World(r, size).weight(n) for r in range(size)]
            if n >= size:
                assert [i for a, b in parts for i in range(a, b)] == list(range(n))
                assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
            else:  # smaller than the world: every rank computes all rows, each carrying 1/size
                assert parts == [(0, n)] * size
            assert sum(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("spec", [AugmentSpec(size=8, crop_padding=2, flip=True),
                                  AugmentSpec(size=8, random_resized_crop=True, flip=True)])
def test_a_shard_is_augmented_exactly_as_those_rows_of_the_whole_batch(spec: AugmentSpec) -> None:
    x = torch.randint(0, 256, (9, 3, 8, 8), dtype=torch.uint8)
    whole = train_batch(x, spec, torch.Generator().manual_seed(3))
    for size in (2, 3):
        parts = []
        for r in range(size):
            a, b = World(r, size).part(9)
            parts.append(train_batch(x[a:b], spec, torch.Generator().manual_seed(3), part=(9, a, b)))
        assert torch.equal(torch.cat(parts), whole)


def test_fingerprints_change_with_one_element_and_name_its_entry() -> None:
    state = {"w": torch.zeros(3), "memory": {"images": torch.zeros(2, dtype=torch.uint8)}, "n": 1}
    before = state_fingerprints(state)
    state["memory"]["images"][1] = 7
    after = state_fingerprints(state)
    assert [k for k in before if before[k] != after[k]] == ["memory"]


# ---------------------------------------------------------------- mechanisms, two gloo processes
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp") / "toy"
    p = subprocess.run(torchrun([str(Path(__file__).with_name("ddp_worker.py")), str(out)]), capture_output=True,
                       text=True, env=ENV, timeout=180)
    assert p.returncode == 0, [ln for ln in p.stderr.splitlines() if "Error" in ln or "error" in ln][-8:]
    return [torch.load(f"{out}.{r}", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("n", [10, 7, 1])
def test_summed_gradients_equal_the_whole_batch_gradient(toy: list[dict], n: int) -> None:
    """Even, uneven and smaller-than-the-world batches; a head only rank 1's shard reaches; a gradient
    left from an earlier step (counted once, not once per rank); a parameter nothing reaches."""
    for rank in toy:
        case = rank[f"n{n}"]
        for name, g in case["grads"].items():
            ref = case["ref_grads"][name]
            if ref is None:
                assert g is None, name
            else:
                torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6, msg=name)
    assert toy[0]["n10"]["grads"]["head_b.weight"].abs().sum() > 0  # reached on rank 1 only, summed to both


@pytest.mark.parametrize("n", [10, 7, 1])
def test_batchnorm_uses_the_global_batch_and_every_rank_keeps_the_same_statistics(toy: list[dict], n: int) -> None:
    for rank in toy:
        case = rank[f"n{n}"]
        for name, b in case["buffers"].items():
            torch.testing.assert_close(b, case["ref_buffers"][name], rtol=1e-5, atol=1e-6, msg=name)
    for name in toy[0][f"n{n}"]["buffers"]:
        assert torch.equal(toy[0][f"n{n}"]["buffers"][name], toy[1][f"n{n}"]["buffers"][name])


def test_gathered_rows_are_the_whole_set_in_order_on_every_rank(toy: list[dict]) -> None:
    for rank in toy:
        for n, rows in rank["gathered_order"].items():
            assert rows.tolist() == list(range(n))
        for n in (10, 7, 1):
            torch.testing.assert_close(rank[f"n{n}"]["gathered"], rank[f"n{n}"]["ref_outputs"], rtol=1e-5, atol=1e-5)
    assert toy[0]["disagreeing"] == toy[1]["disagreeing"] == ["own"]


def test_ranks_that_disagree_stop_the_run_before_the_task_is_checkpointed(tmp_path: Path) -> None:
    out = tmp_path / "diverged"
    p = subprocess.run(torchrun([str(Path(__file__).with_name("ddp_worker.py")), "diverge", str(out)]),
                       capture_output=True, text=True, env=ENV, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    for r in (0, 1):
        message = torch.load(f"{out}.{r}", weights_only=False)["message"]
        assert "disagree after task 1" in message and "(accuracy)" in message
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


# ---------------------------------------------------------------- whole runs
# Replay methods over 2 tasks: with more, herding turns a rounding difference in the features into a
# different exemplar set, and the runs part ways as much as a 1-process run with 2 threads does.
RUNS = {
    "finetune": ["--method", "finetune", "--setting", "class", "--tasks", "5"],
    "icarl": ["--method", "icarl", "--setting", "class", "--memory", "100", "--tasks", "2"],
    "bic": ["--method", "bic", "--setting", "class", "--tasks", "2"],
    "packnet": ["--method", "packnet", "--setting", "task", "--tasks", "5"],
    "clr": ["--method", "clr", "--setting", "task", "--tasks", "5"],
}
COMMON = ["--benchmark", "digits", "--epochs", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("ddp-runs")
    out = {}
    for name, args in RUNS.items():
        one, two = root / "one" / name, root / "two" / name
        assert cli(["run", *args, *COMMON, "--out", str(one), "--threads", "1"]) == 0
        lifelong2(["run", *args, *COMMON, "--out", str(two)])
        out[name] = (one, two)
    return out


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_give_the_one_process_accuracy_matrix(runs, name: str) -> None:
    one, two = (_metrics(f) for f in runs[name])
    tasks = len(one["accuracy"])
    test_images = 900 // tasks  # digits: about 900 test images over the tasks
    assert len(two["accuracy"]) == tasks == int(RUNS[name][RUNS[name].index("--tasks") + 1])
    for r1, r2 in zip(one["accuracy"], two["accuracy"]):
        for a, b in zip(r1, r2):
            assert (a is None) == (b is None)
            if a is not None:
                assert abs(a - b) * test_images <= 3.01, (name, one["accuracy"], two["accuracy"])


@pytest.mark.parametrize("name", list(RUNS))
def test_one_run_folder_written_by_rank_zero_records_the_world(runs, name: str) -> None:
    two = runs[name][1]
    tasks = int(RUNS[name][RUNS[name].index("--tasks") + 1])
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [f"task-{i:02d}.pt" for i in range(1, tasks + 1)]
    assert not [p for p in two.rglob(".*")]  # no temp file of a second writer
    metrics = _metrics(two)
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "world_size: 2" in (two / "config.yaml").read_text() and "backend: gloo" in (two / "config.yaml").read_text()
    assert _metrics(runs[name][0])["distributed"] == {"world_size": 1, "backend": None}


def test_the_run_folders_are_exactly_the_ones_asked_for(runs) -> None:
    """Two ranks naming their own folders (a second of clock apart) would leave a second one behind."""
    two_root = next(iter(runs.values()))[1].parent
    assert sorted(p.name for p in two_root.iterdir()) == sorted(RUNS)


def _rank_pid(launcher: int, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher and f"RANK={rank}".encode() in (d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's process")
def test_a_rank_killed_mid_run_then_resumed_under_torchrun_gives_the_uninterrupted_matrix(runs, tmp_path) -> None:
    out = tmp_path / "killed"
    args = ["run", *RUNS["finetune"], *COMMON[:-1], "--out", str(out)]
    launcher = subprocess.Popen(torchrun(["-m", "lifelong", *args, "--quiet"]), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "task-01.pt").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        pid = _rank_pid(launcher.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0  # torchrun stops the other rank and reports the failure
    finally:
        if launcher.poll() is None:
            launcher.kill()
    done = _metrics(out)["tasks_completed"]
    assert 1 <= done < 5, "the kill came too late to interrupt anything"
    lifelong2(["run", "--resume", "--out", str(out), "--device", "cpu", "--quiet"])
    resumed, uninterrupted = _metrics(out), _metrics(runs["finetune"][1])
    assert resumed["accuracy"] == uninterrupted["accuracy"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"task-{i:02d}.pt" for i in range(1, 6)]
