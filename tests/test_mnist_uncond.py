"""mnist-uncond: the null-label teacher, unconditional students, and collapse counted with the classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdmd_lab import io, uncond
from pdmd_lab.nets import NullLabelDenoiser, UNetConfig, build_net

TINY = UNetConfig(block_out_channels=(8, 16), attention=False, norm_num_groups=4)


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    """A tiny conditional "mnist" teacher folder and its unconditional export."""
    root = tmp_path_factory.mktemp("uncond")
    torch.manual_seed(0)
    net = build_net(TINY)
    cfg = io.json_ready(net.config)
    io.save_model_files(root / "mnist", {"kind": "teacher", "dataset": "mnist", "net": cfg, "iters": 1},
                        {"model": net.state_dict()})
    uncond.export_teacher(root / "mnist", root / "uncond")
    return root, net.eval()


def test_kl_smoothing_and_coverage_known_answers():
    teacher, model = [5, 5] + [0] * 8, [10, 0] + [0] * 8
    p = (np.array(teacher) + 1) / 20  # each count + 1 (SMOOTHING), normalised
    q = (np.array(model) + 1) / 20
    assert uncond.kl_teacher_model(teacher, model) == pytest.approx(float((p * np.log(p / q)).sum()))
    assert uncond.kl_teacher_model(teacher, teacher) == 0.0
    cov = uncond.digits_covered([100, 100, 0] + [0] * 7, [75, 25, 0] + [0] * 7)
    assert cov[:3].tolist() == [True, True, True]  # 0.25 >= 0.5 * 0.5 (the boundary counts); none asked for 2
    cov = uncond.digits_covered([100, 100, 0] + [0] * 7, [85, 24, 1] + [0] * 7)
    assert cov[:3].tolist() == [True, False, True]  # 24 / 110 < 0.25
    s = uncond.count_scores([100] * 10, [200] * 5 + [0] * 5)
    assert s["digits_covered"] == 5 and s["digits_missed"] == [5, 6, 7, 8, 9] and s["max_share"] == 0.2


def test_null_label_net_is_its_base_net_with_the_null_class(tiny_teachers):
    root, base = tiny_teachers
    from pdmd_lab.teacher import load_teacher

    t = load_teacher(root / "uncond")
    assert isinstance(t, NullLabelDenoiser) and t.num_classes == 1 and t.dataset == "mnist-uncond"
    x, tt = torch.randn(3, 1, 28, 28), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        want = base(x, tt, torch.full((3,), 10))
        assert torch.equal(t(x, tt, torch.tensor([0, 3, 7])), want)
        assert torch.equal(t(x, tt, None), want)
        assert not torch.allclose(base(x, tt, torch.zeros(3, dtype=torch.long)), want)  # digit 0 differs
    with pytest.raises(ValueError, match="already exists"):
        uncond.export_teacher(root / "mnist", root / "uncond")
    with pytest.raises(ValueError, match="not an MNIST teacher"):
        uncond.export_teacher(root / "uncond", root / "again")


def test_shipped_uncond_teacher_is_the_mnist_teacher_with_its_null_class():
    from pdmd_lab import zoo

    a = zoo.load("mnist-uncond/teacher", steps=2)
    b = zoo.load("mnist/teacher", steps=2, cfg=1.0)
    assert a.cfg == 1.0 and a.num_classes == 1
    z = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.sample(torch.zeros(2, dtype=torch.long), noise=z), b.sample(torch.full((2,), 10), noise=z))


def test_unconditional_student_distils_saves_and_loads(tiny_teachers, tmp_path):
    from pdmd_lab.distill import DistillConfig, distill
    from pdmd_lab.student import Student

    root, _ = tiny_teachers
    cfg = DistillConfig.from_flat(teacher=str(root / "uncond"), method="dmd", steps=1, cfg=1.0, iters=2,
                                  batch_size=2, fake_updates_per_generator_update=1, weighting="dmd2")
    distill(cfg, tmp_path / "s", progress=False)
    s = Student.load(tmp_path / "s")
    assert s.dataset == "mnist-uncond" and s.num_classes == 1 and isinstance(s.experts[0], NullLabelDenoiser)
    z = torch.randn(2, 1, 28, 28)
    assert torch.equal(s.sample(torch.zeros(2, dtype=torch.long), noise=z), s.sample(torch.ones(2, dtype=torch.long),
                                                                                      noise=z))


def test_measure_resumes_splits_and_scores(tiny_teachers, tmp_path):
    from pdmd_lab.student import TeacherSampler
    from pdmd_lab.teacher import load_teacher

    root, _ = tiny_teachers
    model = TeacherSampler(load_teacher(root / "uncond"), steps=2, dataset="mnist-uncond", shape=(1, 28, 28))
    out = tmp_path / "m"
    assert uncond.measure(model, 6, 0, out, batch_size=4, progress=False, worker=(1, 2)) is None  # chunk 0 missing
    first = uncond.measure(model, 6, 0, out, batch_size=4, progress=False, worker=(0, 2))
    assert first["batches_drawn_this_call"] == 1 and sum(first["counts"]) == 6
    again = uncond.measure(model, 6, 0, out, batch_size=4, progress=False)
    assert again["batches_drawn_this_call"] == 0 and again["counts"] == first["counts"]
    x = uncond.sample_unconditional(model, 6, 0, batch_size=4)  # the same noise per batch as measure
    saved = torch.load(out / "samples.pt")
    assert torch.equal(uncond._to_uint8(x), saved["images"])
    info = uncond.save_reference(out, tmp_path / "ref.safetensors")
    assert info["n"] == 6 and info["counts"] == first["counts"]
    reference = uncond.load_reference(tmp_path / "ref.safetensors")
    s = uncond.score_against_reference(x, uncond.load_mnist_classifier(), reference)
    assert s["digit_kl"] == 0.0 and s["digits_covered"] == 10 and s["frechet_distance"] < 1e-3
    r = uncond.report(out, tmp_path / "res", {"tiny/teacher@2": model}, n=6)
    want = uncond.score_against_reference(uncond.sample_unconditional(model, 6, 0), uncond.load_mnist_classifier(),
                                          uncond.load_reference(tmp_path / "res" / "teacher_reference.safetensors"))
    assert r["teacher"]["n"] == 6 and r["rows"]["tiny/teacher@2"]["digit_kl"] == want["digit_kl"]
    assert {f.name for f in (tmp_path / "res").iterdir()} >= {"teacher_reference.safetensors", "teacher_histogram.json",
                                                             "scores.json", "histograms.png", "sorted_teacher@50.png",
                                                             "sorted_tiny_teacher@2.png"}


def test_figures():
    fig = uncond.histogram_figure([100] * 10, {"a": [200] * 5 + [0] * 5, "b": [100] * 10})
    assert len(fig.axes) == 2 and "missed" in [t.get_text() for t in fig.axes[0].texts]
    imgs = torch.zeros(20, 1, 28, 28, dtype=torch.uint8)
    fig = uncond.sorted_samples_figure(imgs, torch.arange(20) % 10, per_digit=3)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "0: 10.0%" and len(labels) == 10
    assert not math.isnan(uncond.kl_teacher_model([1] * 10, [0] * 9 + [10]))
