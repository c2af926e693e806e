"""Packaging: environment.yml, pyproject.toml, Makefile and .ci/run agree with each other."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def parse_environment(text: str) -> dict:
    """A tiny parser for the YAML subset of a conda environment file: top-level ``key: value`` or
    ``key:`` followed by ``- item`` lines, and one nested ``- pip:`` list (PyYAML is not a dependency)."""
    env: dict = {}
    key, pip, pip_indent = None, None, -1
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if indent == 0:
            key, _, value = item.partition(":")
            key = key.strip()
            env[key] = value.strip() or []
            pip = None
        elif item.startswith("- "):
            value = item[2:].strip()
            if pip is not None and indent > pip_indent:
                pip.append(value)
            elif value == "pip:":
                pip, pip_indent = [], indent
                env[key].append({"pip": pip})
            else:
                pip = None
                env[key].append(value)
        else:
            raise ValueError(f"environment.yml: cannot parse line {raw!r}")
    return env


def _split(req: str) -> tuple[str, str]:
    """``"Name==1.0"`` -> ``("name", "==1.0")`` with the name normalised (PEP 503)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*", req)
    assert m, req
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(2).replace(" ", "")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment() -> dict:
    return parse_environment((ROOT / "environment.yml").read_text())


def test_parser_agrees_with_pyyaml(environment):
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load((ROOT / "environment.yml").read_text()) == environment


def test_environment_header(environment):
    assert environment["name"] == "pdmd_lab"
    assert environment["channels"] == ["conda-forge"]
    deps = [d for d in environment["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in deps and "pip" in deps
    assert sum(isinstance(d, dict) for d in environment["dependencies"]) == 1


def test_environment_pip_equals_pyproject(environment, pyproject):
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    project = pyproject["project"]
    extras = project["optional-dependencies"].values()
    wanted = list(project["dependencies"]) + [r for extra in extras for r in extra]
    assert len({_split(r)[0] for r in pip}) == len(pip), "duplicate package in environment.yml"
    assert len({_split(r)[0] for r in wanted}) == len(wanted), "duplicate package in pyproject.toml"
    assert dict(map(_split, pip)) == dict(map(_split, wanted))
    assert not any(r.startswith("-e") or r == "." for r in pip)  # the kit itself: `pip install -e .` after


def test_pyproject(pyproject):
    project = pyproject["project"]
    assert project["name"] == "pdmd_lab"
    lo = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert lo and int(lo.group(1)) <= 11
    deps = dict(map(_split, project["dependencies"]))
    assert deps["torch"].startswith("==") and deps["diffusers"] == "==0.42.1"
    assert set(project["optional-dependencies"]) == {"app", "notebooks", "dev"}
    assert project["scripts"] == {"pdmd-lab": "pdmd_lab.cli:main"}
    module, func = project["scripts"]["pdmd-lab"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_console_script_installed():
    eps = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "pdmd-lab"]
    assert eps, "the pdmd-lab console script is not installed: run `make install` (pip install -e .)"
    assert eps[0].value == "pdmd_lab.cli:main"


def test_makefile_installs_every_extra_in_one_call(pyproject):
    text = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install (.*)", text)
    assert len(installs) == 1, installs
    extras = re.search(r"\.\[([^\]]*)\]", installs[0])
    assert extras and set(extras.group(1).split(",")) == set(pyproject["project"]["optional-dependencies"])
    assert "-e" in installs[0].split()
    for target in ("test", "app", "lab", "zoo", "bench", "lint", ".venv"):
        assert re.search(rf"^{re.escape(target)}:", text, re.M), target
    assert re.search(r"^export GRADIO_ANALYTICS_ENABLED\s*:?=\s*False", text, re.M)


def test_ci_script():
    run = ROOT / ".ci" / "run"
    text = run.read_text()
    assert os.access(run, os.X_OK)
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "apt-get install -y" in text and "chromium" in text and "make test" in text


def test_lint_is_clean():
    """``make lint`` (ruff, pinned; rules in pyproject.toml) passes on the package, app, tests and notebooks."""
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), "ruff is not installed next to this Python (the dev extra: make test installs it)"
    done = subprocess.run([str(ruff), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
