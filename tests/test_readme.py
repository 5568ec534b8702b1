"""The README's examples run as written (a user copies them first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_python_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (code,) = [b for b in _blocks("python") if "import lifelong" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    exec(compile(code, str(README), "exec"), namespace)  # a second run must not collide with the first's folder
    result, logits, method = namespace["result"], namespace["logits"], namespace["method"]
    assert 0 <= result.final_accuracy <= 1 and result.run_dir.is_dir()
    assert logits.shape == (len(namespace["scenario"].tasks[0].test), 2)
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_readme_never_sends_readers_outside_the_repository() -> None:
    assert "../shared" not in README.read_text() and "shared/methods" not in README.read_text()
