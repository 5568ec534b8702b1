"""Model size as the papers count it (cpg.md 6): exact byte counts, the CLI, and agreement with runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lifelong
from lifelong.cli import main
from lifelong.report.footprint import MB, architecture_counts, footprint_table

FINE_GRAINED = [1000, 200, 196, 102, 195, 250]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_resnet50_counts_match_the_paper_inputs() -> None:
    a = architecture_counts("resnet50")
    assert a.weights == 23_454_912 and a.bn_channels == 26_560 and a.private == 4 * 26_560 and a.out_dim == 2048


def test_vgg16_cifar_counts_and_grown_width() -> None:
    a = architecture_counts("vgg16_bn", image_size=32)
    assert a.weights == 33_584_832 and a.bn_channels == 4_224  # cpg.md 3
    assert architecture_counts("vgg16_bn", image_size=32, width=math.sqrt(1.5)).weights == 50_350_644


def test_fine_grained_resnet50_bytes_are_exact() -> None:
    rows = {r.method: r for r in footprint_table("resnet50", FINE_GRAINED)}
    assert rows["independent"].paper_bytes == 581_392_476  # 6(C + 4B)4 + 4H
    assert rows["finetune"].paper_bytes == 581_392_476  # the paper's Finetune: one network per task
    assert rows["packnet"].paper_bytes == 93_819_648 + 8_795_592 + 2_549_760 + 15_924_828
    assert rows["piggyback"].paper_bytes == 93_819_648 + 14_659_320 + 2_549_760 + 15_924_828
    assert rows["cpg"].paper_bytes == rows["piggyback"].paper_bytes  # the paper counts no owner index
    assert rows["cpg"].formula_bytes == rows["piggyback"].paper_bytes + 8_795_592  # cpg.md 6 general formula
    paper = {"independent": 554, "finetune": 554, "packnet": 115, "piggyback": 121, "cpg": 121}  # cpg.md 8
    assert {m: int(rows[m].paper_bytes / MB) for m in paper} == paper
    assert round(rows["cpg"].formula_bytes / MB, 1) == 129.5


def test_footprint_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["footprint", "--backbone", "resnet50", "--heads", ",".join(map(str, FINE_GRAINED))]) == 0
    out = capsys.readouterr().out
    for number in ("554.46", "115.48", "121.07", "129.46"):
        assert number in out
    ours = ["independent", "finetune", "packnet", "piggyback", "cpg"]  # other methods' rows (aanets, clr...) follow
    assert [w for w in (line.split()[0] for line in out.splitlines()[2:]) if w in ours] == ours


@pytest.mark.parametrize("argv,message", [
    (["--backbone", "resnet50", "--heads", "10,x"], "comma-separated"),
    (["--backbone", "resnet50", "--heads", "0"], "positive"),
    (["--backbone", "resnet51", "--heads", "10"], "unknown backbone"),
    (["--heads", "10"], "required"),
])
def test_footprint_command_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["footprint", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method,options", [("packnet", {}), ("piggyback", {}),
                                            ("cpg", {"goals": [0.0, 0.0], "prune_ratios": [0.5], "retrain_epochs": 1})])
def test_runs_store_what_the_calculator_says(tmp_path: Path, method: str, options: dict) -> None:
    r = lifelong.run(method=method, benchmark="permuted-digits", tasks=2, epochs=1, out=tmp_path / method, **options)
    row = {x.method: x for x in footprint_table("mlp", [10, 10], in_channels=1, image_size=8)}[method]
    assert r.footprint["bytes"] == row.formula_bytes
    state = torch.load(tmp_path / method / "checkpoints" / "task-02.pt", weights_only=True)["state"]
    assert sum(t.numel() * t.element_size() for t in state.values()) == row.checkpoint_bytes
    assert len(r.footprint["per_task_bytes"]) == 2 and all(b > 0 for b in r.footprint["per_task_bytes"])
    assert [t["info"]["served_equals_trained"] for t in r.metrics["tasks"]] == [True, True]
