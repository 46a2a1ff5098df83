"""Parameter initialization schemes, applied to a model and guide before training.

:func:`~pyro_genmod.train.fit` takes one as ``init=`` (``genmod train --init``, ``init`` in a
bench config); :func:`initialize` applies one to a pair directly.

* ``"glorot"``: every linear layer of the model and the guide gets Glorot-uniform weights
  (U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), the scale Glorot & Bengio (2010) derive for
  tanh networks) and zero biases. torch's default draws weights about 2.2 times narrower
  (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and nonzero biases.
* ``"burda"``: ``"glorot"``, and the decoder's output bias set to the logit of the mean training
  pixel, clipped to [0.001, 0.999], so that the untrained decoder already predicts the average
  image. This is the initialization of Burda, Grosse & Salakhutdinov's code
  (https://github.com/yburda/iwae: ``Linear.random`` and ``get_train_bias_np``); it needs a
  Bernoulli likelihood and a decoder whose last layer is linear (``decoder="mlp"``).

On MNIST the ``burda`` scheme takes the validation ELBO of Burda's two-layer VAE from -181.8
to -124.9 nats after two epochs (``benchmarks/results/reproduce.md`` says more).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .seeding import seeded

__all__ = ["INIT_SCHEMES", "check_init", "initialize"]

INIT_SCHEMES = ("glorot", "burda")


def check_init(scheme) -> str | None:
    """``scheme`` if it names an initialization (``None`` keeps the networks' own), else a
    :class:`ConfigError` listing the schemes."""
    if scheme is None or (isinstance(scheme, str) and scheme in INIT_SCHEMES):
        return scheme
    raise ConfigError(f"unknown init {scheme!r}; choose one of {list(INIT_SCHEMES)}, or leave it out for torch's default")


def _linear_layers(*modules) -> list[nn.Linear]:
    return [m for module in modules if isinstance(module, nn.Module) for m in module.modules() if isinstance(m, nn.Linear)]


def _output_layer(model) -> nn.Linear:
    """The decoder's last layer, when it is linear and gives the Bernoulli logits of every pixel."""
    observation, decoder = getattr(model, "observation", None), getattr(model, "decoder", None)
    name = getattr(model, "registry_name", type(model).__name__)
    if getattr(observation, "registry_name", None) != "bernoulli":
        raise ConfigError(
            f"init='burda' sets the decoder's output bias to the logits of the mean pixel, which needs a model "
            f"with a Bernoulli likelihood; model '{name}' has none (use init='glorot')"
        )
    last = decoder[-1] if isinstance(decoder, nn.Sequential) and len(decoder) else None
    if not isinstance(last, nn.Linear) or last.out_features != observation.out_features:
        raise ConfigError(
            f"init='burda' needs a decoder whose last layer is linear (decoder='mlp'); model '{name}' "
            f"has another (use init='glorot')"
        )
    return last


def initialize(model, guide, train: Tensor, scheme: str, *, seed: int = 0) -> None:
    """Apply the initialization ``scheme`` to ``model`` and ``guide`` in place.

    ``train`` holds the training points (for ``"burda"``'s mean pixel; grey levels in [0, 1]
    under dynamic binarization, whose mean is the pixel's probability). The weights are drawn
    from a stream seeded with ``seed``; the global random streams are left as they were.
    """
    check_init(scheme)
    output = _output_layer(model) if scheme == "burda" else None  # refuse before changing anything
    with seeded(seed), torch.no_grad():
        for layer in _linear_layers(model, guide):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                layer.bias.zero_()
        if output is not None:
            mean = train.reshape(train.shape[0], -1).to(output.bias).mean(0).clamp(0.001, 0.999)
            output.bias.copy_(torch.log(mean) - torch.log1p(-mean))
