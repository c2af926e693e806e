"""The Gradio app, end to end through its HTTP API (``gradio_client``), in-process server.

MNIST is preferred where its models are shipped (small batches: its 50-step teacher is slow on CPU);
ring-mix (exact oracle teacher) always runs.
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
    assert {"/generate", "/phases", "/trajectory", "/diversity", "/distill"} <= names


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
def test_trajectory(client, family):
    student, teacher = client.predict(family, "phased-dmd-4s4p", "1", 3, 2, api_name="/trajectory")
    assert student and teacher


def test_diversity(client):
    fig, table = client.predict("ring-mix", ["teacher@4", "dmd-1s", "phased-dmd-4s4p"], 40, "pca", 0, False,
                                api_name="/diversity")
    assert fig and "phased-dmd-4s4p" in table and "Vendi" in table
    with pytest.raises(Exception, match="samples per method"):
        client.predict("ring-mix", ["dmd-1s"], 10_000, "pca", 0, False, api_name="/diversity")


def test_distill_live(client, monkeypatch):
    monkeypatch.setattr(app_module, "DISTILL_INIT_ITERS", 30)  # a rough start is fine for a smoke test
    scatter, curves, status, *_ = client.predict("dmd (1 step)", 3.0, 10, True, api_name="/distill")
    assert scatter and curves and status.startswith("done")
    with pytest.raises(Exception, match="iterations"):
        client.predict("dmd (1 step)", 3.0, 5000, False, api_name="/distill")


def test_concurrent_generations(client):
    results, errors = {}, []

    def work(i):
        try:
            results[i] = _generate(client, "ring-mix", seed=100 + i, n=4)
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 8
    assert all("NFE" in r[6] for r in results.values())
