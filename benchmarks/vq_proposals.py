"""Which defensive mixture to score a trained VQ-VAE with: IS NLL per ``prior_weight`` and temperature.

The ``vq`` guide scores with (1 - w) q(c_p|x) + w p(c_p) per code position. Training (``vq_elbo``) does
not read w, so one trained run can be rescored with every w; choose w on validation images (the lowest
IS NLL is the tightest bound: each one is a stochastic upper bound of the NLL), then score the test set
with it. Used for ``benchmarks/configs/zoo_mnist_vq_vae.toml`` (results/zoo/notes/zoo_mnist_vq_vae.md):

    OMP_NUM_THREADS=1 python benchmarks/vq_proposals.py RUN_FOLDER --split val --points 300 \
        --weights 0.1 0.2 0.3 0.5        # MNIST runs read $GENMOD_DATA_ROOT
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import pyro_genmod as pg
from pyro_genmod.errors import GenmodError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained vq_vae run folder (genmod train or genmod bench)")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--points", type=int, default=300, help="the first N images of the split")
    parser.add_argument("-K", "--num-samples", type=int, default=1000)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.9])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run = pg.load_run(args.run)
    except GenmodError as error:
        parser.error(str(error))
    x = getattr(run.data, args.split)[: args.points]
    options = {k: v for k, v in run.config["guide"]["options"].items() if k not in ("prior_weight", "temperature")}
    print(f"{args.run}: {args.split} images 0-{x.shape[0] - 1}, K = {args.num_samples}, seed {args.seed}")
    for temperature in args.temperatures:
        for weight in args.weights:
            guide = pg.create_guide("vq", run.model, prior_weight=weight, temperature=temperature, **options)
            guide.load_state_dict(run.guide.state_dict())
            start = time.perf_counter()
            torch.manual_seed(args.seed)
            ll = pg.log_likelihood(run.model, guide, x, num_samples=args.num_samples)
            s, khat = ll.summary(), np.asarray(ll.khat)
            print(f"T={temperature:g} w={weight:g}: IS NLL {-s['log_likelihood']:.2f} ± {s['log_likelihood_stderr']:.2f}, "
                  f"ELBO {s['elbo']:.2f}, mean k-hat {np.nanmean(khat):.2f}, k-hat > 0.7 {np.mean(khat > 0.7):.0%}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
