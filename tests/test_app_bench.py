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


def test_diversity_row_and_cold_start_options(tmp_path, monkeypatch):
    """Diversity's full evaluation gets its own line; --no-warm-up / --no-diversity reach the run."""
    seen = {}
    result = {"families": {"mnist": {"n": 16, "first": {"first_panel_s": 0.3, "all_panels_s": 0.4},
                                     "repeated": {"first_panel_s": 0.2, "all_panels_s": 0.2}}},
              "diversity": {"family": "mnist", "models": ["teacher@4", "dmd-1s"], "n": 100, "clicked_at_s": 31.2,
                            "full_evaluation_s": 17.25},
              "load_average_1min_at_end": 1.0}

    def fake_run(*a, **k):
        seen.update(k)
        return result

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(["--out", str(tmp_path), "--families", "mnist", "--no-warm-up", "--no-diversity"]) == 0
    assert seen["warm_up"] is False and seen["diversity"] is False
    md = (tmp_path / "latency.md").read_text()
    assert ("Diversity, full evaluation of mnist (teacher@4, dmd-1s, n = 100 each, clicked 31 s after start): "
            "17.25 s") in md
