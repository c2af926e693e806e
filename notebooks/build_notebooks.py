"""Write the teaching notebooks of ``notebooks/`` from cell lists (nbformat).

Run ``python notebooks/build_notebooks.py`` to (re)write them without outputs, then execute them
in place (``jupyter nbconvert --to notebook --execute --inplace notebooks/NN_*.ipynb``) so the
committed copies carry their figures. Cells are ``("md", text)`` or ``("code", source)``;
``tests/test_notebooks.py`` checks that the committed notebooks hold exactly these cells.

Interactive controls (ipywidgets ``interact``) always come after one plain call of the same
function with the default values: a static viewer (GitHub, nbviewer without a kernel, the tests)
shows that figure, and Jupyter adds the live controls under it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

IMPORTS = """%matplotlib inline
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display
from ipywidgets import interact, widgets

import pdmd_lab
from pdmd_lab import data, embed, flow, metrics, sampling, viz, zoo
from pdmd_lab.data import get_dataset

FAST = os.environ.get("PDMD_FAST") == "1"  # tests shrink live training; committed notebooks are full runs
if os.environ.get("PDMD_THREADS"):  # the tests run kernels single-threaded, so a busy machine stays usable
    torch.set_num_threads(int(os.environ["PDMD_THREADS"]))
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 90"""

MD_TABLE_HELPER = """def markdown_table(rows: dict, columns: list, fmt: str = "{:.3g}") -> str:
    \"\"\"``rows[name][column]`` as a markdown table (pandas is not a dependency).\"\"\"
    def cell(v):
        return fmt.format(v) if isinstance(v, float) else str(v)
    head = "| method | " + " | ".join(columns) + " |\\n|---|" + "---|" * len(columns) + "\\n"
    return head + "\\n".join("| " + name + " | " + " | ".join(cell(r.get(c, "")) for c in columns) + " |"
                             for name, r in rows.items())"""

# ---------------------------------------------------------------------------------------------
NB01 = [
    ("md", """# 01 · Flow matching, SNR and the subintervals of Phased DMD

This notebook walks through the conventions every other part of `pdmd_lab` uses
(`docs/conventions.md` states each formula once, with the function that implements it):

* the **noise path** of rectified flow, `x_t = (1 - t) x0 + t eps`, with `t = 1` pure noise;
* the **signal-to-noise ratio** `snr(t) = ((1 - t) / t)^2` and how a **time shift** moves the few steps of a sampler;
* how Phased DMD cuts the SNR range into **phases** (subintervals), one expert each;
* the **transition kernel** from level `s` to level `t > s` (paper Eq. 2), and a numerical check that
  diffusing `p_s` with it lands exactly on `p_t`: the reason the teacher is still the right *real score*
  for an intermediate phase's outputs.

Everything is computed with library functions (`pdmd_lab.flow`, `pdmd_lab.viz`); a "from scratch" cell is
always followed by an assertion that it matches the library."""),
    ("code", IMPORTS),
    ("md", """## The noise path

Our toy data is `ring-mix`: 8 Gaussian modes on a ring, 4 classes of 3 modes each (neighbouring classes share a
mode). Rectified flow moves a clean sample `x0` in a straight line towards a Gaussian noise sample `eps`:
`x_t = (1 - t) x0 + t eps` (`flow.add_noise`). At `t = 0.25` the ring is still visible, by `t = 0.75` it is
almost gone, and at `t = 1` only noise remains. Colours are classes."""),
    ("code", """ds = get_dataset("ring-mix")
gmm = ds.gmm
x0, y = ds.sample(2000, seed=0)
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
panels = {f"t = {t:g}": (flow.add_noise(x0, eps, t), y) for t in (0.0, 0.25, 0.5, 0.75, 1.0)}
viz.scatter_figure(panels, title="x_t = (1 - t) x0 + t eps on ring-mix")"""),
    ("md", """## SNR and log-SNR

With `alpha_t = 1 - t` and `sigma_t = t`, the signal-to-noise ratio is
`snr(t) = (alpha_t / sigma_t)^2 = ((1 - t) / t)^2` and `logsnr(t) = 2 log((1 - t) / t)`. log-SNR runs from `+inf`
(data, `t = 0`) to `-inf` (noise, `t = 1`) and
crosses 0 at `t = 0.5`. The dots mark the 4 uniform Euler step times `1, 0.75, 0.5, 0.25, 0`."""),
    ("code", """ts4 = flow.step_times(4)
print("4 uniform step times:", [round(float(t), 3) for t in ts4])
print("log-SNR at the inner step times:", [round(float(flow.logsnr(t)), 3) for t in ts4[1:-1]])
viz.snr_figure(step_times=ts4)"""),
    ("md", """## Time shift

SD3, Wan and Qwen-Image sample with a **time shift** `shift(u; s) = s u / (1 + (s - 1) u)` applied to a uniform grid
`u`. A shift `s > 1` pushes the steps towards noise (`t` close to 1), where the coarse layout is decided, and leaves
fewer steps for the fine details near `t = 0`. Below: the 4 step times for shift 1 and shift 3, then the log-SNR
seen along the schedule position `u` for both shifts, with the shift-3 step times marked."""),
    ("code", """for shift in (1.0, 3.0):
    ts = flow.step_times(4, shift)
    print(f"shift {shift:g}: t =", [round(float(t), 3) for t in ts],
          " log-SNR =", [round(float(flow.logsnr(t)), 2) for t in ts[1:-1]])
# shift(u; s) from scratch, checked against the library
u = torch.linspace(0, 1, 11, dtype=torch.float64)
s = 3.0
assert torch.allclose(s * u / (1 + (s - 1) * u), flow.shift_time(u, s))
viz.snr_figure(step_times=flow.step_times(4, 3.0), shifts=(3.0, 1.0))"""),
    ("md", """## Phases: subintervals of the SNR range

Phased DMD (Fan et al. 2025) splits the `N` sampling steps into `K` phases with boundaries
`1 = t_0 > t_1 > ... > t_K = 0`; phase `k` covers `(t_k, t_{k-1}]` and gets its own expert. With `K = N` every
phase holds one step (the paper's 4-step / 4-phase setting), with `K = 1` it is a single network (plain DMD2-style
few-step distillation). `flow.phase_boundaries(N, K)` returns the boundaries; the figure places them on the log-SNR
axis."""),
    ("code", """for k in (1, 2, 4):
    print(f"K = {k}: boundaries", [round(float(b), 3) for b in flow.phase_boundaries(4, k)])
viz.phases_figure(4, phase_counts=(1, 2, 4))"""),
    ("md", """### Try it: shift, steps and phases

The controls below move the time shift, the number of Euler steps and the number of phases. The first
figure places the step times (dots) and the phases (shaded) on the `t` axis, with SNR and log-SNR; the second
places them on the log-SNR axis. The figures right under this cell are drawn for the default values (a static
viewer such as GitHub shows those); in Jupyter the sliders under them redraw live. Things to try: shift 1 vs 3
with 4 steps (where do the steps sit on the log-SNR axis?), and 8 steps in 2 or 4 phases."""),
    ("code", """def show_schedule(shift=3.0, steps=4, phases=2):
    \"\"\"Step times of `steps` shifted Euler steps split into `phases` phases, on the t and log-SNR axes.\"\"\"
    if steps % phases:
        print(f"{phases} phases cannot split {steps} steps evenly: pick a divisor of {steps}")
        return
    ts = flow.step_times(steps, shift)
    bounds = flow.phase_boundaries(steps, phases, shift)
    print("step times t:", [round(float(t), 3) for t in ts])
    print("phase boundaries:", [round(float(b), 3) for b in bounds], f"({steps // phases} step(s) per phase)")
    display(viz.snr_figure(step_times=ts, boundaries=bounds))
    display(viz.phases_figure(steps, phase_counts=(phases,), shift=shift))

show_schedule()  # the default values, as a static figure
interact(show_schedule, shift=widgets.FloatSlider(value=3.0, min=0.25, max=8.0, step=0.25, description="shift"),
         steps=widgets.IntSlider(value=4, min=1, max=16, description="steps"),
         phases=widgets.IntSlider(value=2, min=1, max=16, description="phases"));"""),
    ("md", """## What the teacher predicts along `t`: why one expert per subinterval

A flow model's velocity also gives its guess of the clean data, `x0_hat = x_t - t v(x_t, t)` (the posterior mean
`E[x0 | x_t]`). On `ring-mix` the exact oracle gives it without any training. At high noise `x_t` says almost nothing
about `x0`, so the best guess is the **data mean** (white star); as the noise drops, the guesses spread out and,
around log-SNR 0, **commit to modes**; at low noise they sit on the modes and only refine. Each panel below draws
noisy points `x_t` (grey) joined to the teacher's prediction (coloured by the phase of a 4-phase split whose
subinterval holds `t`), from one draw of data and noise (`viz.denoiser_figure`)."""),
    ("code", """bounds4 = flow.phase_boundaries(4, 4)
viz.denoiser_figure(gmm, ts=(0.95, 0.8, 0.6, 0.4, 0.2, 0.05), boundaries=bounds4,
                    title="the exact teacher's x0 prediction x_t - t v(x_t, t) along the noise path (all classes)")"""),
    ("md", """The same sweep as an animation, `t` running from 1 to 0 (`viz.denoiser_animation`, rendered to a GIF); the
right panel marks the current `t` on the log-SNR curve with the four phases shaded."""),
    ("code", """anim = viz.denoiser_animation(gmm, boundaries=bounds4, n=150, frames=12 if FAST else 24,
                              title="teacher's x0 predictions, t from 1 to 0")
Image(data=viz.animation_to_gif(anim, dpi=60), format="gif")"""),
    ("md", """**Why this favours one expert per subinterval.** A few-step student must reproduce this whole family of
maps: contracting everything to the mean at high noise, *deciding* between modes in the middle, and nudging points onto
their mode at low noise. A single network has to fit all of them at once; Phased DMD gives each SNR subinterval its
own expert, which only meets one regime. One way to measure how different the regimes are: how much of the
teacher's map `x_t -> x0_hat` the best **affine** map (in `x_t`, with coefficients linear in `t`) leaves unexplained,
on the whole of `t ∈ (0, 1]` and within each of the 4 phases. Least squares with `torch.linalg.lstsq` on exact
oracle predictions:"""),
    ("code", """g = torch.Generator().manual_seed(4)
x_fit, _ = ds.sample(20_000, seed=4)

def unexplained_share(lo, hi):
    \"\"\"1 - R^2 of the best map affine in x_t (coefficients linear in t) to the oracle's x0_hat, t ~ U(lo, hi).\"\"\"
    t = lo + (hi - lo) * torch.rand(len(x_fit), 1, generator=g)
    x_t = flow.add_noise(x_fit, torch.randn(x_fit.shape, generator=g), t)
    x0_hat = flow.x0_from_velocity(x_t, gmm.velocity(x_t, t[:, 0]), t).double()
    features = torch.cat([x_t, t, x_t * t, torch.ones_like(t)], 1).double()
    residual = x0_hat - features @ torch.linalg.lstsq(features, x0_hat).solution
    return float(residual.pow(2).sum() / (x0_hat - x0_hat.mean(0)).pow(2).sum())

whole = unexplained_share(0.0, 1.0)
print(f"all of t in (0, 1]:         {100 * whole:5.1f}% of the variance of x0_hat unexplained")
shares = []
for k in range(4):
    hi, lo = float(bounds4[k]), float(bounds4[k + 1])
    shares.append(unexplained_share(lo, hi))
    print(f"phase {k + 1}, t in ({lo:.2f}, {hi:.2f}]: {100 * shares[-1]:5.1f}%")
assert max(shares) < whole  # the claim of the next paragraph"""),
    ("md", """Within every phase the best affine map explains more of the teacher's map than it does over the whole
range: the subintervals are simpler problems, and the hardest one is the phase where the predictions leave the mean and
commit to modes. That is where a one-step or shared-network student drops modes (notebook 03)."""),
    ("md", """## The transition kernel from `s` to `t` (paper Eq. 2)

An intermediate phase does not produce clean data: expert `k` outputs `x_{t_k}`, a sample at noise level
`s = t_k`. To noise it further to `t > s`, the forward process gives

`x_t = a x_s + b eps`,  `a = alpha_t / alpha_s = (1 - t) / (1 - s)`,  `b^2 = sigma_t^2 - a^2 sigma_s^2 = t^2 - a^2 s^2`.

Why: writing `x_s = (1 - s) x0 + s eps_1`, the result `a x_s + b eps` has signal `a (1 - s) x0 = (1 - t) x0` and
independent Gaussian noise of variance `a^2 s^2 + b^2 = t^2`: exactly the law of `x_t`. First from scratch, then
against `flow.transition_coefficients` and `flow.transition`."""),
    ("code", """s, t = 0.3, 0.7
a_scratch = (1 - t) / (1 - s)
b_scratch = (t**2 - a_scratch**2 * s**2) ** 0.5
a_lib, b_lib = flow.transition_coefficients(s, t)
print(f"scratch: a = {a_scratch:.6f}, b = {b_scratch:.6f}")
print(f"library: a = {a_lib:.6f}, b = {b_lib:.6f}")
assert abs(a_scratch - a_lib) < 1e-12 and abs(b_scratch - b_lib) < 1e-12

g = torch.Generator().manual_seed(2)
x_s = flow.add_noise(x0, torch.randn(x0.shape, generator=g), s)
eps2 = torch.randn(x0.shape, generator=g)
x_t_scratch = a_scratch * x_s + b_scratch * eps2
assert torch.allclose(x_t_scratch, flow.transition(x_s, eps2, s, t), atol=1e-6)
# at s = 0 the transition is the plain noise path
assert torch.allclose(flow.transition(x0, eps2, 0.0, t), flow.add_noise(x0, eps2, t))
print("from-scratch transition matches flow.transition")"""),
    ("md", """## Diffusing `p_s` lands on `p_t`

The kernel is Markov: diffusing *samples of `p_s`* with it gives *samples of `p_t`*. We check it with the energy
distance (`metrics.energy_distance`, 0 for equal distributions) between

* `x_t` obtained by noising `x0 -> x_s -> x_t` (transition kernel), and
* `x_t` drawn directly with `add_noise` from independent data.

The data-vs-data floor (two independent direct draws) shows the value for equal distributions at this sample size
(the estimator is unbiased, so Monte Carlo noise can push it slightly below 0). A wrong kernel, treating `x_s` as if it
were clean data (`add_noise(x_s, eps, t)`), lands well above the floor."""),
    ("code", """n = 2000
g = torch.Generator().manual_seed(3)
xa, _ = ds.sample(n, seed=10)
xb, _ = ds.sample(n, seed=11)
xc, _ = ds.sample(n, seed=12)
for s, t in [(0.25, 0.5), (0.5, 0.75), (0.3, 0.9)]:
    x_s = flow.add_noise(xa, torch.randn(xa.shape, generator=g), s)
    via_kernel = flow.transition(x_s, torch.randn(xa.shape, generator=g), s, t)
    direct = flow.add_noise(xb, torch.randn(xb.shape, generator=g), t)
    direct2 = flow.add_noise(xc, torch.randn(xc.shape, generator=g), t)
    wrong = flow.add_noise(x_s, torch.randn(xa.shape, generator=g), t)
    e_kernel = metrics.energy_distance(via_kernel, direct)
    e_floor = metrics.energy_distance(direct2, direct)
    e_wrong = metrics.energy_distance(wrong, direct)
    print(f"s={s:.2f} -> t={t:.2f}:  kernel vs direct {e_kernel:.4f} | data-vs-data floor {e_floor:.4f} "
          f"| wrong kernel {e_wrong:.4f}")
    assert abs(e_kernel) < 5e-3, e_kernel  # Monte Carlo noise only"""),
    ("md", """The kernel's energy distance sits at the data-vs-data floor: `p_s` diffused to `t` *is* `p_t`. This is
why Phased DMD can keep the teacher as the real score in every phase: the teacher's velocity at `x_t`, `t > s`, is
the correct score of the diffused version of the distribution the expert should produce at level `s`.
What changes per phase is the *fake* score, which must be trained on `x_s` samples that are not clean data:
notebook 02 shows the unbiased target for it."""),
]

# ---------------------------------------------------------------------------------------------
NB02 = [
    ("md", """# 02 · Score matching within subintervals

In phase `k`, Phased DMD's fake score is trained on the expert's outputs `x_s` at level `s = t_k`, noised to
`t ∈ (s, 1]` with the transition kernel `x_t = a x_s + b eps` (notebook 01). The flow-matching target
`eps - x0` needs clean data, which we do not have. Two candidates:

* **naive**: `eps - x_s`, treating `x_s` as if it were clean (biased: paper Fig. 2);
* **unbiased** (paper Eq. 11): `v* = ((t + (1 - t) s^2 / (1 - s)^2) / b) eps - x_s / (1 - s)`,
  whose conditional mean `E[v* | x_t]` is the true velocity of the diffused distribution; at `s = 0` it reduces
  to `eps - x0`.

We reproduce the paper's 1D toy: data at `-1, 0, 1, 2`, `x_s` = data diffused to `s = 0.5`, two small fake scores
trained only on `t ∈ (0.5, 1]`, one per target."""),
    ("code", IMPORTS + """
from pdmd_lab.data import GaussianMixture
from pdmd_lab.distill.losses import fake_score_loss, naive_fake_score_loss
from pdmd_lab.nets import MLPConfig, MLPDenoiser"""),
    ("md", """## The toy problem

`p_0` is a mixture of four narrow Gaussians; `p_{0.5}` is it diffused to `s = 0.5`. The oracle velocity
`GaussianMixture.velocity(x_t, t)` is exact for every `t`, and since the transition kernel is Markov it is also the
true velocity of `p_{0.5}` diffused to `t > 0.5`: it is the ground truth both fake scores should learn."""),
    ("code", """gmm = GaussianMixture(means=[[-1.0], [0.0], [1.0], [2.0]], stds=0.05, weights=[[1, 1, 1, 1]])
S = 0.5

def draw_xs(n, seed):
    \"\"\"Samples of p_s: data diffused to level S.\"\"\"
    x0, _ = gmm.sample(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    return flow.add_noise(x0, torch.randn(x0.shape, generator=g), S)

def oracle(x, t, class_labels=None):
    \"\"\"The exact (unconditional) velocity, with the Denoiser call signature.\"\"\"
    return gmm.velocity(x, t)

x_s = draw_xs(20000, seed=0)
grid = torch.linspace(-2.5, 3.5, 400)[:, None]
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.hist(x_s[:, 0].numpy(), bins=120, density=True, alpha=0.5, label="samples of p_0.5")
ax.plot(grid[:, 0], gmm.log_prob(grid, t=S).exp(), "k", lw=1.2, label="exact p_0.5")
ax.set_xlabel("x"); ax.legend(); ax.set_title("the 'generator outputs' x_s at s = 0.5")
plt.close(fig)
fig"""),
    ("md", """## The two targets, from scratch

Eq. 11 written out by hand, checked against `flow.subinterval_velocity_target`; at `s = 0` it must equal the plain
flow-matching target `eps - x0`."""),
    ("code", """def unbiased_target_scratch(x_s, eps, s, t):
    a = (1 - t) / (1 - s)
    b = (t**2 - a**2 * s**2) ** 0.5
    return ((t + (1 - t) * s**2 / (1 - s) ** 2) / b) * eps - x_s / (1 - s)

g = torch.Generator().manual_seed(5)
xs_small = draw_xs(256, seed=3)
e = torch.randn(xs_small.shape, generator=g)
for t in (0.55, 0.7, 0.95):
    assert torch.allclose(unbiased_target_scratch(xs_small, e, S, t),
                          flow.subinterval_velocity_target(xs_small, e, S, t), atol=1e-5)
x0_small, _ = gmm.sample(256, seed=4)
assert torch.allclose(flow.subinterval_velocity_target(x0_small, e, 0.0, 0.7), e - x0_small, atol=1e-6)
print("Eq. 11 from scratch matches the library; at s = 0 it is eps - x0")"""),
    ("md", """## Conditional means by Monte Carlo

A regression target `y` teaches a network `E[y | x_t, t]`. So a target is unbiased when its conditional mean
equals the true velocity. We draw many `(x_s, eps)`, form `x_t`, bin `x_t` into quantile bins at a few fixed `t`,
and compare the bin means of `target - v_true(x_t)`: they should vanish for the unbiased target (up to Monte Carlo
error, which grows as `t -> s` because of the `1 / b` factor) and do not for the naive one."""),
    ("code", """def max_conditional_mean_error(kind, t, n=200_000, bins=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = draw_xs(n, seed=seed + 100).double()
    e = torch.randn(xs.shape, generator=g, dtype=torch.float64)
    x_t = flow.transition(xs, e, S, t)
    target = flow.subinterval_velocity_target(xs, e, S, t) if kind == "unbiased" else e - xs
    resid = (target - gmm.velocity(x_t, t))[:, 0]
    edges = torch.quantile(x_t[:, 0].float(), torch.linspace(0, 1, bins + 1)).double()
    idx = torch.bucketize(x_t[:, 0], edges[1:-1])
    means = torch.stack([resid[idx == i].mean() for i in range(bins)])
    ses = torch.stack([resid[idx == i].std() / (idx == i).sum().sqrt() for i in range(bins)])
    return float(means.abs().max()), float((means.abs() / ses).max())

N_MC = 50_000 if FAST else 200_000
print(f"max over x_t bins of |E[target | x_t] - v_true(x_t)|  ({N_MC} samples per t)")
print("(z: the largest bin error in Monte Carlo standard errors; |z| of a few is noise)")
for t in (0.6, 0.7, 0.8, 0.9):
    (eu, zu), (en, zn) = max_conditional_mean_error("unbiased", t, N_MC), max_conditional_mean_error("naive", t, N_MC)
    print(f"t = {t}:  unbiased {eu:.4f} (z {zu:.1f})   naive {en:.4f} (z {zn:.1f})")"""),
    ("md", """### Try it: the subinterval `(s, t)` and the target's bias

Pick the level `s` of the generator's outputs and the level `t > s` they are noised to. The figure bins `x_t` and
plots the conditional mean of `target - v_true(x_t)` for both targets (bars: 2 Monte Carlo standard errors), over the
histogram of `x_t`. The unbiased target stays on zero everywhere; the naive one is biased by an amount that grows
with `s` (at `s = 0` the two targets coincide: `x_s` *is* clean data). The figure under this cell is for the default
values; the sliders under it redraw it in Jupyter."""),
    ("code", """def target_bias(s=0.5, t=0.7, n=40_000, bins=24, seed=0):
    \"\"\"Binned E[target - v_true | x_t] of the naive and the unbiased (Eq. 11) target on the subinterval (s, t).\"\"\"
    if not 0 <= s < t <= 1:
        print(f"need 0 <= s < t <= 1, got s = {s}, t = {t}")
        return
    g = torch.Generator().manual_seed(seed)
    x0, _ = gmm.sample(n, seed=seed)
    x0 = x0.double()
    xs = flow.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), s)
    e = torch.randn(xs.shape, generator=g, dtype=torch.float64)
    x_t = flow.transition(xs, e, s, t)
    v_true = gmm.velocity(x_t, t)
    edges = torch.quantile(x_t[:, 0].float(), torch.linspace(0, 1, bins + 1)).double()
    idx = torch.bucketize(x_t[:, 0], edges[1:-1])
    centres = torch.stack([x_t[idx == i, 0].mean() for i in range(bins)]).numpy()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax2 = ax.twinx()
    ax2.hist(x_t[:, 0].numpy(), bins=100, color="#dddddd", density=True)
    ax2.set_yticks([])
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    worst = {}
    for name, target, color in [("naive eps - x_s", e - xs, "#d62728"),
                                ("unbiased (Eq. 11)", flow.subinterval_velocity_target(xs, e, s, t), "#1f77b4")]:
        r = (target - v_true)[:, 0]
        means = torch.stack([r[idx == i].mean() for i in range(bins)]).numpy()
        ses = torch.stack([r[idx == i].std() / (idx == i).sum().sqrt() for i in range(bins)]).numpy()
        ax.errorbar(centres, means, yerr=2 * ses, color=color, marker="o", ms=3, lw=1.2, capsize=2, label=name)
        worst[name] = float(np.abs(means).max())
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("x_t"); ax.set_ylabel("E[target - v_true | x_t]"); ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"s = {s:.2f}, t = {t:.2f}: max |bias| naive {worst['naive eps - x_s']:.3f}, "
                 f"unbiased {worst['unbiased (Eq. 11)']:.3f}", fontsize=10)
    plt.close(fig)
    display(fig)

target_bias()  # the default values, as a static figure
interact(target_bias, s=widgets.FloatSlider(value=0.5, min=0.0, max=0.9, step=0.05, description="s"),
         t=widgets.FloatSlider(value=0.7, min=0.05, max=1.0, step=0.05, description="t"),
         n=widgets.fixed(40_000), bins=widgets.fixed(24), seed=widgets.fixed(0));"""),
    ("md", """## Training two fake scores

Two identical small MLPs (`MLPDenoiser`, 2 residual blocks of width 64), trained with Adam only on
`t ~ U(0.5, 1)`: one with `fake_score_loss` (the unbiased target with the clamped weight of Eq. 13), one with
`naive_fake_score_loss` (target `eps - x_s`). Fresh `x_s` every step, as a generator would supply them."""),
    ("code", """STEPS = 100 if FAST else 300
BATCH = 256

def train_fake(loss_fn, seed=0):
    torch.manual_seed(seed)
    net = MLPDenoiser(MLPConfig(data_dim=1, num_classes=1, hidden=64, depth=2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(STEPS):
        xs = draw_xs(BATCH, seed=1000 + step)
        t = flow.sample_t(BATCH, S, 1.0, generator=g)
        e = torch.randn(xs.shape, generator=g)
        loss = loss_fn(net, xs, S, t, e, None).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    return net.eval().requires_grad_(False), losses

t0 = time.perf_counter()
fake_unbiased, loss_u = train_fake(fake_score_loss)
fake_naive, loss_n = train_fake(naive_fake_score_loss)
print(f"trained 2 x {STEPS} steps in {time.perf_counter() - t0:.1f} s; "
      f"final losses: unbiased {np.mean(loss_u[-20:]):.3f}, naive {np.mean(loss_n[-20:]):.3f}")"""),
    ("md", """## Trajectories from `t = 1` to `t = 0.5`

A fake score is a velocity field on `(0.5, 1]`: integrating it with Euler steps (`sampling.trajectory`) from
noise should land on `p_{0.5}`. Left, the oracle; middle, the unbiased fake score; right, the naive one. Then the
histograms of the endpoints `x_{0.5}` against the exact `p_{0.5}`, with the energy distance to true `p_{0.5}`
samples."""),
    ("code", """ts = torch.linspace(1.0, S, 41, dtype=torch.float64)
z = torch.randn(4000, 1, generator=torch.Generator().manual_seed(7))
fields = {"true (oracle)": oracle, "unbiased target (Eq. 11)": fake_unbiased, "naive target eps - x_s": fake_naive}
trajs = {name: torch.stack(sampling.trajectory(model, z, ts))[..., 0] for name, model in fields.items()}  # (T, B)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
for ax, (name, tr) in zip(axes, trajs.items()):
    ax.plot(ts.numpy(), tr[:, :80].numpy(), lw=0.6, alpha=0.7)
    ax.set_title(name, fontsize=10); ax.set_xlabel("t"); ax.invert_xaxis()
    for m in (-1, 0, 1, 2):
        ax.axhline((1 - S) * m, color="k", lw=0.5, ls=":")
axes[0].set_ylabel("x_t")
fig.suptitle("Euler trajectories t = 1 -> 0.5 (dotted: the modes of p_0.5)")
plt.close(fig)
fig"""),
    ("code", """ref = draw_xs(4000, seed=99)
fig, axes = plt.subplots(1, 3, figsize=(13, 3), sharey=True)
for ax, (name, tr) in zip(axes, trajs.items()):
    end = tr[-1][:, None]
    ed = metrics.energy_distance(end, ref)
    ax.hist(end[:, 0].numpy(), bins=100, range=(-2, 2.5), density=True, alpha=0.6)
    ax.plot(grid[:, 0], gmm.log_prob(grid, t=S).exp(), "k", lw=1)
    ax.set_xlim(-2, 2.5); ax.set_title(f"{name}\\nenergy distance to p_0.5: {ed:.4f}", fontsize=9)
    print(f"{name:28s} energy distance to p_0.5 samples: {ed:.4f}")
print(f"{'data-vs-data floor':28s} {metrics.energy_distance(draw_xs(4000, seed=98), ref):.4f}")
plt.close(fig)
fig"""),
    ("md", """The naive field lands its samples in the wrong places: `eps - x_s` treats the noisy `x_s` as clean data,
so the learned velocity transports noise onto a distribution that is neither `p_0` nor `p_{0.5}`. The unbiased target
reproduces the oracle's endpoints. In Phased DMD the fake score estimates the score of the *generator's*
distribution; a biased one would make the DMD gradient `v_real - v_fake` push the expert towards the wrong
distribution even when it is already right.

## The clamped weight `min(1, 10 b^2)`

The unbiased target carries a `1 / b` factor, and `b -> 0` as `t -> s`: the target's variance explodes near the
start of the subinterval. Eq. 13 multiplies the loss by `min(1, 10 b^2)`, which depends on `t` only, so it re-weights
times without biasing the conditional mean; it fades the noisiest times out and leaves the rest at weight 1."""),
    ("code", """fig, ax = plt.subplots(figsize=(7, 3.2))
for s in (0.25, 0.5, 0.75):
    t = torch.linspace(s + 1e-4, 1.0, 400, dtype=torch.float64)
    w = flow.subinterval_loss_weight(s, t)
    _, b = flow.transition_coefficients(s, t)
    assert torch.allclose(w, torch.clamp(10 * b**2, max=1.0))  # from scratch vs library
    ax.plot(t, w, label=f"s = {s}: min(1, 10 b²)")
ax.set_xlabel("t"); ax.set_ylabel("loss weight"); ax.set_ylim(0, 1.05); ax.legend(fontsize=8)
ax.set_title("clamped fake-score loss weight as t -> s")
plt.close(fig)
fig"""),
]

# ---------------------------------------------------------------------------------------------
NB03 = [
    ("md", """# 03 · Mode collapse in 2D: DMD, DMD2-SGTS and Phased DMD

Distribution Matching Distillation minimises a *reverse* KL between the student and the (CFG-guided) teacher. Reverse KL
is mode-seeking: a student that drops a mode pays little. On `ring-mix` (8 modes on a ring, 4 classes of 3 modes
with weights 0.5 / 0.3 / 0.2) we can count modes exactly. We distill the **oracle** teacher (exact mixture velocity)
live with three methods; while they train, we look at how CFG changes what the teacher itself covers and at the
shipped students; then we compare the live students' samples and mode coverage with the teacher's, and follow a
Phased DMD sample through its experts."""),
    ("code", IMPORTS + """
from pdmd_lab.distill import METHODS, DistillConfig
from pdmd_lab.parallel import start_all

torch.set_num_threads(1)  # training runs in worker processes; the kernel works on small tensors, faster on one thread
ITERS = 20 if FAST else 300
N = 2000
labels = torch.arange(N) % 4  # classes cycle 0, 1, 2, 3"""),
    ("md", """## Teacher and data

`zoo.load("ring-mix/teacher")` is the oracle velocity sampled with 50 Euler steps and CFG 3 (standard form
`v_u + w (v_c - v_u)`). CFG sharpens each class: the teacher's mode weights differ from the data's, so the
reference for coverage below is the **teacher's** mode histogram (`metrics.mode_histogram`)."""),
    ("code", """ds = get_dataset("ring-mix")
gmm = ds.gmm
teacher = zoo.load("ring-mix/teacher")
print(teacher.describe())
teacher_at_cfg = {}  # teacher samples (same labels, seed 0) per CFG scale: drawn once, reused by every cell

def teacher_samples(w):
    w = round(float(w), 2)
    if w not in teacher_at_cfg:
        teacher_at_cfg[w] = teacher.with_steps(50, cfg=w).sample(labels, seed=0)
    return teacher_at_cfg[w]

x_data = torch.cat([ds.sample(N // 4, seed=c, labels=c)[0] for c in range(4)])  # N // 4 per class
y_data = torch.arange(4).repeat_interleave(N // 4)
x_teacher = teacher_samples(3.0)
teacher_hist = metrics.mode_histogram(gmm, x_teacher, labels)
print("teacher mode shares per class (rows: classes, columns: the 8 modes):")
print(np.round(teacher_hist, 2))
viz.scatter_figure({"data": (x_data, y_data), "teacher (50 steps, CFG 3)": (x_teacher, labels)}, gmm)"""),
    ("md", """## Distilling live

One call per method (`pdmd_lab.distill.distill`), same settings: real score = oracle with CFG 3, batch 256,
learning rates 1e-3, 3 fake-score updates per generator update. The experts and fake scores start from an MLP
regressed onto the oracle velocity for `init_iters = 2000` steps, the starting net of the shipped `ring-mix` recipes:
it travels with the kit (`assets/init`), so `distill` loads it instead of fitting it.

* **DMD**: 1 step, `x0 = z - v_G(z, 1)`;
* **DMD2-SGTS**: 4 steps of one shared network; a random step carries the gradient;
* **Phased DMD**: 4 steps, 4 phases; expert `k` is trained against a fresh fake score on its subinterval
  `(t_k, 1)` with the unbiased subinterval target (notebook 02).

`iters` generator updates in total (Phased DMD splits them over the phases). The methods come from the
registry `pdmd_lab.distill.METHODS` (listed first); `DistillConfig.from_flat` routes a method's own options, such
as Phased DMD's `phases`, to the method. The three runs are independent, so `pdmd_lab.parallel.start_all` trains
them side by side, one single-threaded worker process each, forked from this kernel (each run is `distill(config)`;
the students are the ones a loop of `distill` calls returns, only sooner), and returns at once: the next two
sections need only the teacher and the shipped students, and run while the workers train. `runs.result()` waits
for the students further down."""),
    ("code", """for name, cls in METHODS.items():
    print(f"{name:20s} {cls.summary}")
common = dict(teacher="oracle:ring-mix", cfg=3.0, iters=ITERS, batch_size=256, lr_generator=1e-3, lr_fake=1e-3,
              fake_updates_per_generator_update=3, init_iters=2000)
runs = {"DMD 1-step": dict(method="dmd", steps=1),
        "DMD2-SGTS 4-step": dict(method="dmd2-sgts", steps=4),
        "Phased DMD 4s/4p": dict(method="phased-dmd", steps=4, phases=4)}
configs = {name: DistillConfig.from_flat(**common, **spec) for name, spec in runs.items()}
t0 = time.perf_counter()
# the tests' 20-iteration runs: here, no workers; "fork": each worker is a copy of this kernel, torch imported
live = start_all(configs, processes=1 if FAST else None, start_method="fork")
print(f"training {', '.join(configs)}", "(done)" if live.done() else "in the background")"""),
    ("md", """## The real score's CFG scale and collapse

The distillation target is the *guided* teacher. Guidance already moves mass toward each class's most
class-specific mode: the shared modes (the light 0.2 mode of one class is the heavy 0.5 mode of its neighbour) are
penalised by `v_u + w (v_c - v_u)` for `w > 1`. Below, the teacher itself at CFG 1, 3 and 6, its coverage and its KL
to the *data's* mode weights: the higher the scale, the fewer modes the target has, before any distillation.

`metrics.mode_coverage` counts, per class, the expected modes that hold at least 2% of that class's samples
(within 3 stds), the share of samples near any mode (`high_quality`), and the KL of the class's mode histogram
against reference weights (here the data's; for the students below, the teacher's). A collapsed model covers fewer
modes and has a large KL."""),
    ("code", MD_TABLE_HELPER + """

from IPython.display import Markdown


def coverage_row(x, lab):
    cov = metrics.mode_coverage(gmm, x, lab, reference_weights=teacher_hist)
    return {"modes covered": f"{cov['modes_covered']}/{cov['modes_expected']}", "coverage": cov["coverage"],
            "high quality": cov["high_quality"], "KL vs teacher": cov["kl"]}

cfg_samples, cfg_table = {}, {}
for w in (1.0, 3.0, 6.0):
    x_w = teacher_samples(w)
    cfg_samples[f"teacher CFG {w:g}"] = (x_w, labels)
    cov = metrics.mode_coverage(gmm, x_w, labels)  # reference: the data's mode weights
    cfg_table[f"teacher CFG {w:g}"] = {"modes covered": f"{cov['modes_covered']}/{cov['modes_expected']}",
                                       "coverage": cov["coverage"], "KL vs data": cov["kl"]}
display(Markdown(markdown_table(cfg_table, ["modes covered", "coverage", "KL vs data"])))
viz.scatter_figure(cfg_samples, gmm)"""),
    ("md", """## The shipped ring-mix students

`assets/models/ring-mix/` holds students distilled the same way but longer (600 generator updates). They load by name
with `zoo.load`; below all that are present, with the same labels and seed, and their coverage against the CFG 3
teacher's mode histogram."""),
    ("code", """shipped = [n for n in zoo.list_models() if n.startswith("ring-mix/") and n != "ring-mix/teacher"]
print("shipped:", shipped)
shipped_models = {name.split("/")[1]: zoo.load(name) for name in shipped}
shipped_samples = {"teacher": (x_teacher, labels)}
shipped_samples.update({name: (m.sample(labels, seed=0), labels) for name, m in shipped_models.items()})
shipped_table = {name: coverage_row(x, lab) for name, (x, lab) in shipped_samples.items()}
display(Markdown(markdown_table(shipped_table, ["modes covered", "coverage", "high quality", "KL vs teacher"])))
viz.scatter_figure(shipped_samples, gmm, max_cols=6)"""),
    ("md", """### Where collapse comes from: exit step by exit step

DMD2-SGTS trains **one** fake score on the mix of all its exit steps (each rollout stops at a random step j and
judges that step's `x0` prediction), so nothing asks a single exit to match the teacher: the exits can specialise
while their mix matches. `pdmd_lab.collapse` runs a student once and keeps every step's `x0` prediction; the
table gives each class's share on its own mode and on modes it shares with a neighbour (the same view as
`pdmd-lab figures --per-exit`). Phased DMD's experts hand on states at their phase ends, so only its last
experts' `x0` estimates compare."""),
    ("code", """from pdmd_lab import collapse

for name in ["ring-mix/dmd2-sgts-4s", "ring-mix/phased-dmd-4s4p"]:
    short = name.split("/")[1]
    model = shipped_models[short] if short in shipped_models else zoo.load(name)
    fig, rows = collapse.per_exit_figure(model, "ring-mix", n=1000, title=name)
    for r in rows:
        print(f"{name} exit {r['exit']} (expert {r['expert']}): own {r['own_share']:.2f}, "
              f"shared {r['shared_share']:.2f}, KL {r['mode_kl']:.3f}")
    display(fig)"""),
    ("md", """## The live students

`live.result()` waits for the three runs (the sections above ran meanwhile) and returns each student with its
training time."""),
    ("code", """trained = live.result()
students = {name: student for name, (student, _) in trained.items()}
for name, (student, seconds) in trained.items():
    print(f"{name}: {student.describe()}, trained in {seconds:.0f} s")
print(f"the three runs side by side: {time.perf_counter() - t0:.0f} s of wall time from their start")"""),
    ("md", """### Samples per class

Same class labels and seeds for every method. Black crosses are the 8 modes with their 3-std circles."""),
    ("code", """samples = {"teacher": (x_teacher, labels)}
samples.update({name: (st.sample(labels, seed=0), labels) for name, st in students.items()})
viz.scatter_figure(samples, gmm, title="live-distilled students vs teacher (classes coloured)")"""),
    ("md", """### Mode coverage

The same table as for the shipped students: coverage and KL against the CFG 3 teacher's mode histogram."""),
    ("code", """table = {name: coverage_row(x, lab) for name, (x, lab) in samples.items()}
display(Markdown(markdown_table(table, ["modes covered", "coverage", "high quality", "KL vs teacher"])))"""),
    ("md", """## Phase by phase

A Phased DMD student is a mixture of experts routed by time: the step starting at `t ∈ (t_k, t_{k-1}]` uses expert
`k`. `student.sample(..., return_trajectory=True)` returns every state `x_{t_0} = z, x_{t_1}, ..., x_{t_4}`.
The trajectory figure colours each segment by the expert that moved it; the scatter shows each intermediate output
`x_{t_k}` (which should look like the teacher's distribution diffused to `t_k`)."""),
    ("code", """pd = students["Phased DMD 4s/4p"]
lab_small = labels[:300]
x_end, traj = pd.sample(lab_small, seed=1, return_trajectory=True)
experts_used = [pd.expert_index(float(t)) for t in pd.step_times[:-1]]
print("step times:", [round(float(t), 3) for t in pd.step_times], " experts per step:", experts_used)
viz.trajectory_figure(traj[:], experts_used, gmm=gmm, labels=lab_small, step_times=pd.step_times)"""),
    ("code", """def state_name(i, t):
    return f"x_(t={float(t):.2f})" + ("" if i == 0 else f" after expert {experts_used[i - 1] + 1}")

viz.scatter_figure({state_name(i, t): (traj[i], lab_small) for i, t in enumerate(pd.step_times)}, gmm, max_cols=5)"""),
    ("md", """### The same trajectory, animated

Each frame moves the samples a little further along their step (Euler steps are straight lines, so the frames
interpolate exactly); the moving points and their trails take the colour of the expert taking the step, and the
last frames colour the outputs by class. `viz.trajectory_animation` builds a matplotlib animation, and
`viz.animation_to_gif` renders it with Pillow (no ffmpeg needed)."""),
    ("code", """anim = viz.trajectory_animation([x[:120] for x in traj], experts_used, gmm=gmm, labels=lab_small[:120],
                                step_times=pd.step_times, title="Phased DMD 4s/4p, live-distilled")
Image(data=viz.animation_to_gif(anim), format="gif")"""),
    ("md", """**Reading the results.** A 1-step DMD student has to map all of the noise to the modes in one jump, and
its reverse-KL objective lets it drop light modes, so its KL to the teacher is typically the largest. DMD2-SGTS
spreads the work over 4 steps of one network. Phased DMD gives every SNR subinterval its own expert and trains each
against the correct (diffused) target, so the low-SNR expert decides the *layout* (which mode) and later experts
refine: its mode histogram stays closest to the teacher's. With short live runs the numbers are noisy; the shipped
students (longer training, above) show the trend more clearly."""),
    ("md", """### Try it: CFG scale and method

Left, the teacher at the CFG scale you pick (the *target* a distilled student is trained to match; every student
here was distilled from the CFG 3 teacher). Right, the method you pick, with its mode coverage and KL measured
against the mode histogram of the teacher at that scale. Moving the scale shows how guidance alone reshapes the
target; switching methods at CFG 3 shows which of them dropped modes. The figure under this cell is for the default
values; the controls under it redraw it in Jupyter."""),
    ("code", """control_samples = {name: samples[name][0] for name in students}  # drawn above: same labels, seed 0
control_samples.update({f"shipped {n}": shipped_samples[n][0] for n in shipped_models})

def cfg_and_method(cfg=3.0, method="Phased DMD 4s/4p"):
    \"\"\"The teacher at CFG `cfg` next to a student, with the student's coverage against that teacher.\"\"\"
    w = round(float(cfg), 2)
    x_w = teacher_samples(w)
    cov_t = metrics.mode_coverage(gmm, x_w, labels)  # against the data's mode weights
    cov_m = metrics.mode_coverage(gmm, control_samples[method], labels,
                                  reference_weights=metrics.mode_histogram(gmm, x_w, labels))
    print(f"teacher, CFG {w:g}: {cov_t['modes_covered']}/{cov_t['modes_expected']} modes, KL vs data {cov_t['kl']:.3f}")
    print(f"{method}: {cov_m['modes_covered']}/{cov_m['modes_expected']} modes, KL vs this teacher {cov_m['kl']:.3f}")
    display(viz.scatter_figure({f"teacher, CFG {w:g}": (x_w, labels), method: (control_samples[method], labels)},
                               gmm))

cfg_and_method()  # the default values, as a static figure
interact(cfg_and_method, cfg=widgets.FloatSlider(value=3.0, min=1.0, max=8.0, step=0.5, description="CFG"),
         method=widgets.Dropdown(options=list(control_samples), value="Phased DMD 4s/4p", description="method"));"""),
]

# ---------------------------------------------------------------------------------------------
MNIST_NAMES = """STUDENTS = ["mnist/dmd-1s", "mnist/dmd2-sgts-4s", "mnist/phased-dmd-4s4p", "mnist/phased-dmd-4s2p",
            "mnist/dp-dmd-4s"]
available = zoo.list_models()
missing = [n for n in STUDENTS if n not in available]
if missing:
    print("not shipped yet (skipped):", missing)
TEACHER_STEPS = 8 if FAST else 50  # the tests' fast mode cuts the teacher's steps (and its CPU time)
TEACHER = f"teacher {TEACHER_STEPS} steps"
teacher = zoo.load("mnist/teacher", steps=TEACHER_STEPS)
models = {TEACHER: teacher, "teacher 4 steps": teacher.with_steps(4)}
models.update({n.split("/")[1]: zoo.load(n) for n in STUDENTS if n in available})
for name, m in models.items():
    print(f"{name:18s} {m.describe():45s} NFE {m.nfe}")"""

NB04 = [
    ("md", """# 04 · Phased DMD on MNIST

The shipped MNIST models: a small class-conditional UNet teacher (flow matching, sampled with CFG 3) and students
distilled from it with DMD (1 step), DMD2-SGTS (4 steps), Phased DMD (4 steps with 4 or 2 phases) and DP-DMD (4 steps).
We compare them sample by sample from *identical noise*, follow one sample through the four experts, and time them."""),
    ("code", IMPORTS),
    ("md", """## Loading by name

Every model loads with `zoo.load(name)` and samples with `model.sample(class_labels, seed, noise=...)`.
The teacher comes back as a `TeacherSampler` (50 Euler steps, CFG 3); `.with_steps(4)` is the same teacher with only
4 steps: the baseline a 4-step student has to beat. NFE counts network evaluations (CFG doubles the teacher's)."""),
    ("code", MNIST_NAMES),
    ("md", """## Same noise, same class, every method

Each column is one class (0-9) with one fixed noise tensor, passed as `noise=` to every model, so rows compare one to
one. The caption gives the NFE."""),
    ("code", """shape = teacher.shape
noise = torch.randn((10, *shape), generator=torch.Generator().manual_seed(0))
classes = torch.arange(10)
rows = {name: m.sample(classes, noise=noise) for name, m in models.items()}
viz.image_grid_figure(rows, captions={n: f"NFE {m.nfe}" for n, m in models.items()},
                      column_labels=[f"class {c}" for c in range(10)], title="same noise per column")"""),
    ("md", """## Diversity within a class

Now one class (3) with 10 different noises. A mode-collapsed student draws near-identical digits whatever the
noise; the teacher's 3s vary in slant, thickness and shape."""),
    ("code", """noise3 = torch.randn((10, *shape), generator=torch.Generator().manual_seed(1))
threes = torch.full((10,), 3)
rows3 = {name: m.sample(threes, noise=noise3) for name, m in models.items()}
viz.image_grid_figure(rows3, captions={n: f"NFE {m.nfe}" for n, m in models.items()}, title="class 3, 10 noises")"""),
    ("md", """## One sample through the experts

`return_trajectory=True` gives the states after every step; the figure titles each state with its `t` and the
expert that produced it (`student.expert_index(t)` of the step's start time). With 4 phases each step has its own
expert; with 2 phases two experts share the 4 steps. The first expert fixes the digit's layout from pure noise, the
later ones sharpen strokes."""),
    ("code", """lab6 = torch.arange(6)
noise6 = torch.randn((6, *shape), generator=torch.Generator().manual_seed(2))
figs = []
for name in ("phased-dmd-4s4p", "phased-dmd-4s2p"):
    if name not in models:
        continue
    st = models[name]
    _, traj = st.sample(lab6, noise=noise6, return_trajectory=True)
    fig = viz.trajectory_figure(traj, [st.expert_index(float(t)) for t in st.step_times[:-1]],
                                labels=lab6, step_times=st.step_times)
    fig.suptitle(name, fontsize=10)
    display(fig)
    plt.close(fig)"""),
    ("md", """### Try it: class, seed and the trajectory expert by expert

Pick a model, a digit and a seed, and reveal the trajectory one step at a time: each new column is the state after
the next step, framed in the colour of the expert that took it (for the 4-phase student, a new expert per step).
The figure under this cell is for the default values; the controls under it redraw it in Jupyter."""),
    ("code", """trajectory_models = [n for n in models if n != TEACHER]

def expert_by_expert(model="phased-dmd-4s4p", digit=3, seed=0, steps_shown=4):
    \"\"\"Six samples of `digit` from `seed`, through the first `steps_shown` steps of `model`.\"\"\"
    st = models[model] if model in models else models["teacher 4 steps"]
    lab = torch.full((6,), int(digit))
    _, traj = st.sample(lab, seed=int(seed), return_trajectory=True)
    k = max(1, min(int(steps_shown), st.num_steps))
    experts = [st.expert_index(float(t)) for t in st.step_times[:-1]]
    print(f"{model}: {st.num_steps} step(s); experts of the steps shown:", [e + 1 for e in experts[:k]])
    fig = viz.trajectory_figure(traj[:k + 1], experts[:k], labels=lab, step_times=st.step_times[:k + 1])
    display(fig)

expert_by_expert()  # the default values, as a static figure
interact(expert_by_expert, model=widgets.Dropdown(options=trajectory_models, value="phased-dmd-4s4p"
                                                  if "phased-dmd-4s4p" in models else trajectory_models[0]),
         digit=widgets.IntSlider(value=3, min=0, max=9), seed=widgets.IntSlider(value=0, min=0, max=50),
         steps_shown=widgets.IntSlider(value=4, min=1, max=4, description="steps shown",
                                       style={"description_width": "initial"}));"""),
    ("md", """### Animated: noise to digits through the four experts

The frames interpolate each Euler step (a straight line in pixel space), framed in the colour of the active expert
(`viz.trajectory_animation`, rendered to a GIF with Pillow)."""),
    ("code", """if "phased-dmd-4s4p" in models:
    st = models["phased-dmd-4s4p"]
    _, traj = st.sample(lab6, noise=noise6, return_trajectory=True)
    anim = viz.trajectory_animation(traj, [st.expert_index(float(t)) for t in st.step_times[:-1]], labels=lab6,
                                    step_times=st.step_times, title="phased-dmd-4s4p")
    display(Image(data=viz.animation_to_gif(anim), format="gif"))"""),
    ("md", """The same view for the 4-step teacher (one network, plain Euler steps) shows what the experts avoid: with
only 4 steps the teacher's `x0` is a blur, because a plain flow model averages over everything that could come
next."""),
    ("code", """t4 = models["teacher 4 steps"]
_, traj = t4.sample(lab6, noise=noise6, return_trajectory=True)
viz.trajectory_figure(traj, [0] * t4.num_steps, labels=lab6, step_times=t4.step_times)"""),
    ("md", """## Speed

Wall time per batch of 32 images (8 in the tests' fast mode) on this machine's CPU, measured with
`time.perf_counter` (median of 3 runs after a warm-up). Students cost their number of steps in network evaluations;
the teacher pays twice per step for CFG."""),
    ("code", """def time_batch(model, batch=32, repeats=3):
    lab = torch.arange(batch) % 10
    model.sample(lab, seed=0)  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        model.sample(lab, seed=r)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))

BATCH = 8 if FAST else 32
speed = {name: {"NFE": m.nfe, "ms / batch": time_batch(m, batch=BATCH, repeats=1 if FAST else 3)}
         for name, m in models.items()}
base = speed[TEACHER]["ms / batch"]
print(f"{'model':18s} {'NFE':>4s} {f'ms/batch of {BATCH}':>16s} {'speed-up':>9s}")
for name, r in speed.items():
    print(f"{name:18s} {r['NFE']:4d} {r['ms / batch']:16.1f} {base / r['ms / batch']:8.1f}x")"""),
]

# ---------------------------------------------------------------------------------------------
NB05 = [
    ("md", """# 05 · Diversity in embedding space

On images we cannot count modes as on `ring-mix`. Instead we embed samples with a small MNIST classifier
(`embed.load_classifier`, its penultimate features) and measure diversity there:

* **pairwise cosine similarity** within a class (higher = samples look alike = less diverse);
* **Vendi score** within a class (effective number of distinct samples; higher = more diverse);
* **recall** and **coverage** against the teacher's samples (`metrics.prdc`): how much of the teacher's
  distribution the student reaches; **precision** and **density** measure fidelity.

*Mode collapse* here looks like: high within-class cosine similarity, a low Vendi score, tight clusters in the
projections, and low recall/coverage while precision stays high (the samples are good digits, just always the
same ones)."""),
    ("code", IMPORTS),
    ("md", """## Samples and features

`N` samples per method with classes cycling 0..9, plus held-out real MNIST digits as a second reference."""),
    ("code", MNIST_NAMES + """

clf = embed.load_classifier(zoo.ASSETS / "mnist/classifier")
N = 40 if FAST else 200  # per method; the 50-step teacher dominates the time
labels = torch.arange(N) % 10
images = {}
t0 = time.perf_counter()
for name, m in models.items():
    images[name] = m.sample(labels, seed=0)
x_real, y_real = get_dataset("mnist").sample(N, seed=0, labels=None)
print(f"sampled {N} per method in {time.perf_counter() - t0:.0f} s")"""),
    ("code", """feats = {name: embed.embed(clf, x) for name, x in images.items()}
feats["data (held-out)"] = embed.embed(clf, x_real)
class_of = {name: labels for name in images}
class_of["data (held-out)"] = y_real
acc = {name: metrics.class_accuracy(clf.predict(x), labels) for name, x in images.items()}
print("classifier agrees with the requested class:", {k: round(v, 3) for k, v in acc.items()})
print("feature dimension:", feats[TEACHER].shape[1])"""),
    ("md", """## Projections

All methods are projected together (so the axes are shared), then drawn coloured by method (left) and by class
(right). PCA is linear and keeps global distances; t-SNE keeps neighbourhoods, so class clusters separate and a
collapsed method shows up as small, dense blobs inside each class cluster."""),
    ("code", """names = list(feats)
all_feats = torch.cat([feats[n] for n in names])
all_methods = [n for n in names for _ in range(len(feats[n]))]
all_labels = torch.cat([torch.as_tensor(class_of[n]) for n in names])
viz.embedding_figure(embed.project(all_feats, "pca"), all_methods, all_labels, title="PCA of classifier features")"""),
    ("code", """viz.embedding_figure(embed.project(all_feats, "tsne", seed=0), all_methods, all_labels,
                     title="t-SNE of classifier features")"""),
    ("md", """## Within one class

The projections above mix all ten classes, and the class clusters dominate them: collapse *inside* a class is hard
to see there. Here every model draws `CLASS_N` samples of **one** digit (same noise for every model), and each panel
shows the teacher's cloud (grey circles) against one model's, projected together. The numbers are measured in feature
space against the teacher's samples: **spread** (mean pairwise distance over the teacher's: 1 = as varied as the
teacher, lower = collapsing), **coverage** (share of teacher samples with a model sample among their 5 nearest
neighbours) and the **Vendi** score. Every model has its own colour and marker, including the two Phased DMD students
and the two teachers."""),
    ("code", """CLASS_N = 16 if FAST else 64
class_feats = {}

def features_of_class(digit):
    if digit not in class_feats:
        lab = torch.full((CLASS_N,), int(digit))
        noise_c = torch.randn((CLASS_N, *teacher.shape), generator=torch.Generator().manual_seed(100 + int(digit)))
        class_feats[digit] = {name: embed.embed(clf, m.sample(lab, noise=noise_c)) for name, m in models.items()}
    return class_feats[digit]

def within_class(digit=3, projection="pca"):
    \"\"\"The teacher's cloud against each model's, for one digit, with spread / coverage / Vendi per panel.\"\"\"
    fc = features_of_class(int(digit))
    names_c = list(fc)
    xy = embed.project(torch.cat([fc[n] for n in names_c]), projection, seed=0)
    points = {n: xy[i * CLASS_N:(i + 1) * CLASS_N] for i, n in enumerate(names_c)}
    ref_c = fc[TEACHER]
    scores = {n: {"spread": metrics.pairwise_distance(f) / metrics.pairwise_distance(ref_c),
                  "coverage": metrics.prdc(ref_c, f, k=5)["coverage"],
                  "Vendi": metrics.vendi_score(f)} for n, f in fc.items()}
    display(viz.class_embedding_figure(points, reference=TEACHER, scores=scores,
                                       title=f"digit {digit}: {projection.upper()} of classifier features, "
                                             f"{CLASS_N} samples per model"))

within_class()  # the default values, as a static figure
interact(within_class, digit=widgets.IntSlider(value=3, min=0, max=9, description="digit"),
         projection=widgets.Dropdown(options=["pca", "tsne"], value="pca", description="projection"));"""),
    ("md", """## Metrics against the teacher

Per method: mean over classes of the within-class pairwise cosine similarity and Vendi score
(`metrics.per_class`), and precision / recall / density / coverage with the 50-step teacher's samples as the
reference (`metrics.prdc`, k = 5)."""),
    ("code", MD_TABLE_HELPER + """

from IPython.display import Markdown

ref = feats[TEACHER]
table = {}
for name, f in feats.items():
    cos = metrics.per_class(metrics.pairwise_cosine_similarity, f, class_of[name])
    vendi = metrics.per_class(metrics.vendi_score, f, class_of[name])
    row = {"cosine sim (within class)": float(np.mean(list(cos.values()))),
           "Vendi (within class)": float(np.mean(list(vendi.values())))}
    row.update(metrics.prdc(ref, f, k=5))
    table[name] = row
cols = ["cosine sim (within class)", "Vendi (within class)", "precision", "recall", "density", "coverage"]
display(Markdown(markdown_table(table, cols)))"""),
    ("code", """viz.metrics_bar_figure(table, ["cosine sim (within class)", "Vendi (within class)", "recall",
                               "coverage"], title="diversity vs the 50-step teacher")"""),
    ("md", """**What mode collapse looks like here.** Compare each student's row with the teacher's: a collapsed student
has a *higher* within-class cosine similarity and a *lower* Vendi score than the teacher, and its recall and coverage
against the teacher drop (it reaches only part of the teacher's distribution) while precision can stay high. The
teacher scores perfectly against itself (recall = coverage = 1), and the held-out data row shows how far a model can
sit from the teacher while being real. The 4-step teacher is the undistilled speed baseline:
its failure is fidelity (blurry strokes, see notebook 04), not collapse. The grid in notebook 04 (class 3, ten noises)
shows diversity by eye."""),
]

# ---------------------------------------------------------------------------------------------
NB06 = [
    ("md", """# 06 · Masked diffusion and D-MMD: ghost modes, and a distillation that removes them

The other notebooks distil continuous flow models. This one is about **discrete** diffusion: every sample is a
sequence of tokens, and noise is a **mask**. It uses the kit's masked-diffusion code (`pdmd_lab.discrete`) and the
shipped D-MMD students in `assets/models/ring-mix-tokens` and `assets/models/mnist-binary`.

* the conventions of masked (absorbing-state) diffusion and its `k`-step ancestral sampler;
* why few-step masked sampling fails: tokens revealed in the same step are drawn **independently**, so the exact
  `k`-step law is `(1/k) P1 x P2 + (1 - 1/k) P` and a ring of 8 modes grows a grid of **ghost modes**;
* **D-MMD** (Hoogeboom et al. 2026, "Beyond Single Tokens: Distilling Discrete Diffusion Models via Discrete MMD"),
  which distils the teacher into a `k`-step generator with a **Gaussian noise input**, and the ablation without it;
* the same students on binarised MNIST.

The toy `ring-mix-tokens` has an exact oracle, so every number here is measured against the true joint, not
against another model."""),
    ("code", IMPORTS + """
from pdmd_lab.data import ring_mix_tokens  # the exact joint of the two-token toy
from pdmd_lab.discrete import dmmd, masking
from pdmd_lab.discrete import metrics as dmetrics
from pdmd_lab.families import tokens as token_figures  # the token family's figures

N = 8_000 if FAST else 40_000  # token pairs per model: the TV of N exact draws is the noise floor printed below"""),
    ("md", """## Masked diffusion in three lines

* Tokens `0..V-1`; the mask token is `V`. A `ring-mix-tokens` sample is **two tokens** `(a, b)`: the grid cells
  (`V = 32` per axis) of a `ring-mix` point.
* Time `t ∈ [0, 1]`, `t = 1` all masked. Forward: each position keeps its token with probability
  `alpha_t = 1 - t`, else becomes the mask.
* Reverse, from `t` to `s < t`: a masked position is revealed with probability `r(s, t) = (alpha_s - alpha_t) /
  (1 - alpha_t) = (t - s) / t`; its token is drawn from the denoiser's categorical `x_hat(z_t)` (the teacher's
  best guess of the clean token given what is visible). The `k`-step sampler runs this on `t_j = j / k`: NFE = k.

From scratch, then against `masking.reveal_probability`; and a Monte Carlo check that masking to `t` and then
revealing to `s` leaves a share `s` of the positions masked (the forward law at `s`)."""),
    ("code", """V = get_dataset("ring-mix-tokens").vocab_size
for s, t in [(0.0, 0.5), (0.25, 0.5), (0.5, 0.75), (0.7, 1.0)]:
    r_scratch = ((1 - s) - (1 - t)) / (1 - (1 - t))
    assert abs(r_scratch - masking.reveal_probability(s, t)) < 1e-12
    assert abs(r_scratch - (t - s) / t) < 1e-12

g = torch.Generator().manual_seed(0)
x, _ = get_dataset("ring-mix-tokens").sample(200_000, seed=0)
for s, t in [(0.25, 0.5), (0.5, 0.9)]:
    z_t = masking.mask_tokens(x, t, V, g)
    z_s = masking.reveal(z_t, x, s, t, V, g)
    print(f"s = {s}, t = {t}: masked share at t {float((z_t == V).float().mean()):.4f} (expect {t}), "
          f"after revealing to s {float((z_s == V).float().mean()):.4f} (expect {s})")
print("r(s, t) from scratch matches masking.reveal_probability")"""),
    ("md", """## The toy and its exact joint

`ring-mix` (8 Gaussian modes on a ring, 4 classes of 3 modes with weights 0.5 / 0.3 / 0.2) discretised on a
`32 x 32` grid: `P(a, b | c)` is a table (`ring_mix_tokens()`, smoothed so that no cell is exactly 0). Each
Gaussian mode is a product on the grid, so the joint is a **mixture of products**:
`P(a, b | c) = sum_j w_cj first_j(a) second_j(b)`. From scratch, against the library's table: """),
    ("code", """joint = ring_mix_tokens(V)
P = {c: joint.table(c) for c in range(joint.num_classes)}
for c in range(joint.num_classes):
    mixture = sum(joint.weights[c, j] * torch.outer(joint.first[j], joint.second[j]) for j in range(len(joint.first)))
    assert torch.allclose(mixture, P[c], atol=1e-12)
print(f"V = {V}: {joint.num_classes} classes, {len(joint.first)} product components per class "
      "(8 modes and the smoothing), each class's table sums to", [round(float(P[c].sum()), 6) for c in P])

OFF = 1e-4  # a cell 'outside the modes': the true joint puts less than this there
def ghost_mass(h, c):
    \"\"\"Share of a class-c histogram or law on cells where the true joint is below OFF.\"\"\"
    return float(h[P[c] < OFF].sum())

def heatmaps(tables: dict, title: str):
    \"\"\"Square heatmaps of V x V tables on one colour scale (first token across, second up).\"\"\"
    fig, axes = plt.subplots(1, len(tables), figsize=(2.5 * len(tables), 2.8), layout="constrained")
    vmax = max(float(np.quantile(t.numpy(), 0.995)) for t in tables.values())
    for ax, (name, tab) in zip(np.atleast_1d(axes), tables.items()):
        ax.imshow(tab.numpy().T, origin="lower", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=8); ax.set_xticks([]); ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    plt.close(fig)
    return fig

print("true joint: mass outside the modes, per class", [round(ghost_mass(P[c], c), 4) for c in P])
heatmaps({f"class {c}": P[c] for c in P}, "the true joint P(a, b | c) of ring-mix-tokens")"""),
    ("md", """## Why few steps fail: the exact `k`-step law

With the exact denoiser (the oracle: at `(mask, mask)` the marginals `P1`, `P2`; with one token visible, the exact
conditional of the other), the `k`-step sampler is still wrong. Each token's reveal step is uniform on the `k`
steps and independent of the other's. With probability `1/k` both are revealed in the **same** step and drawn
independently from their marginals: the product `P1 x P2`. Otherwise the later one is drawn from the exact
conditional. So the `k`-step law is

`Q_k = (1/k) P1 x P2 + (1 - 1/k) P`,  and  `TV(Q_k, P) = TV(P1 x P2, P) / k`.

For a ring, `P1 x P2` puts mass on every pair of a mode's `a` and another mode's `b`: **ghost modes** off the ring,
the discrete cousin of the blur of a few-step continuous sampler. From scratch, checked against
`TokenJoint.k_step_law`:"""),
    ("code", """c = 0
p1, p2 = P[c].sum(1), P[c].sum(0)
laws = {}
for k in (1, 2, 4, 8):
    laws[k] = torch.outer(p1, p2) / k + (1 - 1 / k) * P[c]
    assert torch.allclose(laws[k], joint.k_step_law(k, c), atol=1e-12)
    print(f"k = {k}: TV(Q_k, P) = {dmetrics.total_variation(laws[k], P[c]):.4f}   "
          f"mass on ghost cells {ghost_mass(laws[k], c):.3f}")
heatmaps({"true joint": P[c], **{f"Q_{k} (k = {k})": laws[k] for k in laws}},
         f"class {c}: the exact k-step law of the exact teacher (ghost modes off the ring)")"""),
    ("md", """The formula is a claim about the sampler, so we check it on samples. The `k`-step teacher
(`zoo.load("ring-mix-tokens/teacher")`, the oracle run by the masked ancestral sampler) draws `N` pairs per
`k`; its histogram should sit at `Q_k` up to sampling noise (the **floor**: the mean TV between a law and the
histogram of as many exact draws from it, `metrics.tv_noise_floor`), and far from `P`: its TV to `P` is the exact
`TV(Q_k, P)` plus sampling noise. Classes cycle 0..3."""),
    ("code", """teacher = zoo.load("ring-mix-tokens/teacher")
labels = torch.arange(N) % joint.num_classes
floor = dmetrics.tv_noise_floor(P[0], N // joint.num_classes)
print(teacher.describe(), f"| noise floor of TV at {N // joint.num_classes} pairs per class: {floor:.4f}")
teacher_samples = {}
for k in (1, 2, 4, 8):
    teacher_samples[k] = teacher.with_steps(k).sample(labels, seed=0)
    to_law = dmetrics.joint_distances(teacher_samples[k], labels, joint, reference=lambda c: joint.k_step_law(k, c))
    to_p = dmetrics.joint_distances(teacher_samples[k], labels, joint)
    floor_k = np.mean([dmetrics.tv_noise_floor(joint.k_step_law(k, c), N // joint.num_classes) for c in P])
    print(f"teacher, {k} step(s): TV to Q_k {to_law['tv']:.4f} (noise floor for Q_k {floor_k:.4f})  |  "
          f"TV to the true joint {to_p['tv']:.4f} (exact: "
          f"{np.mean([dmetrics.total_variation(joint.k_step_law(k, c), P[c]) for c in P]):.4f})")"""),
    ("md", """## D-MMD: distilling the `k`-step sampler

D-MMD (discrete moment matching) trains a `k`-step **generator** `x_eta` against the frozen teacher `x_theta` with
an **auxiliary** denoiser `x_phi`, both starting from the teacher. One iteration: draw `s`, `t = min(1, s + delta)`
with `delta ~ U(0, 1/k)`; noise **data** to `z_t`; the generator predicts `p = x_eta(z_t, t, eps)`; draw `x ~ p` and
reveal `z_s`. Then, in turn:

* generator step: on the positions still masked in `z_s`,
  `L_gen = sum_c p_c (sg(log x_phi(z_s))_c - sg(log x_theta(z_s))_c)`, differentiable in `p` (no REINFORCE);
* auxiliary step: `L_aux = CE(y | x_phi(z_s)) + CE(x_theta(z_s) | x_phi(z_s))` with `y = sg(p)` (soft target).

The auxiliary's optimum is the average of the generator's and the teacher's denoisers, so `L_gen` pushes the
generator until its samples are consistent with the teacher: the **joint** the teacher's many-step sampler draws,
not its per-step factorised guess. The generator objective from scratch, against `dmmd.generator_objective`:"""),
    ("code", """g = torch.Generator().manual_seed(1)
p = torch.softmax(torch.randn(5, 2, V, generator=g), -1)
logp_aux, logp_teacher = (torch.log_softmax(torch.randn(5, 2, V, generator=g), -1) for _ in range(2))
masked = torch.rand(5, 2, generator=g) < 0.6
masked[:, 0] = True  # at least one masked position per sample
per_pos = (p * (logp_aux - logp_teacher)).sum(-1)  # (B, 2)
scratch = (per_pos * masked).sum(1) / masked.sum(1)
assert torch.allclose(scratch, dmmd.generator_objective(p, logp_aux, logp_teacher, masked), atol=1e-6)
print("L_gen from scratch matches dmmd.generator_objective:", [round(float(v), 4) for v in scratch])"""),
    ("md", """### Why the generator needs a noise input

A `k = 1` generator sees only `(mask, mask)`. Without extra randomness its output is one categorical per position,
and the two tokens are drawn independently: whatever it learns, its samples follow a **product** `q1 x q2`, never a
ring. With a Gaussian noise input `eps`, the output `p(eps)` is a product for each `eps`, and the law of its samples
is a **mixture** of products over `eps`: exactly the form of the true joint above. An ideal generator would read
the mode `j` from `eps` and output its two factors. That ideal generator, from scratch (its `eps` picks the
component through the inverse CDF of the class's weights), samples the true joint in one step:"""),
    ("code", """def ideal_one_step(labels, seed=0):
    \"\"\"One step from (mask, mask): the noise picks a product component, the tokens are drawn from its factors.\"\"\"
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(len(labels), generator=g, dtype=torch.float64)
    u = 0.5 * (1 + torch.erf(eps / 2**0.5))  # eps -> U(0, 1)
    cdf = joint.weights[labels].cumsum(1)
    comp = (cdf < u[:, None]).sum(1).clamp(max=len(joint.first) - 1)
    a = torch.multinomial(joint.first[comp], 1, generator=g)[:, 0]
    b = torch.multinomial(joint.second[comp], 1, generator=g)[:, 0]
    return torch.stack([a, b], 1)

ideal = ideal_one_step(labels)
d = dmetrics.joint_distances(ideal, labels, joint)
print(f"ideal 1-step generator with a noise input: TV {d['tv']:.4f} (noise floor {floor:.4f}); "
      f"the 1-step teacher: TV {dmetrics.joint_distances(teacher_samples[1], labels, joint)['tv']:.4f}")"""),
    ("md", """## The shipped D-MMD students remove the ghosts

`assets/models/ring-mix-tokens/` ships D-MMD students at `k = 1, 2, 4`, each with the noise input (8 Gaussian
dimensions) and without it (the ablation), distilled from the oracle teacher (1,200 updates each). Every model
draws the same labels; the table gives the exact TV and `KL(histogram || P)` to the true joint and the mass on ghost
cells (lower is better for these three), and, counting the tokens' cells as points of `ring-mix`, the modes
each class covers (of the 12 class-mode pairs; at least 2% of a class's samples within 3 standard deviations) and
the KL of the class's mode histogram to the data's mode weights (lower is better), as in notebook 03."""),
    ("code", MD_TABLE_HELPER + """

from IPython.display import Markdown

available = set(zoo.list_models())
students = {}
for k in (1, 2, 4):
    for suffix in ("", "-no-noise"):
        name = f"ring-mix-tokens/d-mmd-{k}s{suffix}"
        if name in available:
            students[k, suffix] = zoo.load(name)
missing = [f"d-mmd-{k}s{s}" for k in (1, 2, 4) for s in ("", "-no-noise") if (k, s) not in students]
if missing:
    print("not shipped (skipped):", missing)

ring = get_dataset("ring-mix").gmm  # the continuous mixture the tokens discretise: its modes, for counting

def scores(x):
    d = dmetrics.joint_distances(x, labels, joint)
    ghost = np.mean([ghost_mass(dmetrics.joint_histogram(x[labels == c], V), c) for c in P])
    cov = metrics.mode_coverage(ring, joint.to_points(x), labels)  # cell centres as points
    return {"TV": d["tv"], "KL": d["kl"], "ghost mass": float(ghost),
            "modes covered": f"{cov['modes_covered']}/{cov['modes_expected']}", "mode KL": cov["kl"]}

student_samples, table = {}, {}
for k in (1, 2, 4):
    table[f"teacher, {k} step(s)"] = {"NFE": k, **scores(teacher_samples[k])}
    for suffix, what in (("", "D-MMD"), ("-no-noise", "D-MMD without noise input")):
        if (k, suffix) in students:
            student_samples[k, suffix] = students[k, suffix].sample(labels, seed=0)
            table[f"{what}, {k} step(s)"] = {"NFE": k, **scores(student_samples[k, suffix])}
table["teacher, 8 steps"] = {"NFE": 8, **scores(teacher_samples[8])}
table["exact draws (floor)"] = {"NFE": "-", **scores(ideal)}
display(Markdown(markdown_table(table, ["NFE", "TV", "KL", "ghost mass", "modes covered", "mode KL"])))
for k in (1, 2, 4):  # the claims of the next paragraph, checked on these samples
    if (k, "") in students:
        assert table[f"D-MMD, {k} step(s)"]["TV"] < table[f"teacher, {k} step(s)"]["TV"] / 2
        assert table[f"D-MMD, {k} step(s)"]["ghost mass"] < table[f"teacher, {k} step(s)"]["ghost mass"] / 5
    if (1, "-no-noise") in students and (1, "") in students:
        assert table["D-MMD without noise input, 1 step(s)"]["TV"] > 3 * table["D-MMD, 1 step(s)"]["TV"]"""),
    ("code", """rows = {}
for k in (1, 2, 4):
    rows[k] = {f"teacher, {k} step(s)": (teacher_samples[k], labels)}
    for suffix, what in (("", "D-MMD"), ("-no-noise", "D-MMD, no noise")):
        if (k, suffix) in student_samples:
            rows[k][what] = (student_samples[k, suffix], labels)
token_figures.steps_comparison_figure(rows, label=0, title="class 0: the k-step teacher, D-MMD and D-MMD without "
                                      "the noise input (TV over all classes)")"""),
    ("md", """**Reading the table** (the cell above asserts the comparisons made here). The `k`-step teacher's TV is the
exact `TV(P1 x P2, P) / k` plus sampling noise, and about half of its one-step mass sits on ghost cells, though it
still covers every mode. The D-MMD students with the noise input cut the TV and the ghost mass by large factors at
the same NFE: the one-step student is about as close to the true joint as the 8-step teacher. Without the noise input
the ghosts are gone too, but for the wrong reason: a product of two categoricals cannot draw a ring, so the
one-step student puts its mass on a product that sits on a single mode per class and **drops the others** (look
at its modes covered and mode KL): the discrete form of the mode collapse of notebook 03. With more steps the
no-noise students can condition later tokens on revealed ones, yet at `k = 2` and `4` their TV is even above the
teacher's at the same NFE. The paper reports the same ablation on CIFAR-10 (4-step FID 151 without the noise input, 22
with it)."""),
    ("md", """### Try it: steps `k` and guidance

Left to right: the true joint of one class, the exact `k`-step teacher at the CFG scale you pick (guidance on
logits, `l = l_u + w (l_c - l_u)`, `w = 1` none), its exact law `Q_k` without guidance, and the D-MMD student of
that `k` with and without the noise input when one is shipped (students are distilled at CFG 1 and drawn so).
Guidance sharpens each class towards its class-specific modes: the TV to the class's true joint grows with `w`,
whatever `k`. The figure under this cell is for the default values; the controls under it redraw it in Jupyter."""),
    ("code", """N_CONTROL = 4_000 if FAST else 20_000

def k_and_cfg(k=1, cfg=1.0, label=0):
    \"\"\"One class: the true joint, the k-step teacher at CFG `cfg`, its exact law Q_k, and the D-MMD students.\"\"\"
    k, label = int(k), int(label)
    lab = torch.full((N_CONTROL,), label)
    x_t = teacher.with_steps(k, cfg=float(cfg)).sample(lab, seed=1)
    h_t = dmetrics.joint_histogram(x_t, V)
    tables = {"true joint": P[label],
              f"teacher, {k} step(s), CFG {cfg:g}\\nTV {dmetrics.total_variation(h_t, P[label]):.3f}": h_t,
              f"exact law Q_{k} (CFG 1)\\nTV {dmetrics.total_variation(joint.k_step_law(k, label), P[label]):.3f}":
                  joint.k_step_law(k, label)}
    for suffix, what in (("", "D-MMD"), ("-no-noise", "D-MMD, no noise")):
        if (k, suffix) in students:
            h = dmetrics.joint_histogram(students[k, suffix].sample(lab, seed=1), V)
            tables[f"{what}, {k} step(s)\\nTV {dmetrics.total_variation(h, P[label]):.3f}"] = h
    if len(tables) == 3:
        print(f"no D-MMD student is shipped for k = {k} (shipped: k = {sorted({kk for kk, _ in students})})")
    display(heatmaps(tables, f"class {label}, {N_CONTROL} pairs per model (TV to the class's true joint)"))

k_and_cfg()  # the default values, as a static figure
interact(k_and_cfg, k=widgets.IntSlider(value=1, min=1, max=16, description="steps k"),
         cfg=widgets.FloatSlider(value=1.0, min=0.0, max=5.0, step=0.25, description="CFG"),
         label=widgets.IntSlider(value=0, min=0, max=3, description="class"));"""),
    ("md", """## Binarised MNIST

`mnist-binary` is MNIST thresholded to black and white: 784 tokens with `V = 2`, a small masked-diffusion UNet
teacher (`mnist-binary/teacher`), and D-MMD students at `k = 8` and `k = 4` steps (`mnist-binary/d-mmd-8s`,
`d-mmd-4s`). Each column is one class with one seed. At 8 and 4 steps the teacher reveals about 100 and 200 pixels
per step independently: speckle and broken strokes; the students draw whole strokes. The shipped classifier's
accuracy on the requested class and the mean Hamming distance between samples of a class (the share of pixels two
samples differ in: diversity, higher is more varied) are printed for each row."""),
    ("code", """from pdmd_lab.embed import load_classifier

clf = load_classifier(zoo.ASSETS / "mnist/classifier")
FULL = 20 if FAST else 100  # the teacher's many-step reference (the tests' fast mode cuts it)
PER_CLASS = 2 if FAST else 4
mnist_teacher = zoo.load("mnist-binary/teacher")
mnist_models = {f"teacher, {k} steps": mnist_teacher.with_steps(k) for k in (FULL, 8, 4)}
for k in (8, 4):
    if f"mnist-binary/d-mmd-{k}s" in available:
        mnist_models[f"D-MMD, {k} steps"] = zoo.load(f"mnist-binary/d-mmd-{k}s")
mnist_labels = torch.arange(10).repeat(PER_CLASS)
grids = {}
t0 = time.perf_counter()
for name, m in mnist_models.items():
    grids[name] = m.sample(mnist_labels, seed=0)
    acc = metrics.class_accuracy(clf.predict(dmetrics.to_images(grids[name])), mnist_labels)
    ham = np.mean([dmetrics.hamming_diversity(grids[name][mnist_labels == c]) for c in range(10)])
    print(f"{name:18s} NFE {m.nfe:3d}  classifier accuracy {acc:.2f}  Hamming diversity within a class {ham:.3f}")
print(f"sampled {len(mnist_labels)} images per model in {time.perf_counter() - t0:.0f} s")
token_figures.grid_figure({n: x[:10] for n, x in grids.items()},
                          captions={n: f"NFE {m.nfe}" for n, m in mnist_models.items()},
                          title="binarised MNIST, one seed per class")"""),
    ("md", """## Summary

* Masked diffusion with few steps draws tokens revealed together **independently**; for two tokens the damage is
  exact: `Q_k = (1/k) P1 x P2 + (1 - 1/k) P`, ghost modes with a share `1/k` of the mass.
* D-MMD trains a `k`-step generator whose samples agree with the teacher's denoiser, and a Gaussian noise input
  lets one step draw a **mixture** of products instead of one product: the ghosts go away at the same NFE.
* Without the noise input the one-step student is stuck with a product distribution: the ablation shows it.

`pdmd-lab evaluate --models ring-mix-tokens/d-mmd-1s,ring-mix-tokens/d-mmd-1s-no-noise --n 40000` scores these
models next to their teacher at `k`, `4k` and 100 steps, and `pdmd-lab figures --family ring-mix-tokens` draws the
figure above for every shipped `k`."""),
]

# ---------------------------------------------------------------------------------------------
NB07 = [
    ("md", """# 07 · Motion: where a clip's motion is decided, and which students keep it

The Phased DMD paper's video results (Wan2.1 T2V) measure **motion**: the mean optical flow of the generated clips
(10.26 for the base model, 3.23 for DMD2-SGTS, 9.30 for Phased DMD) and the **dynamic degree**, the share of clips
that move (79.6%, 65.5%, 82.3%). Its explanation: the motion of a video is laid down in the first, high-noise
steps, and a few-step student that compresses those steps loses it.

`motion-mix` is the kit's toy for that claim (`pdmd_lab.motion`): a sample is a clip of a point, 8 frames in 2D
(stored flat, 16 numbers), drawn from 9 **motion modes**: still, slow or fast in 4 directions. The 4 classes are
directions; every class shares the still mode, and each slow mode is shared by two classes. Like `ring-mix`, it is
an exact Gaussian mixture (one full covariance per mode), so the teacher is an exact oracle and the posterior over
motion modes is known at every noise level.

* **mean flow**: the mean over clips and frames of `|p_{f+1} - p_f|` (exact, from coordinates);
* **dynamic degree**: the share of clips whose own mean flow exceeds `motion.DYNAMIC_THRESHOLD` (half the slow speed);
* **motion-mode KL**: each clip goes to its most likely mode; per class, `KL(teacher || model)` of the histograms."""),
    ("code", IMPORTS + """
import io

from IPython.display import Markdown

from pdmd_lab import motion

ds = get_dataset("motion-mix")
mix = ds.gmm  # motion.TrajectoryMixture: exact velocity and posterior over motion modes
print(ds.description)
print("motion modes:", mix.mode_names)
print(f"dynamic threshold: {motion.DYNAMIC_THRESHOLD:g} per frame; slow speed {motion.SLOW:g}, fast {motion.FAST:g}")
N = 1000 if FAST else 4000
labels = torch.arange(N) % ds.num_classes

def show_clips(rows: dict, n: int = 6, size: int = 48):
    \"\"\"Clips as one animated GIF: a row of `n` clips per model (`motion.render_frames`: a white dot on black).\"\"\"
    from PIL import Image as PILImage
    strips = []
    for x in rows.values():
        clips = [np.pad(motion.render_frames(c, size), ((0, 0), (0, 2), (0, 2)), constant_values=90)
                 for c in motion.as_frames(x[:n])]
        strips.append(np.concatenate(clips, 2))  # (T, H, W * n)
    frames = np.concatenate(strips, 1)  # models stacked top to bottom
    buf = io.BytesIO()
    PILImage.fromarray(frames[0]).save(buf, format="GIF", save_all=True, duration=150, loop=0,
                                       append_images=[PILImage.fromarray(f) for f in frames[1:]])
    print("rows, top to bottom:", ", ".join(rows))
    display(Image(data=buf.getvalue(), format="gif"))"""),
    ("md", """## The data

Clips of each class (columns: 4 clips of class 0, "right", ...). The still figure superimposes the 8 frames with
older frames dimmer (`motion.clips_figure`); the GIF plays them."""),
    ("code", """x_data, y_data = ds.sample(N, seed=0, labels=None)
per_class = {f"data, class {c} ({motion.DIRECTIONS[c]})": x_data[y_data == c] for c in range(ds.num_classes)}
print(f"data: mean flow {motion.mean_flow(x_data):.3f}, dynamic degree {motion.dynamic_degree(x_data):.3f}")
motion.clips_figure(per_class, n=6, title="motion-mix data: 6 clips per class, frames superimposed (older dimmer)")"""),
    ("code", """show_clips(per_class)"""),
    ("md", """## Where the motion type is decided along `t`

The oracle's posterior over modes, `P(mode | x_t, class)`, says how much a noisy clip `x_t` already tells about
its motion. From scratch: a mode `k` noised to `t` is Gaussian with mean `(1 - t) mu_k` and covariance
`(1 - t)^2 Sigma_k + t^2 I`; the posterior is the softmax over `k` of `log w_ck + log N(x_t; ...)`. Checked against
`TrajectoryMixture.posterior`:"""),
    ("code", """x0, lab0, modes0 = mix.sample(200, seed=1, return_modes=True)
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
for t in (0.3, 0.6, 0.9):
    x_t = (1 - t) * x0.double() + t * eps
    noised_cov = (1 - t) ** 2 * mix.covs + t**2 * torch.eye(mix.dim, dtype=torch.float64)  # (K, D, D)
    logp = torch.distributions.MultivariateNormal((1 - t) * mix.means, noised_cov).log_prob(x_t[:, None])  # (B, K)
    scratch = torch.softmax(logp + torch.log(mix.mode_weights(lab0).clamp_min(1e-300)), 1)
    assert torch.allclose(scratch, mix.posterior(x_t, t, lab0), atol=1e-8)
print("posterior over motion modes from scratch matches TrajectoryMixture.posterior")"""),
    ("md", """Averaged over clean clips noised to each `t`: the posterior mass on the clip's own motion **type** (still,
slow, fast; directions summed), with the 4 phases of a 4-step / 4-phase student shaded. A type is **decided**
once that mass passes 0.9 (`motion.commitment_times`)."""),
    ("code", """ts_grid = np.linspace(0.99, 0.01, 50)
post = motion.motion_type_posterior(mix, ts_grid, n=N)
decided = motion.commitment_times(mix, n=N)
bounds = flow.phase_boundaries(4, 4).numpy()
fig, ax = plt.subplots(figsize=(7.5, 3.4))
for k in range(4):
    ax.axvspan(bounds[k + 1], bounds[k], color=("#dbe6f4", "#f8e3cf")[k % 2], lw=0)
    ax.text((bounds[k] + bounds[k + 1]) / 2, 1.02, f"phase {k + 1}", ha="center", fontsize=8)
for kind, curve in post.items():
    line, = ax.plot(ts_grid, curve, lw=2, label=f"{kind}: decided at t = {decided[kind]:.2f}")
    ax.axvline(decided[kind], color=line.get_color(), lw=0.8, ls=":")
ax.axhline(0.9, color="black", lw=0.6, ls="--")
ax.set_xlim(1, 0); ax.set_ylim(0, 1.08)
ax.set_xlabel("t (noise to data)"); ax.set_ylabel("posterior mass on the clip's own type")
ax.legend(fontsize=8, loc="lower right")
ax.set_title("motion-mix: the exact posterior over motion types along t", fontsize=10)
plt.close(fig)
print("decided at t =", {k: round(v, 2) for k, v in decided.items()})
assert all(0.25 < v < 0.75 for v in decided.values()) and decided["fast"] == max(decided.values())  # next paragraph
fig"""),
    ("md", """The motion type is settled in the middle of the noise range, around log-SNR 0, fast clips first (the cell
above asserts it): in a 4-step sampler the **first two or three steps** decide whether a clip moves, and in a
4-phase student those steps belong to experts 2 and 3. That is where a student that shares one network across all
steps, or jumps in one step, can trade motion for something easier to match."""),
    ("md", """## The teacher at 50 and 4 steps, and its guidance

`zoo.load("motion-mix/teacher")` is the oracle with 50 Euler steps and CFG 1.5 (the real score of the motion-mix
recipes). With only 4 steps the same teacher is no longer exact. The table scores both against the 50-step teacher,
with the teacher at CFG 1 (no guidance) and 3: guidance suppresses the shared still mode, so it raises the dynamic
degree before any distillation."""),
    ("code", MD_TABLE_HELPER + """

teacher = zoo.load("motion-mix/teacher")
print(teacher.describe())
x_ref = teacher.sample(labels, seed=0)
clips = {"teacher 50 steps": x_ref}
teachers = {"teacher 4 steps": teacher.with_steps(4), "teacher 1 step": teacher.with_steps(1),
            **{f"teacher 50 steps, CFG {w:g}": teacher.with_steps(50, cfg=w) for w in (1.0, 3.0)}}
clips.update({name: m.sample(labels, seed=0) for name, m in teachers.items()})

COLUMNS = ["mean_flow", "dynamic_degree", "mode_kl", "motion_modes_missed", "still_share", "fast_share"]
def motion_table(samples: dict) -> dict:
    return {name: {k: v for k, v in motion.score(mix, x, labels, x_ref).items() if k in COLUMNS}
            for name, x in samples.items()}

teacher_rows = motion_table(clips)
display(Markdown(markdown_table({"data": {"mean_flow": motion.mean_flow(x_data),
                                          "dynamic_degree": motion.dynamic_degree(x_data)},
                                 **teacher_rows}, COLUMNS)))
# the claims of the next paragraph, checked on these samples
assert teacher_rows["teacher 4 steps"]["still_share"] < teacher_rows["teacher 50 steps"]["still_share"] / 2
assert teacher_rows["teacher 4 steps"]["dynamic_degree"] > teacher_rows["teacher 50 steps"]["dynamic_degree"]
assert (teacher_rows["teacher 50 steps, CFG 1"]["still_share"] > teacher_rows["teacher 50 steps"]["still_share"]
        > teacher_rows["teacher 50 steps, CFG 3"]["still_share"])"""),
    ("md", """**Reading the table.** Guidance alone moves the motion: from CFG 1 to 1.5 to 3 the share of still clips
falls and the dynamic degree and mean flow rise, because the still mode is shared by every class and CFG
suppresses shared modes. Fewer steps move it too, without any distillation: the 4-step teacher (same oracle, same
CFG) nearly loses the still clips, so its dynamic degree rises above the 50-step teacher's and its motion-mode KL
grows, while its mean flow is a little lower (compare the two rows above: its moving clips move more slowly). The
two motion numbers can move in opposite directions, and each is only good when it matches the teacher's."""),
    ("md", """## The distilled students

Students of the motion-mix recipes (`pdmd_lab.recipes`: DMD 1 step, DMD2-SGTS, DP-DMD and Phased DMD 4s/4p, each
at its reference weighting, 600 generator updates from the CFG 1.5 oracle) load by name once shipped in
`assets/models/motion-mix/`; every one draws the same labels and seed, and is scored against the 50-step teacher.
Higher is not better for flow and dynamic degree: the goal is the **teacher's** value (a student that moves too
much is as wrong as one that stands still)."""),
    ("code", """student_names = [n for n in zoo.list_models() if n.startswith("motion-mix/") and "teacher" not in n]
students = {n.split("/")[1]: zoo.load(n) for n in student_names}
if not students:
    print("no motion-mix student is shipped in this checkout: build them with "
          "`pdmd-lab build-zoo --only motion-mix/phased-dmd-4s4p` (and the other motion-mix recipes)")
student_clips = {name: m.sample(labels, seed=0) for name, m in students.items()}
rows = {"teacher 50 steps": x_ref, "teacher 4 steps": clips["teacher 4 steps"], **student_clips}
display(Markdown(markdown_table(motion_table(rows), COLUMNS)))
motion.clips_figure({name: x[labels == 0] for name, x in rows.items()}, n=6,
                    title="class 0 (right): 6 clips per model, same seeds")"""),
    ("code", """show_clips({name: x[labels == 0] for name, x in rows.items()})"""),
    ("md", """### Try it: steps and guidance of the teacher

The teacher with the number of Euler steps and the CFG scale you pick, scored against the 50-step, CFG 1.5 teacher
(mean flow and dynamic degree beside the reference's), with its clips of one class. The figure under this cell is
for the default values; the controls under it redraw it in Jupyter."""),
    ("code", """def steps_and_cfg(steps=4, cfg=1.5, label=0):
    \"\"\"The oracle teacher at `steps` Euler steps and CFG `cfg`: motion numbers and clips of class `label`.\"\"\"
    x = teacher.with_steps(int(steps), cfg=float(cfg)).sample(labels, seed=0)
    s = motion.score(mix, x, labels, x_ref)
    print(f"{int(steps)} step(s), CFG {cfg:g}: mean flow {s['mean_flow']:.3f} "
          f"(reference {motion.mean_flow(x_ref):.3f}), "
          f"dynamic degree {s['dynamic_degree']:.3f} (reference {motion.dynamic_degree(x_ref):.3f}), "
          f"still share {s['still_share']:.3f}, motion-mode KL {s['mode_kl']:.3f}")
    display(motion.clips_figure({f"{int(steps)} steps, CFG {cfg:g}": x[labels == int(label)],
                                 "reference (50 steps, CFG 1.5)": x_ref[labels == int(label)]}, n=6))

steps_and_cfg()  # the default values, as a static figure
interact(steps_and_cfg, steps=widgets.IntSlider(value=4, min=1, max=50, description="steps"),
         cfg=widgets.FloatSlider(value=1.5, min=0.0, max=5.0, step=0.25, description="CFG"),
         label=widgets.IntSlider(value=0, min=0, max=3, description="class"));"""),
]

NOTEBOOKS = {
    "01_flow_matching_and_snr.ipynb": NB01,
    "02_score_matching_within_subintervals.ipynb": NB02,
    "03_mode_collapse_2d.ipynb": NB03,
    "04_phased_dmd_on_mnist.ipynb": NB04,
    "05_diversity_embeddings.ipynb": NB05,
    "06_masked_diffusion_and_dmmd.ipynb": NB06,
    "07_motion.ipynb": NB07,
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(only=None) -> None:
    for name, cells in NOTEBOOKS.items():
        if only and not any(o in name for o in only):
            continue
        nbformat.write(build(name, cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
