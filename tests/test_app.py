"""The Gradio app, end to end through its HTTP API (``gradio_client``), in-process server.

MNIST is preferred where its models are shipped (small batches: its 50-step teacher is slow on CPU);
ring-mix (exact oracle teacher) always runs. No test asserts a wall-clock time: streaming order and
the teacher cache are checked through what the app sends, so a busy machine cannot fail them.

The discrete D-MMD family ``ring-mix-tokens`` (exact oracle teacher) is in Compare too: its exact TVs
are recomputed here with :mod:`pdmd_lab.discrete.metrics` from the same seed and number of samples.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import app as app_module  # noqa: E402
from app import common, early, live, rows  # noqa: E402

pytestmark = pytest.mark.slow
FAMILIES = [f for f in ("mnist", "ring-mix") if f in app_module.get_zoo().families]
N_SAMPLES = {"mnist": 2, "ring-mix": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    demo = app_module.build_app()
    demo.queue(default_concurrency_limit=8).launch(prevent_thread_lock=True, server_name="127.0.0.1",
                                                   server_port=free_port(), quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def _generate(client, family, seed=0, n=None, cfg=3.0, klass="all"):
    return client.predict(family, klass, seed, N_SAMPLES[family] if n is None else n, cfg, api_name="/generate")


def _image(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_endpoints_listed(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/phases", "/trajectory", "/diversity", "/class_view", "/distill", "/collapse_lab"} <= names


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_panels(client, family):
    out = _generate(client, family)
    assert len(out) == 13  # 6 images, 6 captions, summary
    images, captions = out[:6], out[6:12]
    available = [i for i, c in enumerate(captions) if "not available" not in c]
    assert {0, 1, 2} <= set(available)  # the teacher at 50 and 4 steps and a student at least
    for i in available:
        img = _image(images[i])
        assert img.ndim == 3 and img.shape[0] >= 28 and img.shape[1] >= 28
        assert "NFE" in captions[i] and "ms" in captions[i] and "teacher" in captions[i].lower()
    assert "NFE 100" in captions[0]  # 50 steps with CFG: two evaluations per step
    assert "NFE 1 " in captions[2]  # DMD: one step
    assert "teacher" in out[12].lower() and "same seed" in out[12]


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_seeded(client, family):
    kw = {"n": N_SAMPLES[family] // 4 or 1, "cfg": 1.0 if family == "mnist" else 3.0}  # fast
    a = _generate(client, family, seed=7, **kw)
    b = _generate(client, family, seed=7, **kw)
    c = _generate(client, family, seed=8, **kw)
    for i in (0, 2):  # teacher and DMD panels
        assert np.array_equal(_image(a[i]), _image(b[i]))
        assert not np.array_equal(_image(a[i]), _image(c[i]))


def test_generate_streams_students_before_the_teacher(client):
    job = client.submit("ring-mix", "all", 4242, 8, 3.0, api_name="/generate")  # a seed no other test uses
    job.result()
    updates = [o[6:12] for o in job.outputs()]

    def first(panel):  # index of the first update whose caption of ``panel`` holds a result
        return next(i for i, caps in enumerate(updates) if "NFE" in caps[panel] and "computing" not in caps[panel])

    assert first(2) < first(1) < first(0)  # DMD, then the 4-step teacher, then the 50-step teacher
    assert max(first(i) for i in (2, 3, 4, 5)) < first(0)  # every student before the 50-step teacher
    assert len(updates) >= 7


def test_generate_caches_the_teacher(client):
    a = _generate(client, "ring-mix", seed=99, n=8, klass="2")
    b = _generate(client, "ring-mix", seed=99, n=8, klass="2")
    assert "cached" not in a[6] and "cached" in b[6]
    assert np.array_equal(_image(a[0]), _image(b[0]))
    c = _generate(client, "ring-mix", seed=99, n=8, klass="2", cfg=2.0)  # CFG is part of the key
    assert "cached" not in c[6]


def test_teacher_cache_computes_a_key_once():
    cache = app_module.TeacherCache(maxsize=2)
    calls = []

    def slow():
        calls.append(1)
        threading.Event().wait(0.2)
        return len(calls)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(c for _, c in results) == [False, True, True, True]
    cache.get_or_compute("a", lambda: 1)
    cache.get_or_compute("b", lambda: 2)
    assert "k" not in cache and len(cache) == 2  # least recently used goes first


@pytest.mark.parametrize("args, message", [
    ({"seed": -1}, "seed"), ({"seed": 2**31}, "seed"), ({"n": 0}, "number of samples"),
    ({"n": 8193}, "number of samples"), ({"cfg": 11.0}, "CFG"), ({"klass": "99"}, "class"), ({"seed": 1.5}, "seed"),
])
def test_generate_rejects_bad_values(client, args, message):
    with pytest.raises(Exception, match=message):
        _generate(client, "ring-mix", **args)


def test_phases(client):
    fig_p, fig_s, text, fig_d = client.predict(8, 4, 3.0, api_name="/phases")
    assert fig_p and fig_s and fig_d and "phase boundaries" in text
    with pytest.raises(Exception, match="divide"):
        client.predict(4, 3, 1.0, api_name="/phases")


@pytest.mark.parametrize("family", FAMILIES)
def test_trajectory_and_animation(client, family):
    student, teacher, gif = client.predict(family, "phased-dmd-4s4p", "1", 3, 2, api_name="/trajectory")
    assert student and teacher
    img = Image.open(gif)
    assert img.format == "GIF" and img.n_frames > 4  # noise -> 4 steps, interpolated frames


def test_diversity(client):
    fig, table = client.predict("ring-mix", ["teacher@4", "dmd-1s", "phased-dmd-4s4p"], 40, "pca", 0, False,
                                api_name="/diversity")
    assert fig and "phased-dmd-4s4p" in table and "Vendi" in table
    with pytest.raises(Exception, match="samples per method"):
        client.predict("ring-mix", ["dmd-1s"], 10_000, "pca", 0, False, api_name="/diversity")
    _, full = client.predict("ring-mix", ["dmd-1s", "phased-dmd-4s4p"], 40, "pca", 0, True, api_name="/diversity")
    assert "**Full evaluation**" in full and "| mode KL |" in full  # the points family's metrics
    assert "| teacher, 50 steps (reference) |" in full and "| phased-dmd-4s4p |" in full
    with pytest.raises(Exception, match="samples per method must be at least"):
        client.predict("ring-mix", ["dmd-1s"], 4, "pca", 0, True, api_name="/diversity")


def _slow_teacher(monkeypatch, calls=None, delay=0.002):
    """Every teacher velocity call waits ``delay`` s (a 50-step teacher takes at least 50 delays, so the
    progress is polled while it runs) and is counted in ``calls``."""
    from pdmd_lab.student import TeacherSampler

    velocity = TeacherSampler.velocity

    def slow(self, x, t, class_labels):
        if calls is not None:
            calls.append(len(x))
        time.sleep(delay)
        return velocity(self, x, t, class_labels)

    monkeypatch.setattr(TeacherSampler, "velocity", slow)


def test_diversity_full_evaluation_reports_progress_and_shares_the_teacher(monkeypatch):
    """Cold: the 50-step teacher's rows are split over threads, its steps counted in the progress (fraction
    rising, each description naming what runs); the samples land in Compare's cache under Compare's key."""
    from app.tabs import diversity as dv

    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    monkeypatch.setattr(dv, "POLL_S", 0.005)
    monkeypatch.setattr(rows, "workers", lambda: 3)
    calls = []
    _slow_teacher(monkeypatch, calls)
    seen = []
    _, table = dv.diversity("ring-mix", ["teacher@4", "dmd-1s"], 48, "pca", 0, True,
                            progress=lambda frac, desc="": seen.append((frac, desc)))
    assert "**Full evaluation**" in table and "| teacher, 50 steps (reference) |" in table
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1
    assert any("50-step teacher" in d and "of 50" in d for _, d in seen)  # its steps, as they are done
    assert set(calls) == {8}  # 48 rows over 3 threads in 6 chunks of MIN_CHUNK = 8 (the few-step teacher too)
    teacher = app_module.get_zoo().models["ring-mix"]["teacher"]
    entry, cached = app_module.teacher_output("ring-mix", "teacher", "all", 0, 48, teacher.cfg)
    assert cached  # Compare asking for the same samples gets these
    labels = torch.arange(48) % teacher.num_classes
    whole = teacher.sample(labels, seed=0, noise=common._noise(0, 48, teacher.shape))
    torch.testing.assert_close(entry["x"], whole, atol=1e-5, rtol=1e-5)  # rows split = one batch
    calls.clear()
    _, again = dv.diversity("ring-mix", ["teacher@4", "dmd-1s"], 48, "pca", 0, True,
                            progress=lambda *a, **k: None)
    assert not calls and again == table  # the next click draws nothing and shows the same numbers


def test_early_draw_is_what_the_warm_up_would_draw(monkeypatch):
    """``python -m app.app`` starts a process drawing the default views' full teacher before anything loads
    (:func:`early.start`): Compare's rows, then Diversity's further rows. The warm-up takes both entries under
    their cache keys, draws nothing itself and gets what it would have drawn (Compare's rows bit for bit: the
    same split; Diversity's extend them); each entry is taken once; a family with no teacher draws nothing."""
    from app.tabs import diversity as dv
    from app.tabs.compare import _teacher_key

    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    monkeypatch.setattr(rows, "workers", lambda: 2)  # as in the child, on this machine's two cores
    teacher = app_module.get_zoo().models["ring-mix"]["teacher"]
    assert early.start("ring-mix", n=16, reference_n=48) is not None
    keys = early.keys()
    assert keys == [_teacher_key("ring-mix", "teacher", "all", 0, m, teacher.cfg) for m in (16, 48)]
    counts = [early.count(k) for k in keys]
    calls = []
    _slow_teacher(monkeypatch, calls, delay=0)
    head = dv.draw_samples("ring-mix", ["teacher"], 0, 16)["teacher"]
    full = dv.draw_samples("ring-mix", ["teacher"], 0, 48)["teacher"]
    assert not calls and not head["cached"] and not full["cached"]
    assert [c.done for c in counts] == [16 * 50, 48 * 50]  # every row's steps reached the page's progress
    assert early.take(keys[0]) is None and early.keys() == []  # taken once
    sampler = app_module.get_zoo().sampler("ring-mix", "teacher", teacher.cfg)  # what the warm-up draws with
    labels, noise = torch.arange(48) % teacher.num_classes, common._noise(0, 48, sampler.shape)
    again, _ = rows.split_sample(sampler, labels[:16], noise[:16], 0, rows.Count())
    assert torch.equal(head["x"], again) and torch.equal(full["x"][:16], head["x"])
    torch.testing.assert_close(full["x"], sampler.sample(labels, seed=0, noise=noise), atol=1e-5, rtol=1e-5)
    assert torch.equal(full["labels"], labels)
    early.start("no-such-family")
    assert early.keys() == []


def test_diversity_extends_samples_drawn_for_fewer(monkeypatch):
    """Compare drew 16 samples of the request: Diversity's 48 draw only the 32 others (same noise rows)."""
    from app.tabs import diversity as dv

    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    monkeypatch.setattr(rows, "workers", lambda: 1)
    teacher = app_module.get_zoo().models["ring-mix"]["teacher"]
    head, _ = app_module.teacher_output("ring-mix", "teacher", "all", 0, 16, teacher.cfg)
    calls = []
    _slow_teacher(monkeypatch, calls, delay=0)
    x = dv.draw_samples("ring-mix", ["teacher"], 0, 48)["teacher"]["x"]
    assert sum(calls) == 32 * 50  # 50 steps of the 32 new rows
    assert torch.equal(x[:16], head["x"])
    labels = torch.arange(48) % teacher.num_classes
    whole = teacher.sample(labels, seed=0, noise=common._noise(0, 48, teacher.shape))
    torch.testing.assert_close(x, whole, atol=1e-5, rtol=1e-5)


def test_diversity_progress_reaches_the_page(client, monkeypatch):
    """Through the API: while the 50-step teacher is drawn, the page gets progress with a description."""
    from app.tabs import diversity as dv

    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    monkeypatch.setattr(dv, "POLL_S", 0.01)
    _slow_teacher(monkeypatch, delay=0.03)  # the teacher takes at least 1.5 s: the client sees it running
    job = client.submit("ring-mix", ["dmd-1s"], 40, "pca", 0, True, api_name="/diversity")
    descs = set()
    while not job.done():
        descs |= {p.desc for p in (job.status().progress_data or []) if p.desc}
        time.sleep(0.02)
    assert "**Full evaluation**" in job.result()[1]
    assert any("50-step teacher" in d for d in descs)


def test_diversity_warm_up_fills_the_default_view(monkeypatch):
    """The app's background warm-up draws what the tab's first view and its full evaluation need."""
    from app.tabs import diversity as dv

    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    assert dv.warm_up("ring-mix") > 0
    calls = []
    _slow_teacher(monkeypatch, calls, delay=0)
    methods = [m for m in dv.DEFAULT_METHODS if m.startswith("teacher") or m in app_module.get_zoo().models["ring-mix"]]
    _, table = dv.diversity("ring-mix", methods, dv.DEFAULT_N, "pca", 0, True, progress=lambda *a, **k: None)
    assert not calls and "**Full evaluation**" in table
    assert all(f"| {m} |" in table for m in methods)


def test_class_view_reports_progress(monkeypatch):
    from app.tabs import diversity as dv

    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    monkeypatch.setattr(dv, "POLL_S", 0.005)
    _slow_teacher(monkeypatch)
    seen = []
    _, table = dv.class_view("ring-mix", ["dmd-1s"], "2", 24, "pca", 0,
                             progress=lambda frac, desc="": seen.append((frac, desc)))
    assert "computed now" in table and "| dmd-1s |" in table
    assert any("50-step teacher" in d and "of 50" in d for _, d in seen)
    _, again = dv.class_view("ring-mix", ["dmd-1s"], "2", 24, "pca", 0, progress=lambda *a, **k: None)
    assert "from the cache" in again


def test_class_view(client):
    fig, table = client.predict("ring-mix", ["dmd-1s", "phased-dmd-4s4p"], "1", 24, "pca", 0, api_name="/class_view")
    assert fig and "| dmd-1s |" in table and "| phased-dmd-4s4p |" in table and "coverage" in table
    _, again = client.predict("ring-mix", ["dmd-1s"], "1", 24, "pca", 0, api_name="/class_view")
    assert "from the cache" in again  # the teacher's samples of class 1 were kept
    with pytest.raises(Exception, match="class"):
        client.predict("ring-mix", ["dmd-1s"], "9", 24, "pca", 0, api_name="/class_view")
    with pytest.raises(Exception, match="besides the teacher"):
        client.predict("ring-mix", [], "1", 24, "pca", 0, api_name="/class_view")


def test_live_methods_come_from_the_registry():
    registry = live.registry_methods()
    continuous = {m for m, cls in registry.items() if getattr(cls, "teacher_kind", "continuous") == "continuous"}
    assert {spec["method"] for spec in live.method_presets().values()} == continuous
    assert set(live.PRESETS) <= set(live.method_presets())  # a method registered after import joins


def test_compare_numbers_with_singleton_classes():
    """n = 16 over 10 classes: six classes have two samples, four have one; the numbers use the six."""
    from pdmd_lab.families import get_family

    x, labels = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    keep = labels < 6
    ref = get_family("mnist").compare_metrics("mnist", x[keep], labels[keep])["pairwise_cosine"]
    assert get_family("mnist").compare_metrics("mnist", x, labels)["pairwise_cosine"] == pytest.approx(ref)
    assert get_family("mnist").compare_metrics("mnist", x[:3], labels[:3]) == {}  # no pair in any class


def test_live_names_and_colours():
    presets = live.method_presets()
    assert "phased-dmd-disjoint-4s4p" in presets and "phased-dmd-disjoint-4s" not in presets  # the README's name
    assert presets["phased-dmd-disjoint-4s4p"]["phases"] == 4
    assert live.readable([{"iter": 1, "loss_fake": 0.5, "dmd_grad_norm": 2.0}]) == [
        {"iter": 1, live.LOSS_NAMES["loss_fake"]: 0.5, live.LOSS_NAMES["dmd_grad_norm"]: 2.0}]
    from matplotlib.colors import to_hex

    from pdmd_lab import viz

    classes = {to_hex(viz.class_color(c)) for c in range(4)}  # ring-mix's classes in the scatters
    assert not set(live.lab_colors(["dmd-1s", "phased-dmd-4s4p"]).values()) & classes


def test_distill_live(client, monkeypatch):
    monkeypatch.setattr(live, "DISTILL_INIT_ITERS", 30)  # a rough start is fine for a smoke test
    scatter, curves, status, *_ = client.predict("dmd-1s", 3.0, 10, True, api_name="/distill")
    assert scatter and curves and status.startswith("done")
    with pytest.raises(Exception, match="iterations"):
        client.predict("dmd-1s", 3.0, 5000, False, api_name="/distill")


def test_collapse_lab(client, monkeypatch):
    monkeypatch.setattr(live, "DISTILL_INIT_ITERS", 30)
    job = client.submit("dmd-1s", "phased-dmd-4s4p", 3.0, 4, api_name="/collapse_lab")
    scatter_a, scatter_b, curves, status = job.result(timeout=600)
    assert scatter_a and scatter_b and curves
    assert status.count("✓") == 2 and "4/4" in status and "teacher: coverage" in status
    assert len(job.outputs()) >= 2  # streamed while training, not only at the end
    with pytest.raises(Exception, match="two different"):
        client.predict("dmd-1s", "dmd-1s", 3.0, 8, api_name="/collapse_lab")
    with pytest.raises(Exception, match="generator updates each"):  # the field's own words
        client.predict("dmd-1s", "phased-dmd-4s4p", 3.0, 10_000, api_name="/collapse_lab")


def test_concurrent_generations(client):
    results, errors = {}, []

    def work(i):
        try:
            results[i] = _generate(client, "ring-mix", seed=100 + i, n=4)
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 6
    assert all("NFE" in r[6] for r in results.values())


# Discrete (masked diffusion) families in Compare -------------------------------------------------

TOKENS = "ring-mix-tokens"
TV = re.compile(r"\btv \*\*([0-9.]+)\*\*")  # the tokens family's metric label


def _tv(caption: str) -> float:
    m = TV.search(caption)
    assert m, caption
    return float(m.group(1))


def test_discrete_family_listed():
    z = app_module.get_zoo()
    assert TOKENS in z.families and TOKENS not in z.continuous_families()  # Compare only
    assert app_module.shipped_families(["ring-mix-tokens/d-mmd-2s"]) == [TOKENS]  # the oracle is its teacher
    assert app_module.shipped_families(["toy-without-teacher/d-mmd-2s"]) == []
    teacher = z.models[TOKENS]["teacher"]
    assert type(teacher).__name__ == "MaskedTeacherSampler" and teacher.num_steps == 100 and teacher.cfg == 1.0
    assert z.default_steps(TOKENS) == 2 and 2 in z.step_choices(TOKENS)
    assert [k for k, _ in z.panels(TOKENS, 2)] == ["teacher", "teacher@2", "d-mmd-2s", "d-mmd-2s-no-noise",
                                                  "teacher@8", "data"]
    for k in z.step_choices(TOKENS):  # whatever is shipped: its own step count's students, teacher at k and 4k
        keys = [key for key, _ in z.panels(TOKENS, k)]
        assert keys[1] == f"teacher@{k}" and keys[4] == f"teacher@{4 * k}"
        assert {keys[2], keys[3]} & set(z.students(TOKENS))
        assert all(z.models[TOKENS][key].num_steps == k for key in keys[2:4] if key in z.models[TOKENS])


def test_generate_ring_mix_tokens(client):
    from pdmd_lab import zoo
    from pdmd_lab.discrete.metrics import joint_distances
    from pdmd_lab.discrete.teacher import ORACLES

    n, seed = 2048, 0
    out = client.predict(TOKENS, "all", seed, n, 1.0, "2", api_name="/generate")
    images, captions, summary = out[:6], out[6:12], out[12]
    for img in images:
        assert _image(img).shape[0] >= 200 and _image(img).shape[1] >= 200
    assert "D-MMD, 2 steps" in captions[2] and "without the noise input" in captions[3]
    assert "NFE 100 " in captions[0] and "NFE 8 " in captions[4] and "no network" in captions[5]
    for i in (1, 2, 3):
        assert "NFE 2 " in captions[i], captions[i]
    tv = [_tv(c) for c in captions]
    assert "k = 2" in summary and "sampling noise alone gives about" in summary and "exact oracle" in summary

    # The same numbers from pdmd_lab.discrete.metrics, the same seed and n (classes cycling).
    labels = torch.arange(n) % 4
    joint = ORACLES[TOKENS](32)
    exact = {name: joint_distances(zoo.load(f"{TOKENS}/{name}").sample(labels, seed=seed), labels, joint)["tv"]
             for name in ("teacher@2", "d-mmd-2s", "d-mmd-2s-no-noise")}
    assert tv[1] == pytest.approx(exact["teacher@2"], abs=6e-4)
    assert tv[2] == pytest.approx(exact["d-mmd-2s"], abs=6e-4)
    assert tv[3] == pytest.approx(exact["d-mmd-2s-no-noise"], abs=6e-4)
    assert exact["d-mmd-2s"] < exact["teacher@2"] - 0.1  # distilled: far closer to the joint than the teacher at 2
    assert exact["d-mmd-2s-no-noise"] > exact["d-mmd-2s"] + 0.1  # the noise-input ablation
    floor = float(re.search(r"gives about ([0-9.]+)", summary).group(1))
    assert tv[5] < exact["d-mmd-2s"] and tv[5] == pytest.approx(floor, abs=0.03)  # exact draws: sampling noise
    assert tv[0] < exact["teacher@2"]  # 100 steps


def test_generate_ring_mix_tokens_cfg_and_default_steps(client):
    # Five arguments (no steps): the family's default k. Guidance applies to the masked teacher only.
    out = client.predict(TOKENS, "1", 3, 256, 3.0, api_name="/generate")
    captions, summary = out[6:12], out[12]
    assert "NFE 200 " in captions[0] and "NFE 4 " in captions[1]  # CFG 3: two evaluations per step
    assert "NFE 2 " in captions[2] and "D-MMD, 2 steps" in captions[2]
    assert all(TV.search(c) for c in captions)
    assert "distilled at CFG 1" in summary and "class 1" in summary


@pytest.mark.parametrize("family, args, message", [
    (TOKENS, {"steps": "3"}, "student steps k must be one of"), (TOKENS, {"n": 9000}, "number of samples"),
    (TOKENS, {"klass": "4"}, "class"), (TOKENS, {"steps": "two"}, "student steps k"),
    ("ring-mix", {"steps": "2"}, "student steps k apply only to datasets laid out by step count"),
])
def test_generate_discrete_rejects_bad_values(client, family, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(family, args.get("klass", "all"), 0, args.get("n", 64), 1.0, args.get("steps"),
                       api_name="/generate")


def test_discrete_missing_student_leaves_its_panel_empty(monkeypatch):
    z = app_module.Zoo(families=[TOKENS])
    del z.models[TOKENS]["d-mmd-2s-no-noise"]  # as if it were not shipped
    monkeypatch.setattr(common, "_ZOO", z)
    assert z.panels(TOKENS, 2)[3] == ("d-mmd-2s-no-noise", "D-MMD, 2 steps, without the noise input")
    *_, last = app_module.generate(TOKENS, "all", 0, 64, 1.0, "2", progress=lambda *a, **k: None)
    captions = last[6:12]
    assert "not built yet" in captions[3] and "d-mmd-2s-no-noise" in captions[3]
    assert "NFE 2 " in captions[2] and all(TV.search(captions[i]) for i in (0, 1, 2, 4, 5))


def test_compare_controls_follow_the_family():
    steps, count, cfg, klass, *panels = app_module.compare_controls(TOKENS)
    images, captions = panels[:6], panels[6:]
    assert steps["visible"] and steps["value"] == "2" and "2" in steps["choices"]
    assert count["value"] == app_module.DEFAULT_PAIR_SAMPLES and "8192" in count["label"] and cfg["value"] == 1.0
    assert [c["value"] for c in captions][2:4] == ["**D-MMD, 2 steps**", "**D-MMD, 2 steps, without the noise input**"]
    assert all(u["value"] is None and u["visible"] for u in images)  # cleared, every panel planned
    assert klass["choices"] == ["all", "0", "1", "2", "3"] and klass["value"] == "all"  # ring-mix-tokens: 4 classes
    steps, count, cfg, klass, *_ = app_module.compare_controls("ring-mix")
    assert not steps["visible"] and steps["value"] is None and count["value"] == app_module.DEFAULT_PAIR_SAMPLES
    assert klass["choices"] == ["all", "0", "1", "2", "3"]
    if "mnist" in app_module.get_zoo().families:
        assert app_module.compare_controls("mnist")[3]["choices"] == ["all", *map(str, range(10))]


def test_other_tabs_refuse_the_discrete_family():
    with pytest.raises(Exception, match="Compare tab only"):
        app_module.diversity(TOKENS, ["teacher@4"], 40, "pca", 0, False)
    with pytest.raises(Exception, match="Compare tab only"):
        app_module.class_view(TOKENS, ["d-mmd-2s"], "1", 24, "pca", 0)


def _tiny_binary_mnist_zoo():
    """A Zoo holding an untrained tiny masked UNet teacher and a 4-step D-MMD student of binarised MNIST:
    what Compare gets once ``mnist-binary/teacher`` and ``mnist-binary/d-mmd-4s`` are shipped."""
    from pdmd_lab.discrete.masking import step_times
    from pdmd_lab.discrete.method import MaskedTeacherSampler
    from pdmd_lab.discrete.nets import TokenUNetConfig, add_noise_input, build_net
    from pdmd_lab.student import Student

    torch.manual_seed(0)
    net = build_net(TokenUNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention=False)).eval()
    teacher = MaskedTeacherSampler(net, steps=100, cfg=1.0, dataset="mnist-binary", shape=(1, 28, 28))
    student = Student([add_noise_input(net, 2, 30.0).eval()], [1.0, 0.0], step_times(4), sampler="masked",
                      dataset="mnist-binary", shape=(1, 28, 28),
                      meta={"method": "d-mmd", "options": {"noise_dim": 2}, "cfg": 1.0})
    z = app_module.Zoo(families=[])
    z.models["mnist-binary"] = {"teacher": teacher, "d-mmd-4s": student}
    return z


def test_discrete_image_family_shows_grids(monkeypatch):
    assert app_module.shipped_families(["mnist-binary/teacher", "mnist-binary/d-mmd-4s"]) == ["mnist-binary"]
    z = _tiny_binary_mnist_zoo()
    monkeypatch.setattr(common, "_ZOO", z)
    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())  # keep real teachers' entries apart
    assert z.step_choices("mnist-binary") == [4]
    assert [k for k, _ in z.panels("mnist-binary")] == ["teacher", "teacher@4", "d-mmd-4s", "",
                                                        "teacher@16", "data"]  # no no-noise recipe for MNIST
    *_, last = app_module.generate("mnist-binary", "3", 0, 2, 1.0, None, progress=lambda *a, **k: None)
    images, captions = last[:6], last[6:12]
    assert "NFE 100 " in captions[0] and "NFE 4 " in captions[1] and "NFE 4 " in captions[2]
    assert captions[3]["visible"] is False  # no no-noise student planned for MNIST: the panel is hidden
    assert all("hamming_per_class" in captions[i] for i in (0, 1, 2, 4))  # the tokens family's number
    for i in (0, 1, 2, 4):  # the family's grid, rendered to a file
        img = _image(images[i])
        assert img.ndim == 3 and min(img.shape[:2]) >= 200, img.shape
    assert "hamming_per_class" in captions[5] or "not available" in captions[5]  # data: MNIST loads offline
    with pytest.raises(Exception, match="number of samples"):
        next(app_module.generate("mnist-binary", "all", 0, 65, 1.0, None))


def test_a_newly_shipped_discrete_student_gets_its_step_choice(monkeypatch):
    """Compare's discrete panels follow ``zoo.list_models``: a 1-step student shipped (here the 2-step one's
    network run in one step) brings k = 1, its no-noise sibling's panel stays empty with a note."""
    from pdmd_lab import zoo
    from pdmd_lab.discrete.masking import step_times
    from pdmd_lab.student import Student

    listed, load = zoo.list_models(), zoo.load

    def fake_load(name, *args, **kwargs):
        if name == f"{TOKENS}/d-mmd-1s":
            two = load(f"{TOKENS}/d-mmd-2s")
            return Student(list(two.experts), [1.0, 0.0], step_times(1), sampler="masked", dataset=TOKENS,
                           shape=two.shape, meta=dict(two.meta))
        return load(name, *args, **kwargs)

    monkeypatch.setattr(zoo, "list_models", lambda *a: sorted({*listed, f"{TOKENS}/d-mmd-1s"}))
    monkeypatch.setattr(zoo, "load", fake_load)
    z = app_module.Zoo(families=[TOKENS])
    assert 1 in z.step_choices(TOKENS) and 2 in z.step_choices(TOKENS)
    assert [k for k, _ in z.panels(TOKENS, 1)][:5] == ["teacher", "teacher@1", "d-mmd-1s", "d-mmd-1s-no-noise",
                                                       "teacher@4"]
    monkeypatch.setattr(common, "_ZOO", z)
    *_, last = app_module.generate(TOKENS, "all", 0, 512, 1.0, "1", progress=lambda *a, **k: None)
    captions = last[6:12]
    assert "NFE 1 " in captions[1] and "NFE 1 " in captions[2] and TV.search(captions[2])
    assert "not built yet" in captions[3] or "NFE 1 " in captions[3]  # unless it has been shipped since


# A new kind of data, registered from a test file, in Compare with no app change --------------------------

def test_a_new_kind_renders_in_compare(monkeypatch):
    """The ``signals`` kind and its ``sine-mix`` dataset of ``tests/test_new_family.py`` (1-D signals drawn as
    line plots, exact oracle teacher), registered here: the app loads its teacher through the zoo, draws every
    panel with the family's own ``render_panel`` and takes its classes from the family. The DMD panel is
    the oracle teacher run in one step, standing in for a shipped student."""
    import test_new_family as new

    from pdmd_lab.data import DATASETS, Dataset, register_dataset
    from pdmd_lab.families import FAMILIES, get_family, register_family

    register_family(new.SignalsFamily)
    register_dataset(Dataset("sine-mix", "signals", 2, (new.LENGTH,), "sines of 1 and 2 periods",
                             gmm=new.sine_mix(), teacher_cfg=2.0))
    try:
        assert app_module.shipped_families(["sine-mix/dmd-1s"]) == ["sine-mix"]  # its oracle is its teacher
        z = app_module.Zoo(families=["sine-mix"])
        assert "sine-mix" in z.families and "sine-mix" in z.continuous_families()
        z.models["sine-mix"]["dmd-1s"] = z.models["sine-mix"]["teacher"].with_steps(1)
        monkeypatch.setattr(common, "_ZOO", z)
        monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
        drawn = []
        render = new.SignalsFamily.render_panel
        monkeypatch.setattr(new.SignalsFamily, "render_panel",
                            lambda self, x, labels=None, **kw: drawn.append(len(x)) or render(self, x, labels, **kw))
        *_, last = app_module.generate("sine-mix", "all", 0, 8, 2.0, progress=lambda *a, **k: None)
        images, captions = last[:6], last[6:12]
        for i in (0, 1, 2):  # teacher at 50 and 4 steps, the one-step stand-in: line plots, not empty
            img = _image(images[i])
            assert img.ndim == 3 and img.std() > 5, captions[i]
        assert "NFE 100 " in captions[0] and "NFE 8 " in captions[1] and "NFE 2 " in captions[2]
        assert drawn == [8, 8, 8]  # every panel by the family's own renderer
        assert all("not built yet" in captions[i] for i in (3, 4, 5))
        assert "sine-mix (signals)" in last[12]
        klass = app_module.compare_controls("sine-mix")[3]
        assert klass["choices"] == ["all", "0", "1"] and get_family("sine-mix").name == "signals"
    finally:
        DATASETS.pop("sine-mix", None)
        FAMILIES.pop("signals", None)


# The counting benchmarks in Compare: motion-mix as clips, mnist-uncond with digit histograms ---------------

def _stand_in_zoo(monkeypatch, family: str):
    """A Zoo of ``family`` whose DMD panel is its teacher run in one step (standing in for a shipped student)."""
    z = app_module.Zoo(families=[family])
    z.models[family]["dmd-1s"] = z.models[family]["teacher"].with_steps(1)
    monkeypatch.setattr(common, "_ZOO", z)
    monkeypatch.setattr(common, "TEACHER_CACHE", common.TeacherCache())
    return z


def test_motion_mix_panels_are_clips(monkeypatch):
    """Each motion-mix panel is an animated GIF, one clip per sample (8 frames: the trajectory's), with the
    mean flow and dynamic degree under it and the 50-step teacher's values beside; a repeated request sends
    the same files (nothing drawn again)."""
    from pdmd_lab import motion

    _stand_in_zoo(monkeypatch, "motion-mix")
    labels = torch.arange(16) % 4
    *_, last = app_module.generate("motion-mix", "all", 0, 16, 1.5, progress=lambda *a, **k: None)
    images, captions = last[:6], last[6:12]
    for i in (0, 1, 2):
        gif = Image.open(images[i])
        assert gif.format == "GIF" and gif.n_frames == motion.FRAMES, (gif.format, gif.n_frames)
        assert "mean flow" in captions[i] and "dynamic degree" in captions[i]
    assert "teacher" in captions[2]  # the teacher's values beside the student's
    teacher = common.get_zoo().sampler("motion-mix", "teacher", 1.5)
    x = teacher.sample(labels, seed=0, noise=common._initial(teacher, 0, 16))
    assert f"mean flow **{motion.mean_flow(x):.3g}**" in captions[0]
    # the clip's first frame: 16 coloured dots on black (a 4 x 4 grid of clips, separators grey)
    first = np.asarray(Image.open(images[0]).convert("RGB"))
    assert first.shape[0] == first.shape[1] == 4 * 96 + 3
    *_, again = app_module.generate("motion-mix", "all", 0, 16, 1.5, progress=lambda *a, **k: None)
    assert list(again[:3]) == list(images[:3])


def test_mnist_uncond_panels_show_digit_histograms(monkeypatch):
    """mnist-uncond in Compare: one class choice ("all"), 64 samples by default, each panel a grid over
    its digit histogram, and under it the digit KL to the teacher's reference histogram and the digits
    covered, recomputed here from the same samples."""
    from app.tabs import compare
    from pdmd_lab import uncond

    z = _stand_in_zoo(monkeypatch, "mnist-uncond")
    assert compare._class_choices("mnist-uncond") == ["all"]
    assert common._sample_limits("mnist-uncond") == (64, 64)
    n = 6
    *_, last = app_module.generate("mnist-uncond", "all", 0, n, 1.0, progress=lambda *a, **k: None)
    images, captions = last[:6], last[6:12]
    for i in (0, 1, 2):
        img = _image(images[i])
        assert img.shape[0] > img.shape[1]  # the grid and, under it, the histogram
        assert "digit KL" in captions[i] and "digits covered" in captions[i] and "lower is better" in captions[i]
    model = z.sampler("mnist-uncond", "dmd-1s")
    x = model.sample(torch.zeros(n, dtype=torch.long), seed=0, noise=common._initial(model, 0, n))
    s = uncond.panel_scores(x)
    assert f"digit KL **{s['digit_kl']:.3g}**" in captions[2]
    assert f"digits covered **{s['digits_covered']}/10**" in captions[2]
