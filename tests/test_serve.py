"""Serving a finished run (issue 15): ``learn`` one more task, ``predict``, ``export``.

One small finished run per method family (permuted or plain digits, one epoch per phase), each
then taught one more task from an image folder; the tests compare what the serve layer does
with what the library computes on the same images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import lifelong
from conftest import write_image_folder
from lifelong.cli import main
from lifelong.data.spec import skeleton_scenario
from lifelong.data.taskfolder import LUMA, run_image_shape, to_channels
from lifelong.engine.loop import TrainContext
from lifelong.errors import DataError
from lifelong.serve.export import load_export, meta_path_of

FAST = {"cpg": {"prune_ratios": [0.5], "retrain_epochs": 1, "goals": [0.0, 0.0, 0.0, 0.0]},
        "pae": {"prune_ratios": [0.5], "goals": [0.0, 0.0, 0.0, 0.0]}}
RUNS: dict[str, dict[str, Any]] = {
    **{m: {"benchmark": "permuted-digits", "tasks": 2, **FAST.get(m, {})}
       for m in ("packnet", "piggyback", "cpg", "pae", "prognn")},
    "clr": {"benchmark": "digits", "tasks": 2},
    "finetune": {"benchmark": "digits", "tasks": 2},
    # LASEM commits one configuration per task; shared layers may drift (guarantees_unforgetting is False)
    "lasem-hps": {"benchmark": "digits", "tasks": 2, "backbone": "lasem_cnn", "backbone__variant": "cifar4"},
    **{m: {"benchmark": "digits", "setting": "class", "tasks": 2, "memory": 40} for m in ("icarl", "lucir", "bic")},
}
ISOLATION = {"packnet", "piggyback", "cpg", "pae", "clr", "prognn"}
CLASS = {"icarl", "lucir", "bic"}
NEW_TASK = ["a", "b", "c"]  # the task-setting runs learn these ...
NEW_CLASSES = ["x", "y"]  # ... the class-setting ones these

pytestmark = pytest.mark.usefixtures("one_thread")


def _probe_logits(run_dir: Path) -> list[torch.Tensor]:
    """Every task's logits on its first 32 test images, from the run's newest checkpoint."""
    method, scenario, _ = lifelong.load_run(run_dir, device="cpu")
    ctx = TrainContext(torch.device("cpu"), scenario.augment)
    out = []
    for t in scenario.tasks:
        tid = None if scenario.setting == "class" else t.id
        probe = t.test.subset(torch.arange(min(32, len(t.test))))
        out.append(ctx.outputs(lambda x: method.predict(x, tid), probe, mean=t.mean, std=t.std))
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFELONG_CACHE", str(base / "cache"))
        write_image_folder(base / "newtask", NEW_TASK, per_class=8, size=(20, 16))
        write_image_folder(base / "newclasses", NEW_CLASSES, per_class=8, size=(12, 12), seed=1)
    return base


@pytest.fixture(scope="module")
def learned(root: Path) -> dict[str, dict[str, Any]]:
    """method -> the run before and after ``learn`` (metrics, old tasks' logits, the result)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFELONG_CACHE", str(root / "cache"))
        for method, kw in RUNS.items():
            torch.manual_seed(0)
            run_dir = root / method
            lifelong.run(method=method, epochs=1, out=run_dir, **kw)
            before = json.loads((run_dir / "metrics.json").read_text())
            logits_before = _probe_logits(run_dir)
            log_before = len((run_dir / "log.csv").read_text().splitlines())
            folder = root / ("newclasses" if kw.get("setting") == "class" else "newtask")
            result = lifelong.learn(run_dir, folder)
            out[method] = {"run": run_dir, "before": before, "after": result.metrics, "result": result,
                           "logits_before": logits_before, "logits_after": _probe_logits(run_dir),
                           "log_before": log_before}
    return out


# ----------------------------------------------------------------------------- learn
@pytest.mark.parametrize("method", list(RUNS))
def test_learn_appends_a_row_and_a_column_and_keeps_earlier_rows(learned: dict, method: str) -> None:
    r = learned[method]
    before, after, run = r["before"], r["after"], r["run"]
    T = len(before["accuracy"])
    R = after["accuracy"]
    assert len(R) == T + 1 and all(len(row) == T + 1 for row in R)
    for i in range(T):  # earlier rows: as recorded, with the new column empty
        assert R[i][:T] == before["accuracy"][i] and R[i][T] is None
    assert R[T][T] is not None and all(v is not None for v in R[T])
    new = after["tasks"][-1]
    assert new["name"] == ("newclasses" if method in CLASS else "newtask")
    assert new["classes"] == (NEW_CLASSES if method in CLASS else NEW_TASK)
    assert [t["name"] for t in after["tasks"][:T]] == [t["name"] for t in before["tasks"]]
    assert (run / "checkpoints" / f"task-{T + 1:02d}.pt").is_file()
    assert len((run / "log.csv").read_text().splitlines()) > r["log_before"]
    assert (run / "accuracy.png").is_file()
    if method in ISOLATION:
        assert after["unforgetting_verified"] is True
        assert R[T][:T] == before["accuracy"][-1][:T]  # exactly: no earlier task moved
        assert all(f == 0 for f in after["forgetting"][:T])
        for old, new_logits in zip(r["logits_before"], r["logits_after"]):
            assert torch.equal(old, new_logits)  # bit for bit, through the new checkpoint
        served = new["info"].get("served_equals_trained")
        assert served in (True, None) and (served is True or method == "prognn")


@pytest.mark.parametrize("method", sorted(CLASS))
def test_class_incremental_learn_extends_head_and_memory_within_budget(learned: dict, method: str) -> None:
    r = learned[method]
    m = r["result"].method
    seen = r["result"].scenario.num_classes
    assert seen == 12 and m.seen_classes == 12
    pred = lifelong.Predictor(r["run"])
    assert pred.class_names(None)[-2:] == NEW_CLASSES and len(pred.class_names(None)) == 12
    assert pred.logits(np.zeros((8, 8), np.uint8)).shape == (1, 12)
    memory = m.memory_size()
    assert memory is not None and 0 < memory <= 40 and r["after"]["memory"]["size"] == memory
    labels = set(m.memory.labels.tolist())
    assert {10, 11} <= labels  # the new classes have exemplars ...
    assert set(range(10)) <= labels | (set(m.val_memory.labels.tolist()) if hasattr(m, "val_memory") else set())


def test_eval_rebuilds_the_learned_task_and_reproduces_the_row(learned: dict, capsys: pytest.CaptureFixture) -> None:
    run = learned["packnet"]["run"]
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "reproduces the recorded row 3: yes" in out and out.count("\n") >= 5


def test_a_second_learn_and_a_resume_after_it(learned: dict, root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(learned["piggyback"]["run"], run)
    write_image_folder(tmp_path / "more", ["p", "q"], per_class=6, seed=3)
    result = lifelong.learn(run, tmp_path / "more", name="more", epochs=2)
    R = result.accuracy
    assert len(R) == 4 and R[2][:3] == learned["piggyback"]["after"]["accuracy"][2][:3] and R[3][:3] == R[2][:3]
    assert result.metrics["unforgetting_verified"] is True
    assert [t["name"] for t in result.metrics["tasks"]] == ["perm0", "perm1", "newtask", "more"]
    log = (run / "log.csv").read_text().splitlines()
    assert sum(1 for line in log if line.startswith("4,")) == 2  # --epochs 2 for this task's one phase
    resumed = lifelong.run(method="piggyback", benchmark="permuted-digits", out=run, resume=True)  # nothing left to train
    assert resumed.accuracy == R


def test_learn_reverifies_old_tasks_and_reports_a_change(learned: dict, root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The new checkpoint holds a fingerprint per task, and an old task changed while learning is reported."""
    from lifelong.engine.checkpoint import load_checkpoint
    from lifelong.methods.packnet import PackNet

    ckpt = load_checkpoint(learned["packnet"]["run"] / "checkpoints" / "task-03.pt")
    assert len(ckpt["record"]["probes"]) == 3 and ckpt["record"]["learned"][0]["name"] == "newtask"
    run = tmp_path / "run"
    shutil.copytree(learned["packnet"]["run"], run)
    fit = PackNet.fit_task

    def careless(self, task, ctx):  # a method bug: training the new task touches task 1's head
        info = fit(self, task, ctx)
        with torch.no_grad():
            self.heads[0].bias.add_(1e-3)
        return info

    monkeypatch.setattr(PackNet, "fit_task", careless)
    result = lifelong.learn(run, root / "newclasses", name="other")
    assert result.metrics["unforgetting_verified"] is False


# ----------------------------------------------------------------------------- predict
def _save_test_images(scenario: Any, folder: Path) -> list[tuple[Path, int, int]]:
    """Every test image of every task as a PNG: (path, task id, row in the task's test set)."""
    out = []
    for task in scenario.tasks:
        x = task.test.batch_images(torch.arange(len(task.test)))
        (folder / task.name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(x):
            arr = img.numpy()
            im = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
            path = folder / task.name / f"{i:04d}.png"
            im.save(path)
            out.append((path, task.id, i))
    return out


def _eval_predictions(run: Path) -> tuple[Any, dict[int, list[str]]]:
    """Per task, the class name ``evaluate`` predicts for each test image (its own loop and transform)."""
    method, scenario, _ = lifelong.load_run(run, device="cpu")
    ctx = TrainContext(torch.device("cpu"), scenario.augment)
    names = [c for t in scenario.tasks for c in t.class_names]
    preds = {}
    with torch.no_grad():
        for task in scenario.tasks:
            tid = None if scenario.setting == "class" else task.id
            got = [method.predict(b.x, tid).argmax(1) for b in ctx.iterate(task.test, 256, train=False, mean=task.mean,
                                                                             std=task.std)]
            idx = torch.cat(got).tolist()
            preds[task.id] = [(names if tid is None else task.class_names)[j] for j in idx]
    return scenario, preds


@pytest.fixture(scope="module")
def augmented_run(root: Path) -> Path:
    """A folder-benchmark run with a random-crop-and-flip train transform (unlike digits), class setting."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFELONG_CACHE", str(root / "cache"))
        data = write_image_folder(root / "photos", ["cat", "dog", "owl", "yak"], per_class=8, size=(24, 16))
        torch.manual_seed(0)
        r = lifelong.run(method="finetune", benchmark="folder", setting="class", data_root=data, tasks=2, epochs=1,
                         backbone="convnet", benchmark__image_size=16, out=root / "folder-run")
    assert r.scenario.augment.crop_padding > 0 and r.scenario.augment.flip
    return r.run_dir


@pytest.fixture(scope="module")
def per_task_norm_run(root: Path) -> Path:
    """Task setting, each task normalised with its own statistics (CPG's CIFAR protocol)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIFELONG_CACHE", str(root / "cache"))
        data = write_image_folder(root / "photos2", ["ant", "bee", "cow", "doe"], per_class=8, size=(16, 16), seed=5)
        torch.manual_seed(0)
        r = lifelong.run(method="packnet", benchmark="folder", data_root=data, tasks=2, epochs=1, backbone="convnet",
                         benchmark__image_size=16, benchmark__per_task_norm=True, out=root / "norm-run")
    assert all(t.mean is not None for t in r.scenario.tasks)
    return r.run_dir


@pytest.mark.parametrize("which", ["lucir", "packnet", "folder", "per-task-norm"])
def test_predict_on_saved_test_images_equals_eval(learned: dict, augmented_run: Path, per_task_norm_run: Path,
                                                   which: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = {"folder": augmented_run, "per-task-norm": per_task_norm_run}.get(which) or learned[which]["run"]
    scenario, expected = _eval_predictions(run)
    saved = _save_test_images(scenario, tmp_path / "imgs")
    for task in scenario.tasks:
        argv = ["predict", str(run), str(tmp_path / "imgs" / task.name), "--format", "json", "--top", "1"]
        if scenario.setting == "task":
            argv += ["--task", task.name]
        assert main(argv) == 0
        got = {r["image"]: r["predictions"][0]["class"] for r in json.loads(capsys.readouterr().out)}
        mine = [(p, i) for p, t, i in saved if t == task.id]
        assert len(got) == len(mine) == len(task.test)
        assert [got[str(p)] for p, i in mine] == [expected[task.id][i] for p, i in mine]
    # the Python API on PIL images and uint8 arrays: the same classes
    pred = lifelong.Predictor(run)
    task = scenario.tasks[-1]
    paths = [p for p, t, _ in saved if t == task.id][:12]
    arrays = [np.asarray(Image.open(p)) for p in paths]
    images = [Image.open(p) for p in paths]
    name = None if scenario.setting == "class" else task.name
    want = expected[task.id][:12]
    assert [r[0][0] for r in pred.predict(arrays, name, top=3)] == want
    assert [r[0][0] for r in pred.predict(images, name, top=1)] == want
    probs = pred.probabilities(paths, name)
    assert torch.allclose(probs.sum(1), torch.ones(len(paths)))


def test_predict_table_and_csv(learned: dict, root: Path, capsys: pytest.CaptureFixture) -> None:
    run = learned["lucir"]["run"]
    folder = root / "newclasses" / "x"
    assert main(["predict", str(run), str(folder), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image") and len(lines) == 1 + 8 and "(" in lines[1]
    assert main(["predict", str(run), str(folder / "img0.png"), "--format", "csv", "--top", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "image,rank,class,probability" and len(rows) == 4 and rows[1].split(",")[1] == "1"


# ----------------------------------------------------------------------------- export
def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


EXPORTS = [(m, f) for m in ("cpg", "packnet", "clr", "lucir") for f in ("torchscript", "onnx", "state_dict")
           if (m, f) != ("clr", "state_dict")]


@pytest.mark.parametrize("method,fmt", EXPORTS)
def test_exported_model_equals_the_library_on_test_images(learned: dict, method: str, fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx" and not _onnx_available():
        pytest.skip("onnx / onnxruntime not installed (pip install 'lifelong[onnx]')")
    run = learned[method]["run"]
    # the oldest task, whose subnetwork must exclude every later task's weights; CLR: the learned task
    task = {"lucir": None, "clr": "newtask"}.get(method, "perm0")
    out = tmp_path / f"model.{fmt}"
    args = ["export", str(run), "--format", fmt, "--out", str(out)] + ([] if task is None else ["--task", task])
    assert main(args) == 0
    meta = json.loads(meta_path_of(out).read_text())
    pred = lifelong.Predictor(run)
    t = pred.task_index(task)
    assert meta["classes"] == pred.class_names(t) and meta["format"] == fmt and meta["task"] == task
    assert meta["preprocessing"]["mean"] == list(pred.normalisation(t)[0])
    _, scenario, _ = lifelong.load_run(run, device="cpu")
    images = torch.cat([tk.test.batch_images(torch.arange(len(tk.test))) for tk in
                        (scenario.tasks if t is None else [scenario.tasks[t]])])
    x = pred.transform(images, task)
    with torch.no_grad():
        want = pred.method.predict(x, t)
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
        else:
            got = load_export(out)(x)
    assert got.shape == want.shape and len(x) >= 6
    assert float((got - want).abs().max()) < 1e-5
    if fmt == "state_dict":
        assert meta["rebuild"]["head"]["out_features"] == len(meta["classes"])


def test_default_export_paths_keep_one_json_per_file(learned: dict) -> None:
    run = learned["packnet"]["run"]
    paths = [lifelong.export(run, "perm1", fmt) for fmt in ("torchscript", "state_dict")]
    assert [p.name for p, _ in paths] == ["perm1.pt", "perm1.pth"]
    assert [json.loads(j.read_text())["format"] for _, j in paths] == ["torchscript", "state_dict"]
    assert all(p.parent == run / "export" for p, _ in paths)


# ----------------------------------------------------------------------------- images and mistakes
def test_grayscale_conversion_is_pils() -> None:
    rgb = np.random.RandomState(0).randint(0, 256, size=(5, 3, 7, 9)).astype(np.uint8)
    want = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0), "RGB").convert("L")) for im in rgb])
    assert np.array_equal(np.asarray(to_channels(rgb, 1))[:, 0], want)
    assert sum(LUMA) == 65536 and to_channels(rgb, 3) is rgb


def test_irreconcilable_image_formats_are_refused(learned: dict) -> None:
    spec = lifelong.Predictor(learned["packnet"]["run"]).spec
    for shape, needle in (([2, 8, 8], "2 channels"), ([1, 8, 6], "8x6")):
        scen = skeleton_scenario({**spec, "image_shape": shape})
        with pytest.raises(DataError, match=needle):
            run_image_shape(scen)


def _fails(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_every_mistake_is_one_line_and_exit_2(learned: dict, root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    R, C = str(learned["packnet"]["run"]), str(learned["lucir"]["run"])
    before = (Path(R) / "metrics.json").read_text()
    (tmp_path / "only-train" / "train" / "a").mkdir(parents=True)
    write_image_folder(tmp_path / "one", ["a"], per_class=4)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "img.png")  # images directly in the folder, no class folders
    bad = write_image_folder(tmp_path / "bad", ["a", "b"], per_class=4)
    (bad / "a" / "broken.png").write_bytes(b"not a png at all")
    write_image_folder(tmp_path / "digits", ["0", "1"], per_class=4)
    write_image_folder(tmp_path / "few", ["a", "b"], per_class=2)

    _fails(capsys, ["learn", R, "--task-folder", str(tmp_path / "nowhere")], "does not exist")
    _fails(capsys, ["learn", R, "--task-folder", str(tmp_path / "only-train")], "no test/")
    _fails(capsys, ["learn", R, "--task-folder", str(tmp_path / "one")], "at least", "two")
    _fails(capsys, ["learn", R, "--task-folder", str(tmp_path / "flat")], "no images found")
    _fails(capsys, ["learn", R, "--task-folder", str(bad)], "cannot decode image", "broken.png")
    _fails(capsys, ["learn", R, "--task-folder", str(tmp_path / "few")], "no test image")
    _fails(capsys, ["learn", R, "--task-folder", str(root / "newtask"), "--name", "perm0"], "already has a task named")
    _fails(capsys, ["learn", C, "--task-folder", str(tmp_path / "digits")], "'0', '1' already in the run")
    _fails(capsys, ["learn", R, "--task-folder", str(root / "newtask"), "--name", "z", "--epochs", "0"], "--epochs 0")
    _fails(capsys, ["learn", R], "--task-folder")
    _fails(capsys, ["learn", str(tmp_path), "--task-folder", str(root / "newtask")], "not a lifelong run folder")
    assert (Path(R) / "metrics.json").read_text() == before  # nothing was written by any of them

    img = str(root / "newtask" / "a" / "img0.png")
    _fails(capsys, ["predict", R, img], "task-incremental", "--task NAME, one of perm0, perm1, newtask")
    _fails(capsys, ["predict", R, img, "--task", "nope"], "no task 'nope'", "perm0, perm1, newtask")
    _fails(capsys, ["predict", C, img, "--task", "x"], "class-incremental")
    _fails(capsys, ["predict", R, str(bad / "a" / "broken.png"), "--task", "perm0"], "cannot decode image")
    _fails(capsys, ["predict", R, str(tmp_path / "missing.png"), "--task", "perm0"], "not found")
    _fails(capsys, ["predict", R, img, "--task", "perm0", "--top", "0"], "--top 0")
    _fails(capsys, ["export", R, "--task", "nope", "--format", "onnx"], "no task 'nope'")
    _fails(capsys, ["export", R, "--format", "torchscript"], "--task NAME")
    _fails(capsys, ["export", R, "--task", "perm0", "--format", "tflite"], "invalid choice")
    for m in ("clr", "prognn"):
        _fails(capsys, ["export", str(learned[m]["run"]), "--task", "newtask", "--format", "state_dict"],
               f"{m} cannot be exported as a state_dict", "torchscript or onnx")


def test_learn_says_when_the_runs_own_data_is_gone(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_image_folder(tmp_path / "data", ["a", "b", "c", "d"], per_class=6)
    r = lifelong.run(method="packnet", benchmark="folder", data_root=data, tasks=2, epochs=1, backbone="convnet",
                     benchmark__image_size=16, out=tmp_path / "run")
    moved = tmp_path / "elsewhere"
    data.rename(moved)
    _fails(capsys, ["learn", str(r.run_dir), "--task-folder", str(root / "newtask")],
           "cannot be loaded", "--data-root")
    assert main(["learn", str(r.run_dir), "--task-folder", str(root / "newtask"), "--data-root", str(moved),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "earlier tasks' outputs bit-identical: yes" in out
    # predicting and exporting need no data at all
    assert main(["predict", str(r.run_dir), str(root / "newtask" / "b"), "--task", "newtask"]) == 0
    assert main(["export", str(r.run_dir), "--task", "task1", "--format", "state_dict"]) == 0
