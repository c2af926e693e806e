"""Classifier training / saving / loading on digits, feature shapes, and projections."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pdmd_lab import io
from pdmd_lab.data import get_dataset
from pdmd_lab.embed import (
    Classifier,
    ClassifierConfig,
    embed,
    load_classifier,
    project,
    random_shift,
    train_classifier,
)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "digits"
    return train_classifier(ClassifierConfig(data="digits", iters=150, batch_size=64), out, progress=False)


def test_digits_classifier_trains_saves_and_loads(digits_classifier):
    cfg = io.read_config(digits_classifier)
    assert cfg["kind"] == "classifier" and cfg["dataset"] == "digits" and cfg["iters"] == 150
    assert cfg["train"]["max_shift"] == 1 and cfg["net"]["image_size"] == 8 and cfg["wall_time_s"] >= 0
    assert cfg["heldout_accuracy"] > 0.8
    model = load_classifier(digits_classifier)
    assert model.dataset == "digits" and not model.training
    x, y = get_dataset("digits")._sampler.heldout()
    assert float((model.predict(x) == y).double().mean()) == pytest.approx(cfg["heldout_accuracy"])
    feats = embed(model, x[:10])
    assert feats.shape == (10, 128) and torch.allclose(feats, model.features(x[:10]))


def test_training_is_seeded(tmp_path):
    config = ClassifierConfig(data="digits", iters=5, batch_size=16)
    a = io.read_tensors(train_classifier(config, tmp_path / "a", progress=False), "model")
    b = io.read_tensors(train_classifier(config, tmp_path / "b", progress=False), "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mnist_shapes():
    model = Classifier(in_channels=1, image_size=28, num_classes=10).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10) and model.predict(x).shape == (3,)
    assert model.features(x).shape == embed(model, x).shape == (3, 128)


def test_random_shift_crops_the_padded_image():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(40, 1, 1, 1)
    y = random_shift(x, 1, torch.Generator().manual_seed(0))
    padded = F.pad(x[0], (1, 1, 1, 1), value=-1.0)[0]
    crops = [padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
    assert all(any(torch.equal(img[0], c) for c in crops) for img in y)
    assert len({tuple(img.flatten().tolist()) for img in y}) == 9  # all nine offsets drawn
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def test_embed_points_and_bad_shapes():
    pts = torch.randn(5, 2)
    assert torch.equal(embed(None, pts), pts)
    with pytest.raises(ValueError, match="images need a classifier"):
        embed(None, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="images must have shape"):
        embed(Classifier(1, 8, 10), torch.zeros(2, 64))


def test_load_errors(digits_classifier, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_classifier(tmp_path / "missing")
    io.save_folder(tmp_path / "teacher", {"kind": "teacher"}, {"model": {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match="not a classifier folder"):
        load_classifier(tmp_path / "teacher")
    corrupt = shutil.copytree(digits_classifier, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="corrupt weights"):
        load_classifier(corrupt)
    other = shutil.copytree(digits_classifier, tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["net"]["feature_dim"] = 64
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match its config"):
        load_classifier(other)


@pytest.mark.parametrize("kwargs, match", [
    ({"data": "ring-mix"}, "image dataset"),
    ({"data": "nope"}, "unknown dataset"),
    ({"iters": 0}, "iters must be"),
    ({"max_shift": -1}, "max_shift"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassifierConfig(**kwargs)


def test_project():
    f = np.random.default_rng(0).normal(size=(30, 6))
    pca = project(f)
    assert pca.shape == (30, 2) and np.allclose(project(torch.tensor(f)), pca)
    tiny = project(f[:5], method="tsne", seed=1)  # perplexity 30 clipped to 4
    assert tiny.shape == (5, 2) and np.allclose(tiny, project(f[:5], method="tsne", seed=1))
    with pytest.raises(ValueError, match="unknown projection"):
        project(f, method="umap")
    with pytest.raises(ValueError, match="dim must be"):
        project(f, dim=7)
