"""Sample quality without network access: a Fréchet distance in a classifier trained on the data itself."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor, nn

from .checks import as_points, check_positive_int
from .errors import DataError
from .nn import mlp
from .seeding import check_seed, seeded

__all__ = ["FeatureClassifier", "frechet_distance", "sample_fd", "train_classifier"]


class FeatureClassifier(nn.Module):
    """An MLP classifier whose last hidden layer is the feature map of the Fréchet distance.

    FID (Heusel et al., 2017) uses an Inception network trained on ImageNet, which needs a
    download and does not fit 28x28 digits. Here the feature network is trained on the
    dataset's own labels, so the measure works offline on any labelled image set; its values are
    comparable only between sample sets scored with the same classifier.

    Arguments:
        data_shape: shape of one point.
        num_classes: classes to predict.
        hidden: hidden widths; the last is the feature size.
    """

    def __init__(self, data_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        self.net = mlp(prod(self.data_shape), hidden, int(num_classes), "relu")

    def features(self, x: Tensor) -> Tensor:
        """Last-hidden-layer activations, shape ``(N, hidden[-1])``."""
        return self.net[:-1](x.reshape(x.shape[0], -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net[-1](self.features(x))

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        with torch.no_grad():
            return float((self(x).argmax(-1) == labels).float().mean())


def train_classifier(
    x: Tensor, labels: Tensor, *, hidden: Sequence[int] = (256, 128), epochs: int = 20, batch_size: int = 128,
    lr: float = 1e-3, seed: int = 0,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on points ``x`` (grey levels, shape ``(N, ...)``) and
    integer ``labels`` (shape ``(N,)``) with Adam and cross-entropy; returned in eval mode."""
    x = as_points(x)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_seed(seed)
    if not isinstance(labels, Tensor) or labels.shape != (x.shape[0],) or labels.is_floating_point():
        raise DataError(f"labels must be an integer tensor of shape ({x.shape[0]},), got "
                        f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    labels = labels.long()
    with seeded(seed):
        net = FeatureClassifier(x.shape[1:], int(labels.max()) + 1, hidden)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for rows in torch.randperm(x.shape[0]).split(batch_size):
                loss = nn.functional.cross_entropy(net(x[rows]), labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets of shape ``(N, F)``:

    .. math:: \|\mu_a - \mu_b\|^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b - 2 (\Sigma_a \Sigma_b)^{1/2}\big)

    computed in float64, with tr (Σa Σb)^{1/2} as the sum of square roots of the eigenvalues of
    the symmetric Σa^{1/2} Σb Σa^{1/2}. The estimate is biased upwards for finite N (Chong &
    Forsyth, 2020): compare sets of the same size.

    References:
        | GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
          (Heusel et al., 2017) https://arxiv.org/abs/1706.08500
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[0] < 2:
            raise DataError(f"feature set {name} must be a tensor of shape (N >= 2, F), got "
                            f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature sets have {a.shape[1]} and {b.shape[1]} features; they must match")
    a, b = a.detach().double(), b.detach().double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def sample_fd(classifier: FeatureClassifier, samples: Tensor, reference: Tensor) -> float:
    """The Fréchet distance between ``samples`` and ``reference`` points in ``classifier``'s features."""
    with torch.no_grad():
        return frechet_distance(classifier.features(as_points(samples)), classifier.features(as_points(reference)))
