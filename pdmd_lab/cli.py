"""``pdmd-lab``: the command line. Arguments map onto the components' dataclass configs.

Bad input (ValueError) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def _command_line() -> str:
    return "pdmd-lab " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_train_teacher(a) -> None:
    from pdmd_lab.teacher import TeacherConfig, train_teacher

    defaults = {"batch_size": 256, "lr": 1e-3} if a.data not in ("mnist", "digits") else {"batch_size": 64, "lr": 1e-3}
    cfg = TeacherConfig(data=a.data, iters=a.iters, seed=a.seed,
                        batch_size=a.batch_size or defaults["batch_size"], lr=a.lr or defaults["lr"],
                        checkpoint_every=a.checkpoint_every)
    out = train_teacher(cfg, a.out, resume=not a.restart, command=_command_line())
    print(f"teacher written to {out}")


def cmd_sample(a) -> None:
    import torch

    from pdmd_lab import viz, zoo

    model = zoo.load(a.model)
    n = a.n
    labels = torch.arange(n) % model.num_classes if a.label is None else torch.full((n,), a.label)
    x = model.sample(labels, seed=a.seed, steps=a.steps, cfg=a.cfg)
    fig = viz.samples_figure(x, labels, dataset=model.dataset, title=f"{a.model}  ({model.describe(a.steps, a.cfg)})")
    fig.savefig(a.out, dpi=120, bbox_inches="tight")
    print(f"wrote {a.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdmd-lab", description="Few-step distillation kit: Phased DMD and baselines.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("train-teacher", help="train a flow-matching teacher (accelerate; resumable)")
    s.add_argument("--data", required=True, help="dataset name (see pdmd_lab.data.DATASETS)")
    s.add_argument("--iters", type=int, default=4000)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint-every", type=int, default=500)
    s.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_train_teacher)

    s = sub.add_parser("sample", help="sample a teacher or student and write a grid / scatter figure")
    s.add_argument("--model", required=True, help="folder, zoo name, or oracle:<dataset>")
    s.add_argument("--steps", type=int, default=None, help="Euler steps (teachers; students use their own)")
    s.add_argument("--cfg", type=float, default=None, help="CFG scale (teachers; students have it baked in)")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--label", type=int, default=None, help="one class for all samples (default: cycle classes)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png")
    s.set_defaults(func=cmd_sample)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        a.func(a)
    except ValueError as e:
        print(f"pdmd-lab {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pdmd-lab {a.command}: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


