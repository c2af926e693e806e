"""The docs point at real things: every ``test_x.py::test_name`` they cite exists, and every ``docs/*.md``
that the package's docstrings and the README name is in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_every_cited_test_exists():
    cited = set()
    for md in DOCS.glob("*.md"):
        cited |= {(m.group(1), m.group(2), md.name) for m in re.finditer(r"(test_\w+\.py)::(test_\w+)", md.read_text())}
    assert len(cited) > 40  # conventions.md cites a test for every formula
    missing = [f"{doc}: {f}::{name}" for f, name, doc in sorted(cited)
               if not (ROOT / "tests" / f).is_file() or name not in _tests_in(ROOT / "tests" / f)]
    assert not missing, "docs cite tests that do not exist:\n" + "\n".join(missing)


def test_named_docs_exist():
    named = set()
    for path in [ROOT / "README.md", *(ROOT / "pdmd_lab").rglob("*.py")]:
        named |= set(re.findall(r"docs/([\w-]+\.md)", path.read_text()))
    assert {"conventions.md", "families.md", "methods.md"} <= named
    assert not [n for n in named if not (DOCS / n).is_file()]
