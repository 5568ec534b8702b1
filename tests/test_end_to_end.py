"""Whole runs: the embedded digits job, the real-format readers end to end, resume and eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import lifelong
from conftest import write_image_folder
from lifelong.cli import main


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "joint"
    lifelong.run(method="joint", benchmark="digits", out=out)
    return out


def test_independent_and_joint_reach_95_percent_on_digits(joint_run: Path, tmp_path: Path) -> None:
    joint = json.loads((joint_run / "metrics.json").read_text())
    assert joint["average_accuracy"] >= 0.95
    ind = lifelong.run(method="independent", benchmark="digits", out=tmp_path / "ind")
    assert ind.average_accuracy >= 0.95
    assert ind.metrics["unforgetting_verified"] is True and all(f == 0 for f in ind.forgetting[:-1])


def test_finetune_class_setting_forgets(tmp_path: Path) -> None:
    r = lifelong.run(method="finetune", benchmark="digits", setting="class", out=tmp_path / "ft")
    assert r.average_forgetting > 0.5
    assert all(r.accuracy[i][i] > 0.8 for i in range(5))  # each step learns its own classes
    assert r.metrics["top5"] is not None and len(r.metrics["top5"]) == 5


def test_run_folder_layout(joint_run: Path) -> None:
    m = json.loads((joint_run / "metrics.json").read_text())
    for key in ("method", "benchmark", "setting", "seed", "tasks", "accuracy", "top5", "average_accuracy",
                "average_incremental_accuracy", "forgetting", "average_forgetting", "bwt", "footprint", "memory", "time_s"):
        assert key in m
    assert m["tasks"][0]["classes"] == ["0", "1"] and "info" in m["tasks"][0]
    R = m["accuracy"]
    assert len(R) == 5 and all(R[i][j] is None for i in range(5) for j in range(i + 1, 5))
    assert m["forgetting"][-1] is None and len(m["time_s"]) == 5
    assert set(m["footprint"]) >= {"parameters", "bytes", "per_task_bytes"}
    assert sorted(p.name for p in (joint_run / "checkpoints").iterdir()) == [f"task-0{i}.pt" for i in range(1, 6)]
    log = (joint_run / "log.csv").read_text().splitlines()
    assert log[0].startswith("task,phase,epoch,loss") and len(log) == 1 + 5 * 10
    assert (joint_run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    cfg = yaml.safe_load((joint_run / "config.yaml").read_text())
    assert cfg["method"] == "joint" and cfg["hparams"]["epochs"] == 10


def test_config_yaml_reruns_identically(joint_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--config", str(joint_run / "config.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    a = json.loads((joint_run / "metrics.json").read_text())["accuracy"]
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())["accuracy"]
    assert a == b


def test_show_eval_list(joint_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(joint_run)]) == 0
    out = capsys.readouterr().out
    assert "average accuracy" in out and "joint on digits" in out
    assert main(["eval", str(joint_run)]) == 0
    assert "reproduces the recorded row 5: yes" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "digits" in out and "embedded" in out and "needs --data-root" in out


@pytest.mark.parametrize("method,setting", [("finetune", "task"), ("joint", "class")])
def test_resume_after_task_2_is_exact(tmp_path: Path, method: str, setting: str) -> None:
    full = lifelong.run(method=method, benchmark="digits", setting=setting, epochs=2, out=tmp_path / "full")
    crashed = tmp_path / "crashed"
    shutil.copytree(full.run_dir, crashed)
    for p in (crashed / "checkpoints").glob("task-0[345].pt"):
        p.unlink()
    (crashed / "metrics.json").unlink()  # a crash after task 2 has not written later metrics either
    resumed = lifelong.run(method=method, benchmark="digits", setting=setting, epochs=2, out=crashed, resume=True)
    assert resumed.accuracy == full.accuracy
    assert resumed.metrics["top5"] == full.metrics["top5"]
    log = (crashed / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 5 * 2  # epoch rows of tasks 3-5 replaced, not duplicated


def test_keep_last(tmp_path: Path) -> None:
    r = lifelong.run(method="finetune", benchmark="digits", epochs=1, keep="last", out=tmp_path / "k")
    assert [p.name for p in (r.run_dir / "checkpoints").iterdir()] == ["task-05.pt"]


def test_cifar100_superclass20_end_to_end(cifar_root: Path, tmp_path: Path) -> None:
    r = lifelong.run(method="finetune", benchmark="cifar100-superclass20", data_root=cifar_root, epochs=1,
                     backbone="convnet", out=tmp_path / "c")
    assert len(r.accuracy) == 20 and r.metrics["tasks"][0]["name"] == "coarse00"


def test_cifar100_class_end_to_end(cifar_root: Path, tmp_path: Path) -> None:
    r = lifelong.run(method="finetune", benchmark="cifar100", setting="class", data_root=cifar_root, epochs=1,
                     increment=25, base=50, backbone="convnet", out=tmp_path / "c")
    assert len(r.accuracy) == 3 and len(r.metrics["tasks"][1]["classes"]) == 25


def test_stl10_folder_and_list_end_to_end(stl_root: Path, tmp_path: Path) -> None:
    r = lifelong.run(method="finetune", benchmark="stl10", data_root=stl_root, epochs=1, backbone="convnet",
                     benchmark__image_size=32, out=tmp_path / "s")
    assert len(r.accuracy) == 5
    folder = write_image_folder(tmp_path / "f", ["a", "b", "c", "d"], per_class=6)
    r = lifelong.run(method="joint", benchmark="folder", setting="class", data_root=folder, epochs=1, tasks=2,
                     backbone="convnet", benchmark__image_size=16, out=tmp_path / "fr")
    assert r.metrics["tasks"][1]["classes"] == ["c", "d"]
    (folder / "train.txt").write_text("".join(f"{c}/img{i}.png {k}\n" for k, c in enumerate("abcd") for i in range(4)))
    (folder / "val.txt").write_text("".join(f"{c}/img{i}.png {k}\n" for k, c in enumerate("abcd") for i in range(4, 6)))
    r = lifelong.run(method="finetune", benchmark="list", setting="class", data_root=folder, epochs=1, tasks=2,
                     backbone="convnet", benchmark__image_size=16, out=tmp_path / "lr")
    assert len(r.accuracy) == 2


def test_killed_run_resumes_to_the_uninterrupted_matrix(tmp_path: Path) -> None:
    """SIGKILL a real ``lifelong run`` once its second checkpoint exists, then ``--resume`` it."""
    import signal
    import subprocess
    import sys
    import time

    args = ["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "3", "--quiet"]
    full = lifelong.run(method="finetune", benchmark="digits", epochs=3, out=tmp_path / "full")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lifelong", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "task-02.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "task-02.pt").exists()
    (out / "checkpoints" / ".task-03.pt.k1ll3d").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    code = main(["run", "--resume", "--out", str(out), "--quiet"])
    assert code == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["accuracy"] == full.accuracy
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"task-0{i}.pt" for i in range(1, 6)]
