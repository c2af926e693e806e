"""Execute every notebook in ``notebooks/`` top to bottom (fast mode, ``PDMD_FAST=1``) and fail on any error.

The notebooks run on copies in a temporary folder (the committed, fully executed versions are never
overwritten) with the ``python3`` kernel of the interpreter running the tests: its folder goes first on
``PATH`` so that the kernel spec's ``python`` is this environment's.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    for stem in ("01_flow_matching_and_snr", "02_score_matching_within_subintervals", "03_mode_collapse_2d",
                 "04_phased_dmd_on_mnist", "05_diversity_embeddings"):
        assert f"{stem}.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    work = tmp_path / "notebooks"
    work.mkdir()
    copy = work / path.name
    shutil.copy(path, copy)
    monkeypatch.setenv("PDMD_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + existing if existing else ""))
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError on the first failing cell
    nbformat.write(nb, copy)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), cell.source[:200]
