"""``pdmd-lab study``: a grid of recipes x seeds, every run's metrics in one table, means with 95% intervals.

One run = distil a student recipe with one seed (:func:`pdmd_lab.distill.distill`), then score
``n`` samples against the teacher's (the family's teacher at 50 Euler steps with CFG, fresh noise).
Baseline rows ``teacher@K`` sample the teacher with K Euler steps (each seed draws other noise).
Results go to ``runs.jsonl`` (one line per finished run, so a study resumes where it stopped),
``runs.csv``, ``summary.json`` / ``summary.md`` (mean and Student-t 95% confidence interval per
metric and row; where the family has a ``phased-dmd-4s4p`` row, every row minus it with a Welch 95%
interval, :func:`difference_ci`) and ``summary.png`` (metric per row, with error bars).

2D metrics (Gaussian-mixture families): energy distance to the teacher's samples, recall (PRDC,
k = 5), mode KL against the teacher's mode histogram, ``teacher_modes_missed`` (class/mode cells
holding >= 2% of a class's teacher samples but < 2% of the student's), ``off_mode`` (share of samples
farther than 3 stds from every mode) and ``spread`` (within-mode standard deviation over the mode's
the teacher's, averaged over the modes both cover; 1 = the teacher's spread, < 1 = collapsed onto mode
centres).

Records and reruns: every ``runs.jsonl`` line records ``config``, the run's resolved configuration
(:func:`resolved_config`: the recipe with the study's overrides and the seed, every method option
resolved to its value, so a changed default shows), and ``commit`` (``git rev-parse HEAD`` of the
kit's checkout, or null outside one). A (row, seed) counts as done only when its last line's
``config`` equals the row's resolved configuration now (a key added to the configuration since
matches when it holds its default, :func:`same_config`); otherwise it is run again and the new line
appended (tables use the last line of each (row, seed)). A line without a ``config`` (written before
configs were recorded) cannot be shown to match and is run again. The study folders shipped in
``assets/results`` were migrated once: their lines carry the configuration of the recipe they were
run from, reconstructed, with ``commit`` null. A run trains in ``runs/<row>/seed<seed>-<hash>``,
``<hash>`` from the resolved configuration, so a changed row never resumes the old row's checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import hashlib
import json
import math
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pdmd_lab.data import get_dataset
from pdmd_lab.families import get_family
from pdmd_lab.families.points import PointsFamily
from pdmd_lab.families.points import score_2d as _score_2d
from pdmd_lab.progress import heartbeat

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
METRICS_2D = list(PointsFamily.study_metrics)
LOWER_IS_BETTER = {m: PointsFamily().lower_is_better(m) for m in METRICS_2D}  # spread: closer to 1 is better


def t_quantile(df: int) -> float:
    """Two-sided 95% Student-t quantile for ``df`` degrees of freedom (table, nearest lower entry)."""
    if df < 1:
        return float("nan")
    keys = [k for k in T_975 if k <= df]
    return T_975[max(keys)] if df <= 30 else 1.96


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(t_quantile(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def difference_ci(a, b) -> tuple[float, float]:
    """``mean(a) - mean(b)`` and the half-width of its 95% Welch interval (independent runs, unequal variances;
    the Welch-Satterthwaite degrees of freedom, rounded down). NaN half-width below 2 values on a side."""
    a = np.asarray([x for x in a if x is not None and not math.isnan(x)], dtype=np.float64)
    b = np.asarray([x for x in b if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, float(t_quantile(max(1, int(df))) * math.sqrt(va + vb))


REFERENCE_ROW = "phased-dmd-4s4p"  # every row of a family is also compared with this one (row minus it)


# Scoring -------------------------------------------------------------------------------------------

def score_2d(family: str, x: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor, min_share: float = 0.02,
             num_std: float = 3.0) -> dict:
    """The study's 2D metrics of samples ``x`` against teacher samples ``ref`` (same labels): the points
    family's (:func:`pdmd_lab.families.points.score_2d`)."""
    return _score_2d(get_dataset(family).gmm, x, labels, ref, min_share, num_std)


# One run ------------------------------------------------------------------------------------------

def resolved_config(row: str, seed: int, overrides: dict | None = None) -> dict:
    """What a run of ``row`` with ``seed`` is: for a student row, its recipe with ``overrides`` and the seed,
    every method option resolved to its value (so a changed default shows); ``{"model": row}`` for a
    teacher baseline ``family/teacher@K``."""
    if "@" in row:
        return {"model": row}
    from pdmd_lab.recipes import student_config

    cfg = student_config(row, **{**(overrides or {}), "seed": seed})
    flat = {**cfg.flat(), **dataclasses.asdict(cfg.build_method().options)}
    return json.loads(json.dumps(flat))


def config_defaults(method: str) -> dict:
    """Every shared field's and ``method``'s options' default values, as recorded in a resolved config."""
    from pdmd_lab.distill import DistillConfig, get_method

    shared = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
              for f in dataclasses.fields(DistillConfig) if f.name != "options"}
    return json.loads(json.dumps({**shared, **dataclasses.asdict(get_method(method).Options())}))


def same_config(recorded: dict | None, now: dict) -> bool:
    """Whether a line's recorded config is the row's resolved config now. A key the record lacks (a field
    added since) matches when the row now holds that field's default, which is how it ran then."""
    if recorded is None or any(recorded.get(k, k) != now.get(k, k) for k in recorded):
        return False
    extra = set(now) - set(recorded)
    if not extra:
        return True
    defaults = config_defaults(now["method"]) if "method" in now else {}
    return all(k in defaults and now[k] == defaults[k] for k in extra)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def current_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this file, or None (not a git checkout, no git)."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def run_one(row: str, seed: int, out: str, n: int, overrides: dict | None = None, threads: int = 1) -> dict:
    """Train (or sample) one row with one seed and score it. Runs in a worker process."""
    from pdmd_lab import zoo
    from pdmd_lab.recipes import get_recipe, student_config

    torch.set_num_threads(threads)
    t0 = time.time()
    config = resolved_config(row, seed, overrides)
    if "@" in row:  # teacher baseline: family/teacher@K
        model = zoo.load(row)
        family = model.dataset
        train_s = 0.0
    else:
        from pdmd_lab.distill import distill

        cfg = student_config(row, **{**(overrides or {}), "seed": seed})
        run_dir = Path(out) / "runs" / row / f"seed{seed}-{config_hash(config)}"
        model = distill(cfg, run_dir, progress=False, command=f"pdmd-lab study (row {row}, seed {seed})")
        family = get_recipe(row)["teacher"].split(":", 1)[1]
        # The run's own training time, resumed segments included (not this call's, which may only resume).
        train_s = float(json.loads((run_dir / "config.json").read_text()).get("wall_time_s", time.time() - t0))
    family = model.dataset or family
    scores = get_family(family).study_scores(family, model, seed=seed, n=n)  # the dataset's family scores it
    if scores is None:
        raise ValueError(f"the family of {family!r} does not score study runs")
    res = {"row": row, "seed": seed, "family": family, "nfe": int(model.nfe), "train_s": round(train_s, 1),
           **scores, "config": config, "commit": current_commit()}
    return res


def study_metrics(dataset: str) -> tuple[list[str], dict]:
    """The metric names a dataset's study rows report (its family's ``study_metrics``) and their directions
    (True: lower is better)."""
    fam = get_family(dataset)
    names = list(fam.study_metrics or ())
    if not names:
        raise ValueError(f"the {fam.name!r} family does not score study runs (dataset {dataset!r})")
    return names, {m: fam.lower_is_better(m) for m in names}


def prefit(row: str, seed: int, overrides: dict | None = None, threads: int = 1) -> None:
    """Fit (or find cached) the starting net a row's run will use, so parallel runs do not each refit it."""
    from pdmd_lab.distill import build_distiller
    from pdmd_lab.recipes import student_config

    torch.set_num_threads(threads)
    build_distiller(student_config(row, **{**(overrides or {}), "seed": seed}), None, progress=False)


def _init_key(row: str, seed: int, overrides: dict | None) -> tuple:
    from pdmd_lab.recipes import get_recipe

    r = {**get_recipe(row), **(overrides or {})}
    return r["teacher"], json.dumps(r.get("net", {}), sort_keys=True), r.get("init_iters", 2000), seed


# The study ---------------------------------------------------------------------------------------

def get_recipe_teacher(row: str) -> str:
    from pdmd_lab.recipes import get_recipe

    return get_recipe(row)["teacher"]


def expand_rows(patterns: list[str]) -> list[str]:
    """Recipe names matching the glob patterns, plus ``family/teacher@K`` baselines given as is."""
    from pdmd_lab.recipes import RECIPES

    rows = []
    for p in patterns:
        if "@" in p:
            rows.append(p)
            continue
        hits = [r for r in RECIPES if fnmatch.fnmatch(r, p)]
        if not hits:
            raise ValueError(f"no recipe matches {p!r}; `pdmd-lab recipes` lists them")
        rows += [h for h in hits if RECIPES[h]["kind"] == "student"]
    return list(dict.fromkeys(rows))


def parse_seeds(spec: str) -> list[int]:
    """``"0-4"`` or ``"0,2,5"``."""
    try:
        if "-" in spec:
            a, b = spec.split("-")
            return list(range(int(a), int(b) + 1))
        return [int(s) for s in spec.split(",") if s]
    except ValueError:
        raise ValueError(f"bad --seeds {spec!r}: use e.g. 0-4 or 0,1,2") from None


def read_runs(out: Path, *, latest: bool = False) -> list[dict]:
    """The lines of ``out/runs.jsonl``; with ``latest``, only the last line of each (row, seed)."""
    f = Path(out) / "runs.jsonl"
    if not f.exists():
        return []
    runs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if latest:
        last = {(r["row"], r["seed"]): i for i, r in enumerate(runs)}
        runs = [r for i, r in enumerate(runs) if last[(r["row"], r["seed"])] == i]
    return runs


def stale_runs(rows: list[str], seeds: list[int], out, overrides: dict | None = None) -> list[tuple[str, int]]:
    """The (row, seed) pairs whose last line's recorded config is missing or differs from the resolved one now."""
    last = {(r["row"], r["seed"]): r for r in read_runs(out, latest=True)}
    return [(row, s) for row in rows for s in seeds
            if (row, s) in last and not same_config(last[(row, s)].get("config"),
                                                    resolved_config(row, s, overrides))]


def run_study(rows: list[str], seeds: list[int], out, *, n: int = 2000, jobs: int = 1, overrides: dict | None = None,
              progress: bool = True) -> dict:
    """Run every (row, seed) not yet in ``out/runs.jsonl``; then write the tables and the figure.

    ``overrides`` (e.g. ``{"iters": 8}``) apply to every student recipe; they are recorded in the study's
    ``study.json``, and a study folder refuses to resume with other overrides."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"n": n, "overrides": overrides or {}}
    if (out / "study.json").exists() and json.loads((out / "study.json").read_text()) != meta:
        raise ValueError(f"{out} holds a study with other settings ({(out / 'study.json').read_text().strip()}); "
                         f"choose another --out")
    (out / "study.json").write_text(json.dumps(meta) + "\n")
    stale = set(stale_runs(rows, seeds, out, overrides))
    done = {(r["row"], r["seed"]) for r in read_runs(out)} - stale
    todo = [(r, s) for r in rows for s in seeds if (r, s) not in done]
    if stale and progress:
        print(f"{len(stale)} finished run(s) are run again: their recorded config differs from the row's now "
              f"(or predates config records): {', '.join(f'{r} seed {s}' for r, s in sorted(stale))}")
    bar = tqdm(total=len(todo), desc="study", disable=not progress)

    def record(res):
        with open(out / "runs.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        bar.update(1)
        bar.set_postfix(last=f"{res['row']} s{res['seed']}")

    if jobs <= 1:
        with heartbeat(bar, enabled=progress):  # a run takes minutes: the bar's clock moves every 10 s
            for r, s in todo:
                record(run_one(r, s, str(out), n, overrides))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex, heartbeat(bar, enabled=progress):
            fits = {}
            for r, s in todo:  # one starting-net fit per (teacher, net, seed), shared through the disk cache
                if "@" not in r and get_recipe_teacher(r).startswith("oracle:"):
                    fits.setdefault(_init_key(r, s, overrides), (r, s))
            for fut in as_completed([ex.submit(prefit, r, s, overrides) for r, s in fits.values()]):
                fut.result()
            futures = [ex.submit(run_one, r, s, str(out), n, overrides) for r, s in todo]
            for fut in as_completed(futures):
                record(fut.result())
    bar.close()
    return summarize(out, rows)


def summarize(out, rows: list[str] | None = None) -> dict:
    """Mean and 95% interval per (family, row, metric) from ``runs.jsonl``; writes csv, json, md and png."""
    out = Path(out)
    runs = read_runs(out, latest=True)
    if not runs:
        raise ValueError(f"{out} holds no finished runs")
    keys = sorted({k for r in runs for k in r})
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in runs])
    # The rows asked for first, then every other row of the folder, so a partial study keeps the others.
    order = list(dict.fromkeys([*(rows or []), *(r["row"] for r in runs)]))
    summary: dict = {}
    for row in order:
        rs = [r for r in runs if r["row"] == row]
        if not rs:
            continue
        fam = rs[0]["family"]
        entry = {"n_seeds": len(rs), "nfe": rs[0]["nfe"], "train_s": mean_ci([r["train_s"] for r in rs])[0]}
        for m in study_metrics(fam)[0]:
            entry[m] = mean_ci([r.get(m) for r in rs])
        if "teacher_modes_missed" in rs[0]:
            entry["teacher_modes"] = rs[0].get("teacher_modes")
            entry["seeds_missing_modes"] = sum(r["teacher_modes_missed"] > 0 for r in rs)
        summary.setdefault(fam, {})[row] = entry
    for fam, entries in summary.items():  # each row minus the family's Phased DMD 4s4p, with a Welch interval
        ref = [r for r in entries if r.split("/")[-1] == REFERENCE_ROW]
        if not ref:
            continue
        ref_runs = [r for r in runs if r["row"] == ref[0]]
        for row, entry in entries.items():
            rs = [r for r in runs if r["row"] == row]
            entry[f"minus_{REFERENCE_ROW}"] = {m: difference_ci([r.get(m) for r in rs], [r.get(m) for r in ref_runs])
                                               for m in study_metrics(fam)[0]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    study_figure(summary).savefig(out / "summary.png", dpi=110, bbox_inches="tight")
    return summary


def study_figure(summary: dict, metric_names: list[str] | None = None):
    """One panel per (family, metric): the mean over seeds per row with its 95% interval as error bars
    (``metric_names``: default the first four of the family's study metrics)."""
    from matplotlib.figure import Figure

    fams = list(summary)
    metric_names = metric_names or study_metrics(fams[0])[0][:4]
    lower = {m: d for fam in fams for m, d in study_metrics(fam)[1].items()}
    fig = Figure(figsize=(3.6 * len(metric_names), 0.35 * max(len(r) for r in summary.values()) * len(fams) + 1.5))
    axes = fig.subplots(len(fams), len(metric_names), squeeze=False)
    for i, fam in enumerate(fams):
        rows = summary[fam]
        names = [r.split("/", 2)[-1] if r.startswith("study/") else r for r in rows]
        y = np.arange(len(rows))
        for j, m in enumerate(metric_names):
            ax = axes[i][j]
            means = [e[m][0] for e in rows.values()]
            errs = [0 if math.isnan(e[m][1]) else e[m][1] for e in rows.values()]
            colors = ["0.55" if "@" in r else "C0" if "phased-dmd-4s" in r else "C2" if "phased-dmd-" in r else "C1"
                      for r in rows]  # teacher grey, Phased DMD blue, its schedule/range variants green
            ax.barh(y, means, xerr=errs, color=colors, capsize=3)
            ax.set_yticks(y, names if j == 0 else [""] * len(y), fontsize=7)
            ax.invert_yaxis()
            better = {True: "lower is better", False: "higher is better"}.get(lower.get(m), "closer to the teacher")
            ax.set_title(f"{fam}: {m} ({better})", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def _cell(v) -> str:
    mean, half = v
    if math.isnan(mean):
        return "–"
    fmt = (lambda x: f"{x:.3g}") if abs(mean) < 100 else (lambda x: f"{x:.0f}")
    return fmt(mean) if math.isnan(half) else f"{fmt(mean)} ± {fmt(half)}"


def summary_markdown(summary: dict) -> str:
    lines = []
    for fam, rows in summary.items():
        names = study_metrics(fam)[0]
        missing = "teacher_modes_missed" in names  # the points family counts missed teacher modes per seed
        lines += [f"### {fam}: mean ± 95% CI over seeds", "",
                  "| row | NFE | seeds | " + " | ".join(names)
                  + (" | seeds missing a teacher mode |" if missing else " |"),
                  "|---|---|---|" + "---|" * (len(names) + missing)]
        for row, e in rows.items():
            name = row.split("/", 2)[-1] if row.startswith("study/") else row
            lines.append(f"| {name} | {e['nfe']} | {e['n_seeds']} | " + " | ".join(_cell(e[m]) for m in names)
                         + (f" | {e['seeds_missing_modes']}/{e['n_seeds']} (of {e['teacher_modes']} cells) |"
                            if missing else " |"))
        lines.append("")
        key = f"minus_{REFERENCE_ROW}"
        if any(key in e for e in rows.values()):
            lines += [f"{fam}: each row minus {REFERENCE_ROW} (difference of means, Welch 95% CI; an interval "
                      "that excludes 0 is a difference)", "", "| row | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for row, e in rows.items():
                if key in e and row.split("/")[-1] != REFERENCE_ROW:
                    name = row.split("/", 2)[-1] if row.startswith("study/") else row
                    lines.append(f"| {name} | " + " | ".join(_cell(tuple(e[key][m])) for m in names) + " |")
            lines.append("")
    lines.append("energy distance, mode KL, missed teacher modes, off-mode share: lower is better; recall and "
                 "spread (1 = the teacher's within-mode spread): closer to 1 is better.")
    return "\n".join(lines) + "\n"
