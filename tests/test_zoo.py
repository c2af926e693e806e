"""The shipped models: every one loads and samples; the shipped Phased DMD students meet the quality bar."""

import pytest
import torch

from pdmd_lab import metrics, zoo
from pdmd_lab.data import get_dataset

SAMPLERS = [n for n in zoo.list_models() if not n.endswith("/classifier")]


def test_zoo_is_complete():
    names = set(zoo.list_models())
    for entry in zoo.ENTRIES:
        assert entry.name in names, f"{entry.name} is not shipped: run `pdmd-lab build-zoo`"


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_shipped_model_samples(name):
    model = zoo.load(name)
    labels = torch.arange(8) % model.num_classes
    x = model.sample(labels, seed=0)
    assert x.shape == (8, *get_dataset(model.dataset).shape)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(model.sample(labels, seed=0), x)  # seeded
    assert not torch.equal(model.sample(labels, seed=1), x)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'mnist/nosuch'"):
        zoo.load("mnist/nosuch")


@pytest.mark.parametrize("name", ["ring-mix/phased-dmd-4s4p", "ring-mix/phased-dmd-4s2p"])
def test_phased_students_cover_every_mode_of_every_class(name):
    """Every mode the CFG teacher visits (>= 2% of a class) is visited by the student too."""
    gmm = get_dataset("ring-mix").gmm
    labels = torch.arange(2000) % 4
    teacher = metrics.mode_histogram(gmm, zoo.load("ring-mix/teacher").sample(labels, seed=0), labels)
    student = metrics.mode_histogram(gmm, zoo.load(name).sample(labels, seed=0), labels)
    expected = teacher >= 0.02
    assert expected.sum() >= 8
    assert (student[expected] >= 0.02).all(), (teacher.round(2), student.round(2))


DMMD_TOY = sorted(n for n in zoo.list_models() if n.startswith("ring-mix-tokens/d-mmd-") and "no-noise" not in n)


@pytest.mark.parametrize("name", DMMD_TOY)
def test_shipped_dmmd_toy_students_beat_their_teacher_and_their_no_noise_ablation(name):
    """Exact TV to the true joint (8,000 samples): D-MMD at k steps below the k-step teacher, and below
    the same recipe without the noise input."""
    from pdmd_lab.discrete.metrics import joint_distances
    from pdmd_lab.discrete.oracle import ring_mix_tokens

    joint = ring_mix_tokens(get_dataset("ring-mix-tokens").vocab_size)
    labels = torch.arange(8000) % joint.num_classes
    student = zoo.load(name)
    k = student.num_steps
    tv = {key: joint_distances(m.sample(labels, seed=0), labels, joint)["tv"]
          for key, m in {"student": student, "teacher": zoo.load(f"ring-mix-tokens/teacher@{k}"),
                         "no-noise": zoo.load(f"{name}-no-noise")}.items()}
    assert tv["student"] < 0.5 * tv["teacher"], tv
    assert tv["student"] < tv["no-noise"], tv


def test_build_zoo_trains_masked_teachers_and_d_mmd_students(monkeypatch, tmp_path):
    """build-zoo dispatches on the data kind: a token dataset's teacher is a masked teacher, and a D-MMD
    student distils from it by its ``zoo:`` name; both export, and a second call skips them."""
    from pdmd_lab import io

    monkeypatch.setattr(zoo, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(io, "ASSETS", tmp_path / "assets")  # zoo: names resolve here (io.resolve)
    entries = [zoo.Entry("ring-mix-tokens/teacher", "teacher", {"data": "ring-mix-tokens", "iters": 3,
                                                                  "batch_size": 16, "checkpoint_every": 3}),
               zoo.Entry("ring-mix-tokens/d-mmd-2s", "student",
                         {"method": "d-mmd", "steps": 2, "teacher": "zoo:ring-mix-tokens/teacher", "cfg": 1.0,
                          "iters": 2, "batch_size": 16, "fake_updates_per_generator_update": 1,
                          "checkpoint_every": 2, "noise_dim": 2})]
    monkeypatch.setattr(zoo, "ENTRIES", entries)
    built = zoo.build_zoo(tmp_path / "assets", tmp_path / "runs", progress=False)
    assert built == ["ring-mix-tokens/teacher", "ring-mix-tokens/d-mmd-2s"]
    assert io.read_config(tmp_path / "assets/ring-mix-tokens/teacher")["kind"] == "masked-teacher"
    student = zoo.load(str(tmp_path / "assets/ring-mix-tokens/d-mmd-2s"))
    assert student.nfe == 2 and student.meta["teacher"] == "zoo:ring-mix-tokens/teacher"
    assert zoo.build_zoo(tmp_path / "assets", tmp_path / "runs", progress=False) == []


def test_build_zoo_writes_a_derived_teacher(tmp_path):
    """``mnist-uncond/teacher`` is built from the shipped MNIST teacher by its recipe's builder, no training:
    the same weights under the null-label net, so its samples equal the MNIST teacher's null class."""
    import shutil

    assets = tmp_path / "assets"
    shutil.copytree(zoo.ASSETS / "mnist" / "teacher", assets / "mnist" / "teacher")
    built = zoo.build_zoo(assets, tmp_path / "runs", only="mnist-uncond/teacher", progress=False)
    assert built == ["mnist-uncond/teacher"]
    made = zoo.load(str(assets / "mnist-uncond" / "teacher"), steps=2)
    shipped = zoo.load("mnist-uncond/teacher", steps=2)
    labels = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(made.sample(labels, seed=0), shipped.sample(labels, seed=0))
    assert zoo.build_zoo(assets, tmp_path / "runs", only="mnist-uncond/teacher", progress=False) == []  # valid: kept
