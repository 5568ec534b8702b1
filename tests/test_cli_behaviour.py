"""What a user expects from the command: resume with the same command line, named summary figures,
mistakes caught before anything trains, a clean pipe, a useful interrupt message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_image_folder
from lifelong.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "1", "--tasks", "5", "--quiet"]


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_the_same_command_plus_resume_continues(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    argv = RUN + ["--out", str(out), "--set", "lr=0.02"]
    ckpts = out / "checkpoints"
    assert main(argv) == 0
    full = json.loads((out / "metrics.json").read_text())["accuracy"]
    for f in sorted(ckpts.iterdir())[2:]:  # as if it had died after task 2
        f.unlink()
    assert main(argv + ["--resume"]) == 0  # the very same command line
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == full
    capsys.readouterr()
    err = _error(capsys, RUN + ["--out", str(out), "--set", "lr=0.05", "--resume"])
    assert "hparams.lr" in err and "0.05" in err and "0.02" in err
    err = _error(capsys, ["run", "--method", "joint", "--benchmark", "digits", "--out", str(out), "--resume"])
    assert "method" in err and "'joint'" in err and "'finetune'" in err
    err = _error(capsys, ["run", "--epochs", "3", "--out", str(out), "--resume"])  # a partial command line
    assert "epochs" in err and "3" in err and "1" in err
    assert main(["run", "--device", "cpu", "--out", str(out), "--resume", "--quiet"]) == 0  # may change


def test_class_summary_leads_with_final_and_incremental_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    assert main(["run", "--method", "icarl", "--benchmark", "digits", "--setting", "class", "--epochs", "1",
                 "--memory", "40", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["final_accuracy"] == m["seen_accuracy"][-1]
    summary = printed.strip().splitlines()[-2]
    assert summary.startswith(f"final accuracy {m['final_accuracy'] * 100:.2f}%; average incremental accuracy")
    assert "mean of last row" in summary and "network (CNN) head: final" in summary
    assert "all seen classes" in printed  # per-task lines say what their figures are


def test_memory_on_a_method_without_exemplars_names_those_with(capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--memory", "20"])
    assert "icarl" in err and "lucir" in err and "bic" in err


def test_impossible_memory_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    err = _error(capsys, ["run", "--method", "icarl", "--benchmark", "digits", "--setting", "class", "--memory", "3",
                          "--out", str(out)])
    assert "memory 3" in err and "10 classes" in err
    assert not out.exists()  # nothing trained, nothing written


def test_base_alone_uses_the_presets_step_and_never_names_an_unpassed_flag(capsys: pytest.CaptureFixture) -> None:
    from lifelong.data.benchmarks import BenchmarkConfig, build_scenario

    scen = build_scenario("digits", "class", BenchmarkConfig(base=8), None)
    assert [t.num_classes for t in scen.tasks] == [8, 2]
    err = _error(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--setting", "class", "--base", "7",
                          "--increment", "2"])
    assert "--increment 2" in err
    from lifelong.data.scenario import class_groups
    from lifelong.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        class_groups(list(range(10)), "class", None, 7, None)
    assert "--increment 7" not in str(exc.value) and "pass --increment" in str(exc.value)


def test_an_empty_class_folder_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "imgs", ["cat", "dog"], 4)
    (root / "empty").mkdir()
    err = _error(capsys, ["run", "--method", "finetune", "--benchmark", "folder", "--data-root", str(root),
                          "--tasks", "1", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert str(root / "empty") in err


def test_list_into_a_closed_pipe_prints_no_traceback() -> None:
    proc = subprocess.run(f"{sys.executable} -m lifelong list | head -n 1", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "methods:" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_interrupt_names_the_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.methods.finetune import Finetune

    calls = {"n": 0}
    original = Finetune.fit_task

    def fit_then_interrupt(self, task, ctx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, task, ctx)

    monkeypatch.setattr(Finetune, "fit_task", fit_then_interrupt)
    out = tmp_path / "r"
    assert main(RUN + ["--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"--resume --out {out}" in err and "1 finished task" in err


def test_a_methods_decisions_follow_its_task_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.methods.finetune import Finetune

    monkeypatch.setattr(Finetune, "task_summary", lambda self, info: "decided something")
    assert main(RUN[:-1] + ["--out", str(tmp_path / "r")]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("task ")]
    assert len(lines) == 5 and all(l.endswith("; decided something") for l in lines)


def test_threads_flag_is_validated(capsys: pytest.CaptureFixture) -> None:
    assert "--threads 0" in _error(capsys, RUN + ["--threads", "0"])
