"""How thread count and OpenMP's wait policy decide a small run's time on a busy machine.

The demo job (finetune, class-incremental digits) runs as a subprocess with torch's thread count
1 or one per core, and OpenMP's wait policy as libgomp's default (threads spin before sleeping)
or PASSIVE (what ``lifelong`` sets), first on the machine as it is, then beside ``--hogs`` busy
processes that take the cores away (a shared machine). Printed as seconds and as ratios to the
first cell of the same load; nothing here asserts anything.

    python bench/threads.py [--hogs 2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time


def _spin() -> None:
    while True:
        pass


def timed_run(threads: int, policy: str | None, epochs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # "" keeps libgomp's default (spin a while, then sleep): set but empty, lifelong's setdefault leaves it
    env["OMP_WAIT_POLICY"] = policy or ""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "lifelong", "run", "--method", "finetune", "--benchmark", "digits", "--setting",
               "class", "--epochs", str(epochs), "--quiet", "--threads", str(threads), "--out", f"{out}/r"]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    cells = [(1, "PASSIVE"), (cores, "PASSIVE"), (1, None), (cores, None)]
    print(f"machine: {cores} cores; job: finetune on class-incremental digits, {a.epochs} epochs per task")
    for load in ("quiet", f"{a.hogs} busy processes"):
        hogs = [mp.Process(target=_spin, daemon=True) for _ in range(a.hogs if load != "quiet" else 0)]
        for h in hogs:
            h.start()
        try:
            times = {c: timed_run(c[0], c[1], a.epochs) for c in cells}
        finally:
            for h in hogs:
                h.terminate()
        base = times[cells[0]]
        row = "  ".join(f"{t} thr {'passive' if p else 'spin'}: {s:6.1f}s ({s / base:.2f})" for (t, p), s in times.items())
        print(f"{load:>18}: {row}")


if __name__ == "__main__":
    main()
