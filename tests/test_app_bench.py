"""``python -m app.bench``: its inputs are checked before the app starts, and its table reads its results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import bench  # noqa: E402


@pytest.mark.parametrize("args, says", [
    (["--repeats", "0"], "--repeats"),
    (["--wait", "-1"], "--wait"),
    (["--threads", "0"], "--threads"),
    (["--families", "nosuch"], "nosuch"),
])
def test_bad_inputs_are_refused_before_the_app_starts(args, says, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the app was started"))
    assert bench.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and says in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_existing_results_are_kept_unless_overwrite(tmp_path, capsys, monkeypatch):
    (tmp_path / "latency.md").write_text("mine\n")
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the app was started"))
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "latency.md").read_text() == "mine\n"


def test_table_and_files(tmp_path, monkeypatch):
    result = {"families": {"ring-mix": {"n": 2048, "first": {"first_panel_s": 0.5, "all_panels_s": 1.25},
                                        "repeated": {"first_panel_s": 0.25, "all_panels_s": 0.3}}},
              "load_average_1min_at_end": 1.0}
    monkeypatch.setattr(bench, "run", lambda *a, **k: result)
    assert bench.main(["--out", str(tmp_path), "--families", "ring-mix"]) == 0
    md = (tmp_path / "latency.md").read_text()
    assert "| ring-mix (2,048) | 0.50 s / 1.25 s | 0.25 s / 0.30 s |" in md
    assert (tmp_path / "latency.json").exists()
