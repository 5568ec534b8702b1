"""Every user mistake: one line ``error: ...`` on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_cifar100
from lifelong.cli import main


def _fails(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_unknown_names(capsys: pytest.CaptureFixture) -> None:
    _fails(capsys, ["run", "--method", "finetun", "--benchmark", "digits"], "finetun", "did you mean finetune")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digit"], "did you mean digits")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--set", "learning_rate=0.1"], "learning_rate")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--backbone", "resnet7", "--epochs", "1"], "resnet7")
    _fails(capsys, ["frobnicate"], "invalid choice")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--precision", "8"], "precision")


def test_bad_values(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "-3"], "--epochs -3")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--set", "lr=abc"], "lr='abc'")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "two"], "two")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--tasks", "3"], "--tasks 3")
    _fails(capsys, ["run", "--method", "independent", "--benchmark", "digits", "--setting", "class"], "setting")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--device", "tpu"], "--device")
    _fails(capsys, ["run", "--config", str(tmp_path / "nope.yaml")], "nope.yaml")


def test_missing_and_malformed_data(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")],
           str(tmp_path / "cifar-100-python" / "train"), "cifar-100-python.tar.gz")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "cifar100"], "--data-root")
    root = write_cifar100(tmp_path / "d")
    (root / "cifar-100-python" / "meta").write_bytes(b"\x00\x01 definitely not a pickle")
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "cifar100", "--data-root", str(root), "--out", str(tmp_path / "r2")], "meta")


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_booby_trapped_cifar_pickle(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "d")
    marker = tmp_path / "created-by-pickle"
    (root / "cifar-100-python" / "train").write_bytes(pickle.dumps({b"data": _Payload(str(marker))}, protocol=2))
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "cifar100-superclass20", "--data-root", str(root),
                    "--out", str(tmp_path / "r")], "refused to load", "posix.system")
    assert not marker.exists()


def test_not_a_run_folder_and_damaged_checkpoint(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    _fails(capsys, ["show", str(tmp_path)], "not a lifelong run folder")
    _fails(capsys, ["eval", str(tmp_path)], "not a lifelong run folder")
    run = tmp_path / "run"
    assert main(["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "1", "--tasks", "2", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--out", str(run), "--quiet"], "already holds a run", "--resume")
    metrics_before = (run / "metrics.json").read_bytes()
    ckpt = run / "checkpoints" / "task-02.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    _fails(capsys, ["eval", str(run)], "task-02.pt", "damaged")
    _fails(capsys, ["run", "--resume", "--out", str(run)], "task-02.pt", "damaged")
    assert (run / "metrics.json").read_bytes() == metrics_before  # nothing already written is lost
    (run / "checkpoints" / "task-02.pt").write_bytes(b"PK\x03\x04 not torch")
    _fails(capsys, ["eval", str(run)], "task-02.pt")
    # a flag that differs from the saved configuration is refused, naming the key and both values
    _fails(capsys, ["run", "--resume", "--out", str(run), "--epochs", "5", "--set", "lr=0.1"], "epochs is 5", "but 1")
    shutil.rmtree(run / "checkpoints")
    _fails(capsys, ["run", "--resume", "--out", str(run)], "no checkpoint")


def test_debug_shows_traceback(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(Exception):
        main(["run", "--method", "nope", "--benchmark", "digits", "--debug"])


def test_installed_command_exit_status(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("lifelong")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lifelong"]
    p = subprocess.run(cmd + ["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "-3"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
