"""Every registered method, in each setting it supports, run in one process and under torchrun with
two gloo processes on the CPU: does the 2-process run finish (its ranks agree on the state after
every task, or the runner stops it), and how far is its accuracy matrix from the 1-process one,
beside how far the same 1-process run moves with 2 torch threads instead of 1 (reduction order
alone: on chaotic methods a few images flip either way)?

A tiny stream (digits, or permuted digits with LASEM's network for the methods of the LASEM table),
a few epochs, so the whole sweep fits a CPU. The distance is the largest per-cell
difference of the accuracy matrices in points; reduction order alone moves a few test images on
chaotic methods (docs/scaling.md). Nothing here asserts anything.

    python bench/ddp_equivalence.py [--methods finetune icarl ...] [--out runs/ddp-equivalence]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import lifelong_cmd, machine  # noqa: E402

from lifelong.methods.registry import METHODS, method_class  # noqa: E402

PERMUTED = ("stl", "snn", "hps", "tf", "dfcnn", "lasem", "bruteforce", "apd", "ccgn", "den", "darts")


def stream_args(method: str, setting: str, lasem_epochs: int = 5) -> list[str]:
    """LASEM's family on its own stream and network, 5 epochs (its lr schedule runs over epochs: after one
    it is still at chance); the others on digits, one epoch."""
    if method.split("-")[0] in PERMUTED or method.startswith("lasemg"):
        return ["--benchmark", "permuted-digits", "--tasks", "3", "--backbone", "lasem_cnn", "--setting", setting,
                "--epochs", str(lasem_epochs)]
    return ["--benchmark", "digits", "--tasks", "5", "--setting", setting, "--epochs", "1"]


def run(method: str, setting: str, nproc: int, out: Path, threads: int = 1, lasem_epochs: int = 5
        ) -> tuple[dict | None, str, float]:
    args = ["run", "--method", method, *stream_args(method, setting, lasem_epochs), "--device", "cpu", "--quiet",
            "--out", str(out),
            "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run(lifelong_cmd(args, nproc), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        err = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.startswith("error:")]
        return None, (err[0] if err else f"exit {p.returncode}")[:160], seconds
    return json.loads((out / "metrics.json").read_text()), "", seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", default="runs/ddp-equivalence")
    ap.add_argument("--lasem-epochs", type=int, default=5, help="epochs per task for the LASEM table's methods")
    a = ap.parse_args()
    print(f"# {machine()}")
    print("| method | setting | 1 process: seen/mean accuracy % | 2 processes | largest cell difference, 2 processes (pp) "
          "| 1 process with 2 threads: largest cell difference (pp) | 2-process run |")
    print("|---|---|---|---|---|---|---|")
    for m in a.methods:
        for setting in method_class(m).settings:
            base = Path(a.out) / f"{m}-{setting}"
            one, err1, _ = run(m, setting, 1, base / "p1", lasem_epochs=a.lasem_epochs)
            two, err2, _ = run(m, setting, 2, base / "p2", lasem_epochs=a.lasem_epochs)
            threads, _, _ = run(m, setting, 1, base / "t2", threads=2, lasem_epochs=a.lasem_epochs)  # reduction order
            key = "seen_accuracy" if setting == "class" else None
            fig = lambda r: "-" if r is None else f"{100 * (r[key][-1] if key else r['average_accuracy']):.1f}"
            status = "finished, ranks agreed" if two else (err2 or "failed")
            if one is None:
                status = f"1 process failed: {err1}"
            print(f"| {m} | {setting} | {fig(one)} | {fig(two)} | {apart(one, two)} | {apart(one, threads)} | {status} |",
                  flush=True)


def apart(a: dict | None, b: dict | None) -> str:
    """Largest per-cell difference of two runs' accuracy matrices, in points."""
    if a is None or b is None:
        return "-"
    return f"{100 * max(abs((x or 0) - (y or 0)) for ra, rb in zip(a['accuracy'], b['accuracy']) for x, y in zip(ra, rb)):.1f}"


if __name__ == "__main__":
    main()
