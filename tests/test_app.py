"""The Gradio app, end to end through its HTTP API (``gradio_client``), in-process server.

MNIST is preferred where its models are shipped (small batches: its 50-step teacher is slow on CPU);
ring-mix (exact oracle teacher) always runs. No test asserts a wall-clock time: streaming order and
the teacher cache are checked through what the app sends, so a busy machine cannot fail them.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import app as app_module  # noqa: E402
from app import live  # noqa: E402

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
        assert "NFE" in captions[i] and "ms" in captions[i] and "teacher" in captions[i]
    assert "NFE 100" in captions[0]  # 50 steps with CFG: two evaluations per step
    assert "NFE 1 " in captions[2]  # DMD: one step
    if family == "mnist":  # 2 samples of 28 px, upscaled 3x, tiled side by side
        assert _image(images[0]).shape[:2] == (3 * 30, 3 * 59)


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
    ({"n": 65}, "number of samples"), ({"cfg": 11.0}, "CFG"), ({"klass": "99"}, "class"),
])
def test_generate_rejects_bad_values(client, args, message):
    with pytest.raises(Exception, match=message):
        _generate(client, "ring-mix", **args)


def test_phases(client):
    fig_p, fig_s, text = client.predict(8, 4, 3.0, api_name="/phases")
    assert fig_p and fig_s and "phase boundaries" in text
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
    with pytest.raises(Exception, match="iterations"):
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
