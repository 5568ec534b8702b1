"""Issue 14: ``compare``, ``run --seeds``, ``report`` (rendered in headless Chromium), ``--log tensorboard``,
``presets`` and ``run --dry-run``, on runs made here: digits, two methods x two seeds."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_cifar100, write_image_folder
from lifelong.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
CLASS = ["run", "--benchmark", "digits", "--setting", "class", "--epochs", "1", "--quiet"]
METHODS = {"finetune": [], "icarl": ["--memory", "40"]}


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``lifelong run --seeds 0,1`` for finetune and iCaRL: four run folders under two --out folders."""
    root = tmp_path_factory.mktemp("seeds")
    out = {}
    for method, extra in METHODS.items():
        out[method] = root / method
        assert main(CLASS + ["--method", method, *extra, "--seeds", "0,1", "--out", str(out[method])]) == 0
    return out


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


# ------------------------------------------------------------------ --seeds
def test_seeds_write_one_folder_per_seed(runs: dict[str, Path]) -> None:
    for method, out in runs.items():
        assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seed-1"]
        a, b = (yaml.safe_load((out / f"seed-{s}" / "config.yaml").read_text()) for s in (0, 1))
        assert (a["seed"], b["seed"]) == (0, 1) and a["method"] == method
        assert {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}
        assert _metrics(out / "seed-0")["accuracy"] != _metrics(out / "seed-1")["accuracy"]  # the seed matters


def test_a_range_of_seeds_and_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lifelong.engine.seeds import parse_seeds

    assert parse_seeds("0..4") == [0, 1, 2, 3, 4] and parse_seeds("3,1..2") == [3, 1, 2]
    assert "0..x" in _error(capsys, CLASS + ["--method", "finetune", "--seed", "0..x"])
    assert "twice" in _error(capsys, CLASS + ["--method", "finetune", "--seeds", "1,1"])
    assert "--seed or --seeds" in _error(capsys, CLASS + ["--method", "finetune", "--seed", "1", "--seeds", "2,3"])


def test_seeds_resume_after_a_kill(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SIGKILL ``lifelong run --seeds 0,1`` during seed 1; the same command finishes it, seed 0 untouched."""
    import lifelong

    out = tmp_path / "s"
    argv = ["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "3", "--seeds", "0,1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "lifelong", *argv, "--threads", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "seed-1" / "checkpoints" / "task-02.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "seed-1" / "checkpoints" / "task-05.pt").exists()
    seed0 = (out / "seed-0" / "metrics.json").read_bytes()
    seed0_time = (out / "seed-0" / "metrics.json").stat().st_mtime_ns

    assert main(argv) == 0  # the very same command
    printed = capsys.readouterr().out
    assert "seed 0: finished earlier" in printed and "seed 1: resuming" in printed
    assert (out / "seed-0" / "metrics.json").read_bytes() == seed0
    assert (out / "seed-0" / "metrics.json").stat().st_mtime_ns == seed0_time
    whole = lifelong.run(method="finetune", benchmark="digits", epochs=3, seed=1, out=tmp_path / "whole")
    assert _metrics(out / "seed-1")["accuracy"] == whole.accuracy  # as if never killed
    assert re.search(r"^finetune\s+2\s+0,1\s", printed, re.M)  # then the compare table

    err = _error(capsys, argv[:6] + ["2"] + argv[7:])  # another --epochs: refused, naming the key
    assert "epochs=3" in err and "gives 2" in err and "seed-0" in err


# ------------------------------------------------------------------ compare
def _by_hand(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


KEYS = {
    "final_accuracy": lambda m: m["final_accuracy"],
    "average_incremental_accuracy": lambda m: m["average_incremental_accuracy"],
    "average_forgetting": lambda m: m["average_forgetting"],
    "bwt": lambda m: m["bwt"],
    "parameters": lambda m: m["footprint"]["parameters"],
    "footprint_mb": lambda m: m["footprint"]["bytes"] / 2**20,
    "time_s": lambda m: sum(m["time_s"]),
}


def test_compare_means_and_stds_match_the_metrics_by_hand(runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(runs["finetune"]), str(runs["icarl"]), "--format", "json"]) == 0
    groups = {g["label"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert set(groups) == {"finetune", "icarl"}
    for method, out in runs.items():
        ms = [_metrics(out / f"seed-{s}") for s in (0, 1)]
        g = groups[method]
        assert g["n"] == 2 and g["seeds"] == [0, 1]
        for key, get in KEYS.items():
            mean, std = _by_hand([get(m) for m in ms])
            assert g["metrics"][key]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15), key
            assert g["metrics"][key]["std"] == pytest.approx(std, rel=1e-9, abs=1e-15), key
        for step in range(5):
            mean, std = _by_hand([m["seen_accuracy"][step] for m in ms])
            assert g["seen_accuracy"][step]["mean"] == pytest.approx(mean) and g["seen_accuracy"][step]["std"] == pytest.approx(std)
    assert groups["icarl"]["metrics"]["memory"]["mean"] == 40 and groups["finetune"]["metrics"]["memory"]["n"] == 0

    assert main(["compare", str(runs["finetune"]), str(runs["icarl"])]) == 0
    table = capsys.readouterr().out
    ms = [_metrics(runs["icarl"] / f"seed-{s}") for s in (0, 1)]
    mean, std = _by_hand([m["final_accuracy"] for m in ms])
    row = next(line for line in table.splitlines() if line.startswith("icarl"))
    assert f"{mean * 100:.2f} ± {std * 100:.2f}" in row and re.match(r"icarl\s+2\s+0,1\s", row)
    assert "final accuracy" in table and "BWT" in table and "footprint" in table and "time" in table

    assert main(["compare", str(runs["finetune"]), str(runs["icarl"]), "--format", "csv"]) == 0
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    mean, std = _by_hand([m["bwt"] for m in ms])
    assert float(rows["icarl"]["bwt_mean"]) == pytest.approx(mean) and float(rows["icarl"]["bwt_std"]) == pytest.approx(std)

    assert main(["compare", str(runs["finetune"]), str(runs["icarl"]), "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "| method | n | seeds |" in md and re.search(r"^\| finetune \| 2 \| 0,1 \|", md, re.M)


def test_compare_groups_and_plot(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plot = tmp_path / "seen.png"
    assert main(["compare", str(runs["finetune"]), str(runs["icarl"]), "--group-by", "benchmark", "--format", "json",
                 "--plot", str(plot)]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["label"] == "digits" and group["n"] == 4
    assert plot.read_bytes()[:4] == b"\x89PNG"
    err = _error(capsys, ["compare", str(runs["icarl"]), "--group-by", "memroy"])
    assert "memroy" in err and "hparams.memory" in err


def test_compare_refuses_other_protocols_naming_the_difference(runs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs["icarl"] / "seed-0", other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["benchmark_options"]["per_class"] = 20
    (other / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    err = _error(capsys, ["compare", str(runs["finetune"]), str(other)])
    assert "benchmark_options.per_class" in err and "20" in err and str(other) in err and "--mixed" in err
    assert main(["compare", str(runs["finetune"]), str(other), "--mixed"]) == 0
    capsys.readouterr()

    task = tmp_path / "task"
    assert main(["run", "--method", "finetune", "--benchmark", "digits", "--epochs", "1", "--quiet", "--out", str(task)]) == 0
    capsys.readouterr()
    err = _error(capsys, ["compare", str(runs["finetune"]), str(task)])
    assert "setting is 'class'" in err and "'task'" in err

    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["finetune"] / "seed-0", unfinished)
    m = _metrics(unfinished)
    m["tasks_completed"] = 3
    (unfinished / "metrics.json").write_text(json.dumps(m))
    err = _error(capsys, ["compare", str(runs["finetune"]), str(unfinished)])
    assert "3 of 5" in err and f"--resume --out {unfinished}" in err
    assert "does not exist" in _error(capsys, ["compare", str(tmp_path / "nothing")])


def test_groups_of_one_method_are_told_apart_by_what_differs() -> None:
    from lifelong.report.compare import RunRecord, group_runs

    def rec(method: str, seed: int, memory: int | None, lr: float = 0.1) -> RunRecord:
        hp = {"lr": lr, **({"memory": memory} if memory is not None else {})}
        return RunRecord(None, {"method": method, "seed": seed, "final_accuracy": 0.5 + seed / 10},
                         {"method": method, "benchmark": "digits", "setting": "class", "seed": seed, "device": "cpu",
                          "hparams": hp})

    groups = group_runs([rec("icarl", 0, 20), rec("icarl", 1, 20), rec("icarl", 0, 40), rec("finetune", 0, None),
                         rec("finetune", 1, None, lr=0.1)])
    assert [(g.label, g.n) for g in groups] == [("icarl memory=20", 2), ("icarl memory=40", 1), ("finetune", 2)]
    assert groups[0].stat("final_accuracy").mean == pytest.approx(0.55)
    assert groups[1].stat("final_accuracy").std is None  # one run: no spread


def test_growth_and_decisions_are_recorded(runs: dict[str, Path]) -> None:
    m = _metrics(runs["icarl"] / "seed-0")
    assert len(m["growth"]["bytes"]) == 5 and m["growth"]["bytes"][-1] == m["footprint"]["bytes"]
    assert m["growth"]["memory"][-1] == m["memory"]["size"] == 40
    assert all("summary" in t for t in m["tasks"])


# ------------------------------------------------------------------ report
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(e.message || ('failed to load ' +
  ((e.target && (e.target.currentSrc || e.target.src || e.target.href)) || '').slice(0, 80))); }, true);
var __error = console.error; console.error = function () { window.__errors.push([].join.call(arguments, ' ')); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({images: imgs.length, loaded: ok.length, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=5000", *extra, url], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "report.html"
    assert main(["report", str(runs["finetune"]), str(runs["icarl"]), "--out", str(report)]) == 0
    page = report.read_text()
    # self-contained: every image inline, nothing fetched (the CSP would block it and say so)
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert len(srcs) >= 2 + 4 * 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"""(src|href)=["']?(https?:|//)|@import|url\(""", page)
    assert "Content-Security-Policy" in page and "<script" not in page
    for text in ("Comparison", "accuracy matrix", "each task", "forgetting", "footprint", "per-epoch", "decisions"):
        assert text in page, text

    if shutil.which("chromium") is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); the report's HTML was checked, "
                    "not rendered")
    plain = _chromium(report.as_uri(), tmp_path, "--dump-dom")
    assert plain.returncode == 0 and "<h1>" in plain.stdout
    console = [line for line in plain.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # no CSP violation, no error: the page as shipped

    probed = tmp_path / "probed.html"  # the same page plus a probe that reports every image and error
    probed.write_text(page.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'", 1)
                      .replace("<head>", "<head>" + _PROBE, 1))
    res = _chromium(probed.as_uri(), tmp_path, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert found, res.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe == {"images": len(srcs), "loaded": len(srcs), "errors": []}


def test_report_of_one_run_goes_into_its_folder(runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    run = runs["icarl"] / "seed-1"
    assert main(["report", str(run)]) == 0
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    assert "Comparison" not in page and "icarl on digits" in page
    assert "*.html" in _error(capsys, ["report", str(run), "--out", str(run / "report.txt")])


# ------------------------------------------------------------------ tensorboard
def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'lifelong[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(CLASS + ["--method", "finetune", "--epochs", "2", "--log", "tensorboard", "--out", str(out)]) == 0
    assert list(out.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/loss/train", "epoch/accuracy/train", "epoch/lr/train", "epoch/samples_per_s/train",
            "task/seen_accuracy", "task/average_accuracy", "task/accuracy/1", "task/accuracy/5"} <= tags
    log = list(csv.DictReader((out / "log.csv").open()))
    loss = acc.Scalars("epoch/loss/train")
    assert [e.step for e in loss] == list(range(1, len(log) + 1))
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in log], rel=1e-6)
    m = _metrics(out)
    seen = acc.Scalars("task/seen_accuracy")
    assert [e.step for e in seen] == [1, 2, 3, 4, 5]
    assert [e.value for e in seen] == pytest.approx(m["seen_accuracy"], rel=1e-6)
    assert [e.value for e in acc.Scalars("task/accuracy/1")] == pytest.approx([row[0] for row in m["accuracy"]], rel=1e-6)

    import lifelong.engine.tblog as tblog

    monkeypatch.setattr(tblog, "TensorBoardLog", lambda *a: pytest.fail("the logger was built without --log"))
    plain = tmp_path / "plain"
    assert main(CLASS + ["--method", "finetune", "--out", str(plain)]) == 0
    assert not list(plain.glob("events.out.tfevents.*"))


def test_tensorboard_missing_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    err = _error(capsys, CLASS + ["--method", "finetune", "--log", "tensorboard", "--out", str(tmp_path / "r")])
    assert "lifelong[tensorboard]" in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ presets, --dry-run
def test_presets_list_every_config_with_target_and_data(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for f in (REPO / "configs").glob("*.yaml"):
        assert f.name in out, f.name
    line = next(line for line in out.splitlines() if line.startswith("cpg-cifar100-superclass20.yaml"))
    assert "cpg" in line and "cifar100-superclass20/task" in line and "needs --data-root" in line
    after = out.split("cpg-cifar100-superclass20.yaml", 1)[1]
    assert "80.9 / 81.2 / 81.7%" in after.split(".yaml", 1)[0]
    assert main(["list", "--presets"]) == 0 and capsys.readouterr().out == out

    root = write_cifar100(tmp_path / "data", per_class_train=1, per_class_test=1)
    assert main(["presets", "--data-root", str(root)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cpg-cifar100-superclass20.yaml"))
    assert "present" in line

    from lifelong.report.presets import target_of

    assert target_of("# Method X.\n# Target average incremental accuracy: 61.2 (Table 2). More.\nmethod: x\n") == \
        "Target average incremental accuracy: 61.2 (Table 2)."
    assert target_of("# nothing here\nmethod: x\n") is None


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_dry_run_prints_config_and_layout_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.data.benchmarks import BenchmarkConfig, build_scenario

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cache = tmp_path / "cache"
    cfg = work / "mine.yaml"
    cfg.write_text("method: icarl\nbenchmark: digits\nsetting: class\nhparams:\n  memory: 40\n")
    before = _tree(tmp_path)
    assert main(["run", "--config", str(cfg), "--dry-run", "--out", str(work / "r"), "--seeds", "0..2"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("\ndigits, class-incremental", 1)[0])
    assert resolved["method"] == "icarl" and resolved["hparams"]["memory"] == 40 and resolved["hparams"]["epochs"] == 10
    scen = build_scenario("digits", "class", BenchmarkConfig(), None, 0.0)
    for t in scen.tasks:
        assert re.search(rf"^\s*{t.id + 1}\s+{t.name}\s+2\s+{', '.join(t.class_names)}\s+{len(t.train)}\s+0\s+{len(t.test)}$",
                         out, re.M), out
    assert "seeds 0, 1, 2" in out and "nothing written" in out
    assert _tree(tmp_path) == before and not cache.exists()

    # a folder benchmark: the layout from file names alone, no image decoded, no cache entry written
    images = write_image_folder(tmp_path / "imgs", ["a", "b", "c", "d"], per_class=4)
    before = _tree(tmp_path)
    assert main(["run", "--method", "finetune", "--benchmark", "folder", "--data-root", str(images), "--tasks", "2",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s*2\s+task2\s+2\s+c, d\s+6\s+0\s+2$", out, re.M), out
    assert _tree(tmp_path) == before

    # a paper preset against (tiny) CIFAR-100 files: 50 base classes, then 10 steps of 5
    root = write_cifar100(tmp_path / "data", per_class_train=2, per_class_test=1)
    assert main(["run", "--config", str(REPO / "configs" / "icarl-cifar100-b50-10steps.yaml"), "--data-root", str(root),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "11 tasks, 100 classes" in out and re.search(r"^\s*1\s+task1\s+50\s.*\s100\s+0\s+50$", out, re.M), out
    assert "--resume" in _error(capsys, ["run", "--method", "finetune", "--benchmark", "digits", "--dry-run", "--resume",
                                         "--out", str(work / "r")])


def test_first_decode_shows_a_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lifelong.data import images

    root = write_image_folder(tmp_path / "imgs", ["a", "b"], per_class=3)
    files, _, _ = images.scan_folder(root)
    try:
        images.show_progress(True)
        images.decode_cached(files, 8, tmp_path / "c1")
        err = capsys.readouterr().err
        assert "decoding images once at 8x8" in err and "6/6" in err
        images.decode_cached(files, 8, tmp_path / "c1")  # cached: no bar
        images.show_progress(False)
        images.decode_cached(files, 8, tmp_path / "c2")
        assert capsys.readouterr().err == ""
    finally:
        images.show_progress(None)
