"""fit(..., compile=True): the compiled loss and gradients equal the eager ones on the same draws;
a step that cannot be compiled, or a compiler that fails, trains eagerly after one warning, with
the same result as an eager fit; checkpoints and resume are unaffected.

Tolerance of the comparisons: the compiled graph adds the same float32 terms as the eager step,
but fused kernels may add them in another order, and float32 addition is not associative. The
sums here have at most a few thousand terms, whose reordering moves a float32 sum by a few
units of 1e-7 of its magnitude (about sqrt(n) roundings of 6e-8): 1e-5 of the largest magnitude
is well above that and far below what different random draws would change (the loss moves by
whole nats).
"""

from __future__ import annotations

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.compiled import CompiledLoss, check_compile
from pyro_genmod.densities import elbo_loss

RTOL = 1e-5  # of the largest magnitude; see the module docstring


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    model = pg.create_model("vae", (1, 8, 8), latent_dim=2, hidden=[16])
    return model, pg.create_guide("mean_field", model, hidden=[16])


def _params(model, guide) -> list[torch.Tensor]:
    return [*model.parameters(), *guide.parameters()]


def _eager_loss_and_grads(model, guide, x, seed: int):
    for p in _params(model, guide):
        p.grad = None
    torch.manual_seed(seed)
    loss = elbo_loss(model, guide, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in _params(model, guide)]


def _compiled_loss_and_grads(compiled, model, guide, x, seed: int):
    for p in _params(model, guide):
        p.grad = None
    torch.manual_seed(seed)
    loss = compiled.loss_and_grads(x)
    assert loss is not None, "compiling failed"
    return loss.detach(), [p.grad.clone() for p in _params(model, guide)]


def _assert_close(compiled, eager) -> None:
    (loss_c, grads_c), (loss_e, grads_e) = compiled, eager
    assert abs(float(loss_c - loss_e)) <= RTOL * abs(float(loss_e))
    for gc, ge in zip(grads_c, grads_e):
        assert float((gc - ge).abs().max()) <= RTOL * float(ge.abs().max()) + 1e-12


def _check_same_as_eager(backend: str, digits) -> None:
    x = torch.bernoulli(digits.train[:32], generator=torch.Generator().manual_seed(0))
    model, guide = _pair()
    compiled = CompiledLoss(model, guide, backend=backend)
    for seed in (1, 2):  # the first call compiles, the second runs the compiled graph
        _assert_close(_compiled_loss_and_grads(compiled, model, guide, x, seed), _eager_loss_and_grads(model, guide, x, seed))
    # a second pair (new parameter values) through the same compiled code: its own numbers
    other, other_guide = _pair(seed=5)
    again = CompiledLoss(other, other_guide, backend=backend)
    _assert_close(_compiled_loss_and_grads(again, other, other_guide, x, 3), _eager_loss_and_grads(other, other_guide, x, 3))
    # different draws give a different loss: the comparison above could fail
    assert float(_eager_loss_and_grads(model, guide, x, 1)[0] - _eager_loss_and_grads(model, guide, x, 2)[0]) != 0.0


def test_compiled_graph_loss_and_gradients_equal_eager_on_the_same_draws(digits):
    """The captured graph (aot_eager: Dynamo and AOTAutograd as ``compile=True`` runs them, without
    inductor's code generation, which takes a minute on a loaded 2-core machine)."""
    _check_same_as_eager("aot_eager", digits)


@pytest.mark.slow
def test_inductor_compiled_loss_and_gradients_equal_eager_on_the_same_draws(digits):
    _check_same_as_eager("inductor", digits)


def _fit(data, **options):
    model, guide = _pair()
    result = pg.fit(model, guide, data, epochs=2, batch_size=256, progress=False, seed=3, **options)
    return result, [p.detach().clone() for p in _params(model, guide)]


def _assert_same_params(a, b) -> None:
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("options, why", [
    ({"objective": "iwae", "num_particles": 2}, "objective 'iwae' has no trace-free loss to compile"),
    ({"beta": 0.5}, "beta, KL warm-up and free bits reweight Pyro's sites"),
])
def test_a_step_that_cannot_be_compiled_trains_eagerly_after_one_warning(digits, options, why):
    eager, eager_params = _fit(digits, **options)
    with pytest.warns(RuntimeWarning, match=f"^compile=True: {why}.*; training eagerly$") as caught:
        result, params = _fit(digits, compile=True, **options)
    assert len([w for w in caught if "compile=True" in str(w.message)]) == 1
    assert result.compile_seconds is None and eager.compile_seconds is None
    _assert_same_params(params, eager_params)


def test_a_failing_compiler_falls_back_to_eager_with_the_random_state_rewound(digits, monkeypatch):
    eager, eager_params = _fit(digits)

    def broken_compile(fn, **kwargs):
        def run(x):
            torch.rand(7)  # a compiler that consumed random numbers before failing
            raise RuntimeError("no working C compiler\nlong details")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match=r"^compile=True: torch.compile failed \(RuntimeError: no working C "
                                            r"compiler\); training eagerly$"):
        result, params = _fit(digits, compile=True)
    assert result.compile_seconds is None
    _assert_same_params(params, eager_params)
    assert [r["train_elbo"] for r in result.history] == [r["train_elbo"] for r in eager.history]


def test_compile_takes_true_false_or_a_mode(digits):
    assert check_compile(True) == "default" and check_compile(False) is None
    assert check_compile("reduce-overhead") == "reduce-overhead"
    with pytest.raises(pg.ConfigError, match="compile must be true, false or a torch.compile mode"):
        _fit(digits, compile="fastest")


@pytest.mark.slow
def test_compiled_fit_matches_eager_and_resumes_bitwise(digits, tmp_path):
    """Two epochs compiled against eager (same draws: the losses agree to float32 reordering), and a
    compiled fit stopped after one epoch and resumed equals the uninterrupted compiled fit bit for bit."""
    eager, eager_params = _fit(digits)
    (tmp_path / "whole").mkdir(), (tmp_path / "cut").mkdir()
    whole, whole_params = _fit(digits, compile=True, checkpoint=str(tmp_path / "whole"))
    assert whole.compile_seconds > 0
    for a, b in zip(whole.history, eager.history):
        assert abs(a["train_elbo"] - b["train_elbo"]) <= 1e-4 * abs(b["train_elbo"])
    for p, q in zip(whole_params, eager_params):
        assert float((p - q).abs().max()) <= 1e-4 * float(q.abs().max())
    model, guide = _pair()
    pg.fit(model, guide, digits, epochs=1, batch_size=256, progress=False, seed=3, compile=True,
           checkpoint=str(tmp_path / "cut"))
    model, guide = _pair(seed=9)  # resume overwrites every parameter
    resumed = pg.fit(model, guide, digits, epochs=2, batch_size=256, progress=False, seed=3, compile=True,
                     checkpoint=str(tmp_path / "cut"), resume=True)
    _assert_same_params([p.detach() for p in _params(model, guide)], whole_params)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in whole.history]
