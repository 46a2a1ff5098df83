"""Conv and ResNet encoders (``encoder="conv" | "resnet"``) on every amortized guide family, and
the matching decoders: parameter shapes on image shapes, a few fit steps on digits, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from pyro_genmod.guides.base import AmortizedGuide

import pyro_genmod as pg
from pyro_genmod._registry import GUIDES, _declared_parameters
from pyro_genmod.cli import main
from pyro_genmod.nn import ConvEncoder

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
KINDS = ["conv", "resnet"]
# the smallest model each kind of family covers: one vector site, two sites, a discrete site
MODELS = {
    "vae": {"latent_dim": 3, "hidden": (8,)},
    "vae2": {"latent_dims": (4, 2), "hidden": (8, 8)},
    "gmm": {"num_components": 3},
    "m2": {"latent_dim": 3, "hidden": (8,)},
    "ladder_vae": {"latent_dims": (4, 3, 2), "hidden": (16, 8, 8)},
}
GUIDE_OPTIONS = {"ladder": {"hidden": (16, 8, 8)}}  # one width per latent layer; other families: (8,)


def _amortized_families() -> list[str]:
    """Every registered guide with an encoder of x: the ones whose options include ``encoder``."""
    return [name for name in GUIDES.names() if "encoder" in _declared_parameters(GUIDES.lookup(name), 1)[0]]


def _model_for(family: str, shape: tuple[int, ...]):
    """A small model the family fits: one of MODELS, else any registered model with its defaults."""
    others = [name for name in pg.list_models() if name not in MODELS]
    for name in [*MODELS, *others]:
        model = pg.create_model(name, shape, **MODELS.get(name, {}))
        if pg.pairing_problem(family, model) is None:
            return model
    raise AssertionError(f"no registered model fits guide '{family}'")


def test_every_amortized_family_takes_an_encoder_option():
    # the families that read x through a network; a new one joins the tests below by taking `encoder`
    assert set(_amortized_families()) >= {
        "mean_field", "full_rank", "low_rank", "delta", "iaf", "planar", "radial", "sylvester", "spline",
        "bottom_up", "top_down", "categorical", "m2",
    }
    for name in GUIDES.names():
        if issubclass(GUIDES.lookup(name), AmortizedGuide):
            assert name in _amortized_families(), name


@pytest.mark.parametrize("family", _amortized_families())
@pytest.mark.parametrize("kind", KINDS)
def test_conv_encoder_gives_the_mlp_encoders_parameter_shapes(family, kind):
    """On each image shape the conv/ResNet guide has the MLP guide's variational parameters and
    draws, and a loss on the conv encoders' outputs reaches every convolution."""
    for shape in SHAPES:
        torch.manual_seed(0)
        model = _model_for(family, shape)
        options = GUIDE_OPTIONS.get(family, {"hidden": (8,)})
        mlp_guide = pg.create_guide(family, model, **options)
        guide = pg.create_guide(family, model, **options, encoder=kind, channels=4)
        assert guide.init_kwargs["encoder"] == kind
        x = torch.bernoulli(torch.full((5, *shape), 0.3))
        if isinstance(guide, AmortizedGuide):
            assert guide.variational_parameters(x).shape == mlp_guide.variational_parameters(x).shape == (5, sum(guide.sizes))
            assert isinstance(guide.encoder, ConvEncoder)
        draws, reference = guide(x), mlp_guide(x)
        assert {k: v.shape for k, v in draws.items()} == {k: v.shape for k, v in reference.items()}
        encoders = [m for m in guide.modules() if isinstance(m, ConvEncoder)]
        assert encoders
        loss = sum(encoder(x.reshape(5, -1)).square().sum() for encoder in encoders)
        convs = [m for m in guide.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 2 + (4 if kind == "resnet" else 0)  # two strided, two per residual block
        loss.backward()
        for conv in convs:
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_resnet_decoder_output_layout(shape):
    model = pg.create_model("vae", shape, latent_dim=3, decoder="resnet", channels=4,
                            likelihood="discretized_logistic")
    out = model.decoder(torch.randn(6, 2, 3))
    assert out.shape == (6, 2, 2 * math.prod(shape))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.decoder.modules()) == 1 + 4


@pytest.mark.parametrize("kind", KINDS)
def test_conv_vae_fits_digits(kind, digits):
    """A conv/ResNet encoder and decoder VAE trains a few steps on 8x8 digits and is scored."""
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=4, decoder=kind, channels=8)
    guide = pg.create_guide("mean_field", model, encoder=kind, channels=8)
    before = [p.detach().clone() for p in guide.encoder.parameters()]
    data = pg.Dataset(name="digits", train=digits.train[:96], val=digits.val[:16], test=digits.test[:16],
                      binarization=digits.binarization, options=dict(digits.options))
    result = pg.fit(model, guide, data, epochs=2, batch_size=32, progress=False)
    assert result.epochs_run == 2 and all(math.isfinite(h["val_elbo"]) for h in result.history)
    assert all(not torch.equal(a, b) for a, b in zip(before, guide.encoder.parameters()))
    ll = pg.log_likelihood(model, guide, data.test, 8, seed=0)
    assert torch.isfinite(ll.per_point).all() and bool((ll.per_point >= ll.elbo - 1e-4).all())


def test_conv_guides_of_two_layer_and_m2_models_fit_digits(digits):
    torch.manual_seed(0)
    data = pg.Dataset(name="digits", train=digits.train[:64], val=digits.val[:16], test=digits.test[:16],
                      binarization=digits.binarization, train_labels=digits.train_labels[:64],
                      val_labels=digits.val_labels[:16], test_labels=digits.test_labels[:16],
                      options=dict(digits.options))
    for model_name, guide_name, kind in (("vae2", "top_down", "resnet"), ("m2", "m2", "conv")):
        model = pg.create_model(model_name, data, **MODELS[model_name])
        guide = pg.create_guide(guide_name, model, encoder=kind, channels=4)
        objective = "traceenum_elbo" if model_name == "m2" else "trace_elbo"
        result = pg.fit(model, guide, data, epochs=1, batch_size=32, objective=objective, progress=False)
        assert math.isfinite(result.history[-1]["val_elbo"]), model_name


@pytest.mark.parametrize(("make", "match"), [
    (lambda: pg.create_guide("mean_field", pg.create_model("vae", (5,)), encoder="conv"),
     r"a conv encoder needs image data of shape \(C, H, W\), got \(5,\)"),
    (lambda: pg.create_guide("iaf", pg.create_model("vae", (4, 6)), encoder="resnet"),
     r"a ResNet encoder needs image data"),
    (lambda: pg.create_guide("top_down", pg.create_model("vae2", (7,)), encoder="conv"), "needs image data"),
    (lambda: pg.create_guide("m2", pg.create_model("m2", (7,)), encoder="resnet"), "needs image data"),
    (lambda: pg.create_guide("mean_field", pg.create_model("vae", (1, 3, 8)), encoder="conv"), "at least 4x4"),
    (lambda: pg.create_guide("mean_field", pg.create_model("vae", (1, 8, 8)), encoder="cnn"), "unknown encoder 'cnn'"),
    (lambda: pg.create_guide("mean_field", pg.create_model("vae", (1, 8, 8)), encoder="conv", channels=0),
     "channels must be a positive integer"),
    (lambda: pg.create_model("vae", (5,), decoder="resnet"), "a ResNet decoder needs image data"),
    (lambda: pg.create_model("vae", (1, 8, 8), decoder="deconv"), "unknown decoder 'deconv'"),
])
def test_bad_encoder_options_raise_config_error(make, match):
    with pytest.raises(pg.ConfigError, match=match) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_cli_conv_encoder_on_tabular_data_exits_2(tmp_path, capsys):
    code = main(["train", "--dataset", "iris", "--epochs", "1", "--quiet", "--guide-opt", 'encoder="conv"',
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("genmod: error:")]
    assert code == 2 and len(errors) == 1 and "conv encoder needs image data" in errors[0]
    assert "Traceback" not in err
