"""``pdmd-lab``: the command line. Arguments map onto the components' dataclass configs.

Bad input (ValueError) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from pdmd_lab import io, safety


def _command_line() -> str:
    return "pdmd-lab " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_train_teacher(a) -> None:
    from pdmd_lab.families import get_family

    family = get_family(a.data)  # the dataset's family trains it
    cfg = family.teacher_config(a.data, iters=a.iters, seed=a.seed, batch_size=a.batch_size, lr=a.lr,
                                checkpoint_every=a.checkpoint_every)
    out = safety.run_folder(a.out, f"{family.teacher_kind}-train-state", restart=a.restart, overwrite=a.overwrite)
    out = family.train_teacher(cfg, out, resume=not a.restart, command=_command_line())
    print(f"teacher written to {out}")


def cmd_sample(a) -> None:
    import torch

    from pdmd_lab import zoo
    from pdmd_lab.families import get_family

    safety.output_file(a.out, overwrite=a.overwrite, suffixes=(*FIGURE_SUFFIXES, ".gif", ".safetensors"))
    model = zoo.load(a.model, steps=a.steps, cfg=a.cfg, strict=True)
    tensors = Path(a.out).suffix.lower() == ".safetensors"  # the samples themselves (latents, points, images)
    decode = zoo.samples_latents(model) and not tensors  # latents of a diffusers model, decoded by its local VAE
    if decode:
        from pdmd_lab.backbones.pipelines import decoder_folder, write_decoded

        vae_folder = decoder_folder(model, a.vae or None, a.out)  # checked before sampling
    elif a.vae or Path(a.out).suffix.lower() == ".gif":
        raise ValueError("--vae and .gif outputs apply to models of diffusers backbones (decoded latents)")
    if a.label is not None and not 0 <= a.label < model.num_classes:
        raise ValueError(f"--label must be in [0, {model.num_classes - 1}], got {a.label}")
    labels = torch.arange(a.n) % model.num_classes if a.label is None else torch.full((a.n,), a.label)
    from pdmd_lab.progress import heartbeat

    with heartbeat(f"sampling {a.model}"):  # a teacher at 50 steps, or a video backbone, takes a while
        x = model.sample(labels, seed=a.seed)
    if tensors:
        io.save_weights_file(safety.make_parent(a.out), {"samples": x, "labels": labels})
        print(f"wrote {a.out} (samples {tuple(x.shape)}, labels)")
        return
    if decode:
        write_decoded(model, x, safety.make_parent(a.out), vae=vae_folder,
                      title=f"{Path(a.model).name}: {model.describe()}, NFE {model.nfe}")
        print(f"wrote {a.out} (decoded with the VAE of {vae_folder})")
        return
    fig = get_family(model).samples_figure(x, labels, dataset=model.dataset,
                                           title=f"{a.model}: {model.describe()}, NFE {model.nfe}")
    fig.savefig(safety.make_parent(a.out), dpi=120, bbox_inches="tight")
    print(f"wrote {a.out}")


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def cmd_distill(a) -> None:
    from pdmd_lab.distill import DistillConfig, build_distiller
    from pdmd_lab.recipes import get_recipe

    flat: dict = {}
    if a.resume and not a.recipe:  # the run's recorded settings; flags given must agree (checked on resume)
        from pdmd_lab.distill.trainer import recorded_flat

        flat = recorded_flat(safety.output_folder(a.out, resume=True, run_kind="distill-train-state"))
    elif a.recipe:
        flat = get_recipe(a.recipe)
        if flat.pop("kind") != "student":
            raise ValueError(f"recipe {a.recipe!r} does not build a student; use train-teacher / train-classifier")
    elif not (a.teacher and a.method):
        raise ValueError("give --recipe NAME, or --teacher and --method")
    else:  # a teacher without a recipe: the training sizes of its family's recipe, not the ring-mix defaults
        from pdmd_lab.recipes import family_defaults

        start, flat = family_defaults(a.teacher, a.method)
        if start:
            print(f"pdmd-lab distill: sizes from recipe {start} (" + ", ".join(f"{k}={v}" for k, v in flat.items()
                  if k != "net") + "); flags given override them")
    fields = _DISTILL_FIELDS | _option_fields()
    given = {k: v for k, v in vars(a).items() if k in fields and v is not None}
    if a.recipe and "method" in given and given["method"] != flat["method"]:
        raise ValueError(f"recipe {a.recipe!r} is method {flat['method']!r}; --method {given['method']} contradicts it")
    flat.update(given)
    from pdmd_lab.backbones.distill import apply_cli

    flat.update(apply_cli(vars(a), flat))  # diffusers:PATH teachers: --prompts, LoRA... into `net`
    flat.setdefault("steps", 1 if flat.get("method") == "dmd" else 4)
    cfg = DistillConfig.from_flat(**flat)
    out = safety.output_folder(a.out, resume=a.resume, run_kind="distill-train-state", overwrite=a.overwrite,
                               resume_hint="--resume")  # new, empty, or the run being resumed
    d = build_distiller(cfg, out, command=_command_line())
    d.train()
    if d.accelerator.is_main_process:
        print(f"student written to {out}")


def cmd_recipes(a) -> None:
    from pdmd_lab.recipes import RECIPES, describe

    names = [name for name in RECIPES if a.filter is None or a.filter in name]
    if not names:
        raise ValueError(f"no recipe name contains {a.filter!r}; `pdmd-lab recipes` lists them all")
    for name in names:
        print(describe(name))


_DISTILL_FIELDS = {"teacher", "method", "steps", "shift", "cfg", "iters", "batch_size", "lr_generator", "lr_fake",
                   "fake_updates_per_generator_update", "grad_clip", "seed", "checkpoint_every", "init_iters",
                   "fused_optimizer"}


def _methods() -> dict:
    from pdmd_lab.distill import METHODS
    from pdmd_lab.distill.methods import load_plugins

    load_plugins()
    return METHODS


def _option_fields() -> set[str]:
    return {f.name for m in _methods().values() for f in dataclasses.fields(m.Options)}


def _parse_type(field):
    kind = str(field.type)
    if "bool" in kind:
        return lambda v: {"true": True, "1": True, "false": False, "0": False}[v.lower()]
    if "float" in kind:
        return float
    if "int" in kind:
        return int
    return str


def _add_method_options(parser) -> None:
    """One flag per method option (``--dp-lambda``...), grouped by the methods that have it."""
    owners: dict[str, list] = {}
    for m in _methods().values():
        for f in dataclasses.fields(m.Options):
            owners.setdefault(f.name, []).append((m.name, f))
    groups: dict[tuple, list[str]] = {}
    for opt, ms in owners.items():
        groups.setdefault(tuple(n for n, _ in ms), []).append(opt)
    for names, opts in groups.items():
        g = parser.add_argument_group(f"options of {', '.join(names)}")
        for opt in opts:
            defaults = {n: f.default for n, f in owners[opt]}
            shown = (next(iter(defaults.values())) if len(set(map(repr, defaults.values()))) == 1
                     else ", ".join(f"{n} {d}" for n, d in defaults.items()))
            g.add_argument("--" + opt.replace("_", "-"), dest=opt, type=_parse_type(owners[opt][0][1]), default=None,
                           help=f"default: {shown}")


def cmd_study(a) -> None:
    from pdmd_lab import study

    if a.summarize_only:
        res = study.summarize(Path(a.out))
    else:
        rows = study.expand_rows([r for r in a.rows.split(",") if r])
        overrides = {}
        for item in a.set or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {item!r}")
            try:
                overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
            except ValueError:
                overrides[key] = value  # a string; the recipe's field types check it below
        from pdmd_lab.recipes import student_config

        for row in rows:  # every --set applies to every student row: checked before any run
            if "@" not in row:
                student_config(row, **overrides)
        if not (Path(a.out) / "study.json").is_file():  # new, empty, or a study being continued
            safety.output_folder(a.out)
        res = study.run_study(rows, study.parse_seeds(a.seeds), Path(a.out), n=a.n, jobs=a.jobs, overrides=overrides)
    print(study.summary_markdown(res))
    print(f"wrote {a.out}/runs.jsonl, runs.csv, summary.json, summary.md, summary.png")


def cmd_train_classifier(a) -> None:
    from pdmd_lab.embed import ClassifierConfig, train_classifier

    cfg = ClassifierConfig(data=a.data, iters=a.iters, seed=a.seed)
    out = train_classifier(cfg, safety.output_folder(a.out, overwrite=a.overwrite))
    print(f"classifier written to {out} (held-out accuracy {io.read_config(out)['heldout_accuracy']:.4f})")


def cmd_build_zoo(a) -> None:
    from pdmd_lab import zoo

    if a.only is not None and not any(a.only in e.name for e in zoo.ENTRIES):
        raise ValueError(f"--only {a.only!r} matches no zoo entry; `pdmd-lab recipes` lists them")
    print(f"build-zoo writes the shipped models into {zoo.ASSETS} (on purpose: that is the zoo) and trains them "
          f"in {zoo.RUNS}/")
    built = zoo.build_zoo(only=a.only)
    print("built: " + (", ".join(built) or "nothing (every model is already built and valid)"))


def cmd_list(a) -> None:
    from pdmd_lab import zoo

    print("\n".join(zoo.list_models()))


def cmd_figures(a) -> None:
    from pdmd_lab import zoo
    from pdmd_lab.families import get_family

    out, family = Path(a.out), get_family(a.family)
    safety.check_label(a.label, family.num_classes(a.family))
    name = f"per_exit_{a.family}.json" if a.per_exit else family.default_figure_name(a.family, label=a.label)
    safety.output_files(out, [name], overwrite=a.overwrite)  # before any sampling
    out.mkdir(parents=True, exist_ok=True)
    if a.per_exit:
        _per_exit_figures(a, out)
        return
    fig, name = family.default_figure(a.family, shipped=zoo.list_models(), load=zoo.load, seed=a.seed,
                                      label=a.label, n=a.n, n_points=a.n_points)
    path = out / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def _per_exit_figures(a, out: Path) -> None:
    """``figures --per-exit``: each exit step's (or expert's) output distribution, per student."""
    from pdmd_lab import collapse, zoo

    shipped = [n for n in zoo.list_models()
               if n.startswith(a.family + "/") and n.split("/")[1] not in ("teacher", "classifier")]
    models = [m for m in (a.models or "").split(",") if m] or [n for n in shipped if zoo.load(n).num_steps > 1]
    if not models:
        raise ValueError(f"no multi-step students to show for family {a.family!r}")
    safety.output_files(out, [f"per_exit_{m.replace('/', '_')}.png" for m in models], overwrite=a.overwrite)
    table = {}
    for name in models:
        student = zoo.load(name)
        if not hasattr(student, "expert_index") or student.num_steps < 2:
            raise ValueError(f"{name!r} is not a multi-step student: per-exit views need one")
        fig, rows = collapse.per_exit_figure(student, student.dataset, n=a.n_points, seed=a.seed, title=name)
        path = out / f"per_exit_{name.replace('/', '_')}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        table[name] = rows
        print(f"wrote {path}")
        for r in rows:
            print(f"  exit {r['exit']} (expert {r['expert']}): own modes {r['own_share']:.2f}, shared "
                  f"{r['shared_share']:.2f}, modes {r['modes_covered']}/{r['modes_expected']}, KL {r['mode_kl']:.3f}")
    io.write_json(out / f"per_exit_{a.family}.json", table)


def cmd_evaluate(a) -> None:
    from pdmd_lab import evaluate

    names = [m for m in a.models.split(",") if m]
    from pdmd_lab import latents

    backbone = any(latents.is_latent_model(m) for m in names)  # students of diffusers models: their latents
    if a.out is not None:
        safety.output_files(a.out, ["metrics.json", "metrics.md", *(["latents.safetensors"] * backbone)],
                            overwrite=a.overwrite)
    if backbone:
        print(latents.markdown_table(latents.evaluate_latents(names, n=a.n, seed=a.seed, out=a.out)))
        return
    res = evaluate.evaluate_models(names, n=a.n, seed=a.seed, out=Path(a.out) if a.out else None)
    print(evaluate.markdown_table(res))  # the table of the dataset's family


def cmd_bench(a) -> None:
    from pdmd_lab import bench

    if a.out is not None:
        safety.output_files(a.out, ["bench.json", "bench.md"], overwrite=a.overwrite)
    res = bench.bench(quick=a.quick, out=Path(a.out) if a.out else None)
    print(bench.bench_markdown(res))


def cmd_diversity(a) -> None:
    from pdmd_lab import diversity

    res = diversity.run_diversity(diversity.config_from_cli(vars(a)), a.out, progress=not a.quiet)
    print(diversity.markdown_table(res))
    sheets = f" and {len(res['sheets'])} contact sheet(s) in sheets/" if res["sheets"] else ""
    print(f"wrote {a.out}/diversity.json, diversity.csv, diversity.md{sheets}")


def default_threads() -> int:
    env = safety.env_threads()  # $PDMD_THREADS, checked
    return env if env is not None else max(1, min(4, (os.cpu_count() or 2) // 2))


def set_threads(n: int | None) -> None:
    import torch

    n = default_threads() if n is None else n
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (``pdmd-lab distill: error: ...``) and exit code 2, no usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pdmd-lab", description="Few-step distillation kit: Phased DMD and baselines.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: half the cores, at most 4; $PDMD_THREADS overrides). "
                        "Small nets on a shared machine run many times slower with more threads than cores free")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("train-teacher", help="train a flow-matching teacher (accelerate; resumable)")
    s.add_argument("--data", required=True, help="dataset name (see pdmd_lab.data.DATASETS)")
    s.add_argument("--iters", type=int, default=4000)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint-every", type=int, default=500)
    s.add_argument("--restart", action="store_true", help="start the teacher run in --out again (only a folder "
                   "this kit wrote)")
    s.add_argument("--overwrite", action="store_true", help="replace the model folder in --out (only a folder "
                   "this kit wrote)")
    s.add_argument("--out", required=True, help="a new or empty folder, or a teacher run to continue")
    s.set_defaults(func=cmd_train_teacher)

    s = sub.add_parser("sample", help="sample a teacher or student and write a grid / scatter figure")
    s.add_argument("--model", required=True, help="folder, zoo name, or oracle:<dataset>")
    s.add_argument("--steps", type=int, default=None, help="Euler steps (teachers; students use their own)")
    s.add_argument("--cfg", type=float, default=None, help="CFG scale (teachers; students have it baked in)")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--label", type=int, default=None, help="one class for all samples (default: cycle classes)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/samples.png", help="figure file (.png, .pdf, .svg, .jpg; its folder "
                   "is created; an existing file is kept unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--vae", default="", help="students of diffusers models: the pipeline folder whose vae/ decodes "
                   "the latents (default: the student's base folder); .gif writes video as an animation")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("distill", help="distill a teacher into a few-step student (resumable)")
    s.add_argument("--recipe", default=None, help="a named recipe (`pdmd-lab recipes`): the shipped settings; "
                   "flags given as well override it")
    s.add_argument("--teacher", default=None, help="oracle:<dataset>, a teacher folder, or a registered spec")
    s.add_argument("--method", default=None, choices=list(_methods()), help="the distillation method")
    s.add_argument("--steps", type=int, default=None, help="student steps (default 1 for dmd, else 4)")
    s.add_argument("--shift", type=float, default=None, help="time shift of the student's step times")
    s.add_argument("--cfg", type=float, default=None, help="CFG scale of the real score (1 = none)")
    s.add_argument("--iters", type=int, default=None, help="generator updates in total")
    s.add_argument("--batch-size", type=int, default=None, help="global batch (split over processes)")
    s.add_argument("--lr-generator", "--lr", dest="lr_generator", type=float, default=None)
    s.add_argument("--lr-fake", type=float, default=None, help="learning rate of the critic")
    s.add_argument("--fake-updates", dest="fake_updates_per_generator_update", type=int, default=None,
                   help="critic updates per generator update")
    s.add_argument("--grad-clip", type=float, default=None)
    s.add_argument("--fused-optimizer", action="store_const", const=True, default=None,
                   help="AdamW's fused kernel: faster steps on a CPU, weights equal to the default's only to float "
                        "rounding (the shipped models were trained without it)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--checkpoint-every", type=int, default=None)
    s.add_argument("--init-iters", type=int, default=None, help="oracle teachers: iterations of the starting fit")
    _add_method_options(s)
    from pdmd_lab.backbones.distill import add_cli_arguments

    add_cli_arguments(s)
    s.add_argument("--resume", action="store_true", help="continue the run in --out (a larger --iters extends "
                   "a finished run of a method without phases)")
    s.add_argument("--overwrite", action="store_true", help="replace the run or model folder in --out (only a "
                   "folder this kit wrote)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_distill)

    s = sub.add_parser("study", help="grid of recipes x seeds: metrics per run, means with 95%% intervals (resumable)")
    s.add_argument("--rows", default="study/ring-mix/*,ring-mix/teacher@2,ring-mix/teacher@4,ring-mix/teacher@50",
                   help="comma-separated recipe names or globs, and family/teacher@K baselines")
    s.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1,2")
    s.add_argument("--n", type=int, default=2000, help="samples per run")
    s.add_argument("--jobs", type=int, default=1, help="parallel worker processes (1 thread each)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field for every "
                   "student row (e.g. --set iters=20); recorded in study.json")
    s.add_argument("--summarize-only", action="store_true", help="only rebuild the tables from runs.jsonl")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("recipes", help="list the named recipes every shipped model is built from")
    s.add_argument("filter", nargs="?", default=None, help="only names containing this")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("train-classifier", help="train the CNN whose features measure diversity")
    s.add_argument("--data", default="mnist")
    s.add_argument("--iters", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace the classifier folder in --out (only a "
                   "folder this kit wrote)")
    s.add_argument("--out", required=True, help="a new or empty folder")
    s.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("build-zoo", help="rebuild the shipped models in assets/models (resumable)")
    s.add_argument("--only", default=None, help="build only the entries whose name contains this")
    s.set_defaults(func=cmd_build_zoo)

    s = sub.add_parser("list", help="list the shipped models")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("evaluate", help="sample models with the same seeds and measure quality and diversity")
    s.add_argument("--models", required=True, help="comma-separated zoo names or folders (one family)")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="folder for metrics.json and metrics.md (kept unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace metrics.json and metrics.md in --out")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("figures", help="comparison figure of the shipped models of a family")
    s.add_argument("--family", default="mnist")
    s.add_argument("--label", type=int, default=3, help="class of the image grid")
    s.add_argument("--n", type=int, default=8, help="samples per row (images)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/figures", help="folder for the figures (created; existing figures "
                   "are kept unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace figures of the same name in --out")
    s.add_argument("--per-exit", action="store_true", help="per exit step / expert: where collapse comes from")
    s.add_argument("--models", default=None, help="--per-exit: comma-separated students (default: the family's)")
    s.add_argument("--n-points", type=int, default=2000, help="--per-exit and the two-token toy: samples per panel")
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("bench", help="sampling speed and training memory, measured in one process")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--out", default=None, help="folder for bench.json and bench.md (kept unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace bench.json and bench.md in --out")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("diversity", help="the Phased DMD paper's diversity (and video motion) protocol: "
                       "same noise per seed for every model, decoded, embedded with a local feature model")
    from pdmd_lab.diversity import add_cli_arguments as add_diversity_arguments

    add_diversity_arguments(s)
    s.set_defaults(func=cmd_diversity)
    return p


def main(argv=None) -> int:
    try:  # environment variables (PDMD_PLUGINS is read while building the parser) as one line, exit 2
        safety.check_environment()
        parser = build_parser()
    except ValueError as e:
        print(f"pdmd-lab: error: {e}", file=sys.stderr)
        return 2
    a = parser.parse_args(argv)
    try:
        safety.check_args(a)  # every number finite and in range, before any work
        set_threads(a.threads)
        a.func(a)
    except ValueError as e:
        print(f"pdmd-lab {a.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. a non-finite loss: training stopped, last checkpoint intact
        print(f"pdmd-lab {a.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a checkpoint is named only if there is one
        state = Path(str(getattr(a, "out", "") or "")) / "train_state"
        where = f"; the last checkpoint in {a.out} is intact" if getattr(a, "out", None) and state.is_dir() else ""
        print(f"pdmd-lab {a.command}: interrupted{where}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


