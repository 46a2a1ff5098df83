"""The scorer's memory (issue 21): k-hat without ArviZ equals ArviZ's, scoring imports no ArviZ,
and the peak memory of a run does not grow with K."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pyro_genmod.arviz_bridge import psis_khat, psis_khat_from_tail, psis_tail_size


def _arviz_khat(log_weights: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        _, khat = az.psislw(log_weights.copy())
    return np.where(np.isfinite(khat), khat, np.nan)


def _weights(kind: str, k: int, rng) -> np.ndarray:
    if kind == "normal":
        return 2 * rng.normal(size=(6, k))
    if kind == "student_t":
        return rng.standard_t(2, size=(6, k))
    if kind == "pareto":  # k-hat well above 0.7
        return 3 * np.log(rng.pareto(0.8, size=(6, k)) + 1e-3)
    if kind == "ties":
        return np.round(rng.normal(size=(6, k)), 1)
    w = rng.normal(size=(6, k))
    w[:, ::3] = -np.inf  # zero weights
    return w


@pytest.mark.parametrize("k", [5, 20, 25, 26, 100, 1000, 5000])
@pytest.mark.parametrize("kind", ["normal", "student_t", "pareto", "ties", "zero_weights"])
def test_khat_from_the_kept_tail_equals_arviz_psislw_on_all_weights(k, kind):
    if not hasattr(pytest.importorskip("arviz"), "psislw"):
        pytest.skip("arviz 1.x has no psislw; the reference here is arviz 0.x's")
    rng = np.random.default_rng(k)
    w = _weights(kind, k, rng)
    want = _arviz_khat(w)
    np.testing.assert_allclose(psis_khat(w), want, rtol=1e-12, atol=0)  # NaN where arviz gives inf
    tail = np.sort(w, axis=-1)[:, -psis_tail_size(k):]  # what the streamed scorer keeps
    np.testing.assert_allclose(psis_khat_from_tail(rng.permuted(tail, axis=-1), k), want, rtol=1e-12, atol=0)
    if k >= 100 and kind != "ties":
        assert np.isfinite(want).all()


def _child(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_scoring_with_khat_imports_no_arviz():
    out = _child(
        "import json, sys, torch\n"
        "import pyro_genmod as pg\n"
        "model = pg.create_model('vae', (1, 8, 8), latent_dim=2, hidden=[8])\n"
        "guide = pg.create_guide('mean_field', model, hidden=[8])\n"
        "x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.3))\n"
        "a = pg.log_likelihood(model, guide, x, 200, seed=0)\n"
        "b = pg.log_likelihood(model, guide, x, 2000, max_rows=256, seed=0)\n"
        "print(json.dumps({'arviz': 'arviz' in sys.modules, 'khat': a.khat.tolist() + b.khat.tolist()}))\n"
    )
    assert not out["arviz"]
    assert np.isfinite(out["khat"]).all()


_PEAK = (
    "import json, resource, sys, torch\n"
    "import pyro_genmod as pg\n"
    "torch.manual_seed(0)\n"
    "model = pg.create_model('vae', (1, 28, 28), latent_dim=20, hidden=[400])\n"
    "guide = pg.create_guide('mean_field', model, hidden=[400])\n"
    "x = torch.bernoulli(torch.full((10, 1, 28, 28), 0.13), generator=torch.Generator().manual_seed(0))\n"
    "pg.log_likelihood(model, guide, x[:1], 10, seed=0)\n"
    "peak = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024\n"
    "loaded = peak()\n"
    "ll = pg.log_likelihood(model, guide, x, int(sys.argv[1]), seed=0)\n"
    "print(json.dumps({'loaded': loaded, 'peak': peak(), 'finite': bool(torch.isfinite(ll.per_point).all())}))\n"
)


@pytest.mark.slow
def test_peak_memory_stays_flat_as_k_grows():
    """10 MNIST-sized points through the 784-400-20 VAE, each K in a fresh process: the peak
    RSS at K = 200,000 (40x the draws) is within 1.2x of K = 5000's."""
    runs = {}
    for k in (5000, 200_000):
        done = subprocess.run([sys.executable, "-c", _PEAK, str(k)], capture_output=True, text=True, check=True,
                              env={"OMP_NUM_THREADS": "1", "PATH": ""})
        runs[k] = json.loads(done.stdout.strip().splitlines()[-1])
        assert runs[k]["finite"]
    small, big = runs[5000], runs[200_000]
    # the issue's target: the peak at 40x the draws within 1.2x of K = 5000's. A tighter bound on
    # the increment over the loaded process is not asserted: glibc's heap fragmentation makes it
    # vary by tens of MiB between identical runs (51 and 111 MiB for the same K = 5000 run in
    # benchmarks/peers.py; 82 against 145 MiB here at K = 5000 and 200,000 in one run).
    assert big["peak"] <= 1.2 * small["peak"], runs
