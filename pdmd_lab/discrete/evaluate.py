"""``pdmd-lab evaluate`` for masked-diffusion models: D-MMD students next to their teacher at k, 4k and full steps.

Every model samples the same labels (classes cycling) with the same seeds, through the masked ancestral
sampler, which also records the mean entropy of the categoricals it draws from (the **mean output
entropy**: near 0 when the sampler commits, ``log V`` when it draws at random).

* ``ring-mix-tokens``: exact TV and ``KL(histogram || P)`` of the joint against the true joint, per class
  then weighted; ``floor`` is the TV that sampling noise alone gives at the same sample size.
* ``mnist-binary``: class accuracy of the shipped MNIST classifier, Frechet distance on its features to the
  binarised training split, per-class Vendi and Hamming diversity, classifier entropy; ``floor`` is the
  binarised held-out split scored the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pdmd_lab import io
from pdmd_lab.data import get_dataset
from pdmd_lab.discrete.masking import masked_initial, sample_masked, step_net
from pdmd_lab.discrete.metrics import image_metrics, joint_distances, tv_noise_floor

FULL_STEPS = 100  # the teacher's "full" step count in the comparison
CLASSIFIER = Path(__file__).resolve().parents[2] / "assets" / "models" / "mnist" / "classifier"


def masked_spec(name: str, assets: Path | None = None) -> str | None:
    """The masked-teacher spec a model name stands for, or None: ``oracle:<token dataset>``,
    ``<token dataset>/teacher`` of a dataset with an oracle, or a folder (or zoo name, with or without
    ``zoo:``) of kind masked-teacher."""
    from pdmd_lab.discrete.teacher import KIND, ORACLES

    name = str(name)
    if name.startswith("oracle:"):
        return name if name.split(":", 1)[1] in ORACLES else None
    if name.startswith("zoo:"):  # the shipped teacher a student names as its teacher
        name = name.split(":", 1)[1]
    family, _, rest = name.partition("/")
    if rest == "teacher" and family in ORACLES:
        return f"oracle:{family}"
    for path in (Path(name), (assets / name) if assets is not None else None):
        if path is not None and (path / "config.json").is_file():
            try:
                return str(path) if io.read_config(path).get("kind") == KIND else None
            except ValueError:
                return None
    return None


def load_model(name: str, *, steps: int | None = None):
    """A masked teacher (``spec@steps``) as a :class:`MaskedTeacherSampler`, or a saved student."""
    from pdmd_lab import zoo
    from pdmd_lab.discrete.method import load_masked_sampler

    base, at = zoo.parse_name(name)
    spec = masked_spec(base, zoo.ASSETS)
    if spec is not None:
        return load_masked_sampler(spec, steps=steps or at or FULL_STEPS, name=base)
    return zoo.load(name)


def is_discrete(name: str) -> bool:
    """Whether ``name`` is a masked-diffusion model (teacher spec, or a student of a token dataset)."""
    from pdmd_lab import zoo

    base, _ = zoo.parse_name(name)
    if masked_spec(base, zoo.ASSETS) is not None:
        return True
    path = Path(base) if Path(base).is_dir() else zoo.ASSETS / base
    try:
        cfg = io.read_config(path)
    except ValueError:
        return False
    ds = cfg.get("dataset", "")
    return cfg.get("kind") == "student" and ds in _token_datasets()


def _token_datasets() -> set[str]:
    from pdmd_lab.data import DATASETS

    return {n for n, d in DATASETS.items() if d.kind == "tokens"}


@torch.no_grad()
def sample_with_entropy(model, labels: torch.Tensor, seed: int, batch_size: int = 500):
    """Samples of ``model`` for ``labels`` (seeded per batch) and the mean output entropy (nats)."""
    out, total, count = [], 0.0, 0
    vocab = step_net(model, 1.0).vocab_size
    device = next(step_net(model, 1.0).parameters(), torch.zeros(())).device

    def keep(d):
        nonlocal total, count
        revealed = (d["z"] == vocab) & (d["x_next"] != vocab)
        p = d["probs"]
        total += float((-(p * torch.log(p.clamp_min(1e-30))).sum(-1))[revealed].sum())
        count += int(revealed.sum())

    for b, i in enumerate(range(0, len(labels), batch_size)):
        lab = labels[i:i + batch_size].to(device)
        z = masked_initial(model.shape, len(lab), device=device)
        g = torch.Generator().manual_seed(int(seed) * 7919 + b)
        out.append(sample_masked(model, z, model.step_times, class_labels=lab, callback=keep, generator=g).cpu())
    return torch.cat(out), total / max(count, 1)


def evaluate_discrete(names: list[str], n: int = 2000, *, seed: int = 0, teacher: str | None = None,
                      out: Path | None = None, progress: bool = True, device="cpu") -> dict:
    """Score masked-diffusion models of one token dataset side by side (see the module docstring).

    The teacher (``teacher``, else the one the first student was distilled from) is added at each
    student's ``k``, at ``4k`` and at :data:`FULL_STEPS`. Returns ``{"family", "n", "floor", "rows"}``.
    """
    names = [x for x in names if x]
    if not names:
        raise ValueError("names is empty: give at least one model name")
    if n < 8:
        raise ValueError(f"n must be >= 8, got {n}")
    models = {name: load_model(name) for name in names}
    families = {m.dataset for m in models.values()}
    if len(families) != 1 or not families <= _token_datasets():
        raise ValueError(f"models must all sample one token dataset, got {', '.join(sorted(map(str, families)))}")
    family = families.pop()
    ds = get_dataset(family)
    students = [m for m in models.values() if "teacher" in m.meta and not hasattr(m, "with_steps")]
    spec = teacher or (students[0].meta["teacher"] if students else None)
    if spec is not None:
        base = load_model(spec, steps=FULL_STEPS)
        for k in sorted({s.num_steps for s in students} | {4 * s.num_steps for s in students} | {FULL_STEPS}):
            models.setdefault(f"{spec}@{k}", base.with_steps(k))
    labels = torch.arange(n) % ds.num_classes
    rows = {}
    classifier = None
    if len(ds.shape) > 1:
        from pdmd_lab.embed import load_classifier

        classifier = load_classifier(CLASSIFIER, device)
        reference = ds._sampler.train()[0]
    for name, model in tqdm(models.items(), desc="evaluate", disable=not progress):
        model.to(device)
        t0 = time.perf_counter()
        x, entropy = sample_with_entropy(model, labels, seed)
        row = {"describe": model.describe(), "nfe": int(model.nfe), "steps": int(model.num_steps),
               "seconds": round(time.perf_counter() - t0, 2), "output_entropy": entropy}
        if classifier is None:
            from pdmd_lab.discrete.teacher import ORACLES

            d = joint_distances(x, labels, ORACLES[family](ds.vocab_size))
            row.update({"tv": d["tv"], "kl": d["kl"]})
        else:
            row.update(image_metrics(x, labels, classifier, reference))
        rows[name] = row
    if classifier is None:
        from pdmd_lab.discrete.teacher import ORACLES

        joint = ORACLES[family](ds.vocab_size)
        floor = {"tv": sum(tv_noise_floor(joint.table(c), int((labels == c).sum())) for c in range(ds.num_classes))
                 / ds.num_classes}
    else:
        held, held_y = ds._sampler.heldout()
        floor = {k: v for k, v in image_metrics(held, held_y, classifier, reference).items()}
        floor["n"] = len(held)
    result = {"family": family, "n": n, "seed": seed, "floor": floor, "rows": rows}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "metrics.json", result)
        (out / "metrics.md").write_text(markdown_table(result) + "\n")
    return result


def markdown_table(result: dict) -> str:
    """The result of :func:`evaluate_discrete` as a markdown table (one row per model, then the floor)."""
    rows = result["rows"]
    keys = [k for k in ("tv", "kl", "accuracy", "frechet", "vendi_per_class", "hamming_per_class",
                        "classifier_entropy", "output_entropy", "nfe") if any(k in r for r in rows.values())]
    lines = [f"{result['family']}, n = {result['n']}, seed {result['seed']}", "",
             "| model | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
    lines.append("| floor (" + ("sampling noise" if "tv" in result["floor"] else "held-out data") + ") | "
                 + " | ".join(fmt(result["floor"].get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2)
