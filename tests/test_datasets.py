"""Datasets: MNIST-layout sets through torchvision from fake IDX files, binarized MNIST, toy 2-D densities."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.cli import main
from pyro_genmod.plots import density_figure, plot_learned_density

TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
NUM_TRAIN, NUM_TEST = 30, 10


def write_idx(folder, prefix: str, labels: np.ndarray) -> None:
    """IDX files as distributed by LeCun: image i is constant at grey level 20 * label + i % 3."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    images = np.zeros((n, 28, 28), dtype=np.uint8) + (20 * labels + np.arange(n) % 3)[:, None, None].astype(np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path):
    rng = np.random.default_rng(0)
    for class_name in TORCHVISION_SETS.values():
        raw = tmp_path / class_name / "raw"
        write_idx(raw, "train", rng.integers(10, size=NUM_TRAIN))
        write_idx(raw, "t10k", rng.integers(10, size=NUM_TEST))
    return tmp_path


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_idx_sets_load_through_torchvision(name, fake_root):
    data = pg.load_dataset(name, root=fake_root, num_val=5)
    assert data.shape == (1, 28, 28)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (NUM_TRAIN - 5, 5, NUM_TEST)
    assert data.binarization == "dynamic"
    # Training images keep their grey levels, and each still matches its own label.
    levels = torch.round(data.train[:, 0, 0, 0] * 255)
    assert torch.equal(torch.div(levels, 20, rounding_mode="floor").long(), data.train_labels)
    assert torch.equal(data.train, data.train[:, :, :1, :1].expand_as(data.train))
    # Validation and test sets were binarized once.
    assert set(data.test.unique().tolist()) <= {0.0, 1.0}
    assert set(data.val.unique().tolist()) <= {0.0, 1.0}
    assert data.test_labels.shape == (NUM_TEST,)


def test_test_binarization_is_fixed_by_seed_and_training_is_redrawn(fake_root):
    first = pg.load_dataset("mnist", root=fake_root, num_val=5)
    again = pg.load_dataset("mnist", root=fake_root, num_val=5)
    other = pg.load_dataset("mnist", root=fake_root, num_val=5, seed=1)
    assert torch.equal(first.test, again.test)
    assert not torch.equal(first.test, other.test)
    batch = first.train
    a, b = first.training_batch(batch), first.training_batch(batch)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)  # ~20k pixels with p in (0, 0.75]: identical draws are impossible in practice


def test_grey_levels_without_binarization(fake_root):
    data = pg.load_dataset("kmnist", root=fake_root, num_val=5, binarize=False)
    assert data.binarization == "none"
    assert torch.equal(data.training_batch(data.train), data.train)
    assert float(data.test.max()) <= 1.0 and len(data.test.unique()) > 2


@pytest.mark.parametrize(
    "name, folder, expected",
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("kmnist", "KMNIST/raw", "train-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
        ("binarized_mnist", "BinarizedMNIST", "binarized_mnist_train.amat"),
    ],
)
def test_missing_data_is_one_clear_error(name, folder, expected, tmp_path):
    with pytest.raises(pg.DataError) as info:
        pg.load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / folder) in message and expected in message and "download" in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or created


def test_partly_missing_files_are_named(fake_root):
    (fake_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(pg.DataError, match=r"missing t10k-labels-idx1-ubyte\)"):
        pg.load_dataset("mnist", root=fake_root)


def test_bad_validation_size(fake_root):
    with pytest.raises(pg.DataError, match="num_val"):
        pg.load_dataset("mnist", root=fake_root, num_val=NUM_TRAIN)


def test_cli_reports_missing_data_in_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "fashion_mnist", "--data-root", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "FashionMNIST" in err and "download" in err


def test_binarized_mnist_reads_amat_files(tmp_path):
    folder = tmp_path / "BinarizedMNIST"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = {}
    for split, n in (("train", 6), ("valid", 3), ("test", 4)):
        pixels[split] = rng.integers(2, size=(n, 784))
        (folder / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, row)) for row in pixels[split]) + "\n")
    data = pg.load_dataset("binarized_mnist", root=tmp_path)
    assert data.binarization == "none" and data.shape == (1, 28, 28)
    assert torch.equal(data.test.reshape(4, 784), torch.as_tensor(pixels["test"], dtype=torch.float32))
    assert (data.train.shape[0], data.val.shape[0]) == (6, 3)


def test_binarized_mnist_rejects_truncated_rows(tmp_path):
    folder = tmp_path / "BinarizedMNIST"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"binarized_mnist_{split}.amat").write_text("0 1 0\n")
    with pytest.raises(pg.DataError, match="784"):
        pg.load_dataset("binarized_mnist", root=tmp_path)


@pytest.mark.parametrize("name", ["two_moons", "pinwheel", "rings", "eight_gaussians"])
def test_toy_densities(name):
    data = pg.load_dataset(name, num_train=2000)
    assert data.shape == (2,) and data.binarization == "none"
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (2000, 200, 200)
    assert data.train_labels is not None and len(data.train_labels.unique()) >= 2
    assert torch.equal(pg.load_dataset(name, num_train=2000).train, data.train)
    assert not torch.equal(pg.load_dataset(name, num_train=2000, seed=1).train, data.train)
    assert float(data.train.abs().max()) < 6.0


def test_eight_gaussians_components_sit_on_the_circle():
    data = pg.load_dataset("eight_gaussians", num_train=8000, std=0.35)
    radius = 4 / math.sqrt(2)
    for j in range(8):
        points = data.train[data.train_labels == j]
        centre = radius * torch.tensor([math.cos(2 * math.pi * j / 8), math.sin(2 * math.pi * j / 8)])
        # ~1000 points per component, each coordinate's mean has s.e. 0.35 / sqrt(1000) = 0.011;
        # 0.06 is over 5 standard errors.
        assert torch.allclose(points.mean(0), centre, atol=0.06)


def test_rings_radii_follow_labels():
    data = pg.load_dataset("rings", num_train=4000, num_rings=4, noise=0.05)
    norms = data.train.norm(dim=1)
    for ring in range(4):
        expected = (ring + 1) * 3.5 / 4
        # radial noise has s.d. ~0.05 per point; the mean over hundreds of points is within 0.02.
        assert abs(float(norms[data.train_labels == ring].mean()) - expected) < 0.02


def test_density_figure_puts_the_mass_where_the_density_is():
    data = torch.randn(500, 2)
    log_density = lambda p: torch.distributions.Normal(torch.tensor([1.0, -1.0]), 0.5).log_prob(p).sum(-1)  # noqa: E731
    fig = density_figure(log_density, data, bounds=(-3, 3, -3, 3), resolution=61)
    assert len(fig.axes) == 2
    heat = np.asarray(fig.axes[1].images[0].get_array())
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    # Grid step is 0.1: the peak pixel is the one at (x=1, y=-1); rows index y (origin lower).
    assert (round(-3 + 0.1 * col, 6), round(-3 + 0.1 * row, 6)) == (1.0, -1.0)
    with pytest.raises(pg.DataError, match=r"\(N, 2\)"):
        density_figure(log_density, torch.zeros(5, 3))


def test_plot_learned_density_of_a_trained_model(tmp_path):
    data = pg.load_dataset("two_moons", num_train=200)
    model = pg.create_model("vae", data, latent_dim=2, hidden=[16], likelihood="gaussian")
    guide = pg.create_guide("mean_field", model, hidden=[16])
    pg.fit(model, guide, data, epochs=2, progress=False)
    path = tmp_path / "density.png"
    fig = plot_learned_density(model, guide, data.train, path, num_samples=8, resolution=20)
    assert path.stat().st_size > 1000
    heat = np.asarray(fig.axes[1].images[0].get_array())
    assert heat.shape == (20, 20) and np.isfinite(heat).all() and heat.max() > 0
