"""Side by side with pythae 0.1.2, the main peer (issue 21): training step, epoch, NLL speed and memory.

The same 784-400-20 networks in both libraries (tanh, Bernoulli decoder, diagonal-Gaussian
encoder), the weights copied from ours into pythae's, one torch thread, interleaved rounds in
one process, medians with order-statistic 95% intervals; the NLL run's peak memory is measured
with each library in a fresh process. Writes ``benchmarks/results/peers/peers.json`` and
``benchmarks/results/peers.md``.

    pip install "pyro-genmod[peers]"
    python -m benchmarks.peers                 # MNIST from $GENMOD_DATA_ROOT, --data-root or ../shared/data
    python -m benchmarks.peers --quick         # a short smoke run (synthetic images without MNIST); writes nothing
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import pyro_genmod as pg
from benchmarks.perf import hand_scorer, interleaved, machine, vae_pair
from pyro_genmod.datasets.base import Dataset
from pyro_genmod.folders import atomic_write_text
from pyro_genmod.train import _Fit, fit

__all__: list[str] = []

ROOT = Path(__file__).parent / "results"
DEFAULT_DATA = os.environ.get("GENMOD_DATA_ROOT") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
BATCH = 128


# ---------------------------------------------------------------- the two models


def pythae_vae(model, guide):
    """pythae's ``VAE`` with a custom encoder and decoder of our pair's layers (weights copied):
    the encoder's second half goes through our softplus scale into pythae's log-variance, the
    decoder's logits through a sigmoid into pythae's Bernoulli ``reconstruction`` (loss "bce")."""
    import copy

    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    latent_dim = model.latent_dim

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(guide.encoder)

        def forward(self, x):
            loc, raw = self.net(x.reshape(x.shape[0], -1)).split(latent_dim, dim=-1)
            return ModelOutput(embedding=loc, log_covariance=2 * torch.log(F.softplus(raw) + 1e-4))  # softplus_scale

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(model.decoder)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(z.shape[0], *model.data_shape))

    config = VAEConfig(input_dim=tuple(model.data_shape), latent_dim=latent_dim, reconstruction_loss="bce")
    return VAE(config, encoder=Encoder(), decoder=Decoder())


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- data


def load_data(root: str, quick: bool):
    """MNIST (dynamic binarization, as ``pg.load_dataset`` gives it) or, for ``--quick`` without
    MNIST on disk, synthetic intensities; the name of what was used."""
    try:
        data = pg.load_dataset("mnist", root=root)
        name = f"MNIST from {root}"
    except pg.GenmodError:
        if not quick:
            raise
        g = torch.Generator().manual_seed(0)
        images = lambda n: torch.rand((n, 1, 28, 28), generator=g) * (torch.rand((n, 1, 28, 28), generator=g) < 0.2)
        data = Dataset("synthetic", images(2560), torch.bernoulli(images(256), generator=g), torch.bernoulli(images(256), generator=g), "dynamic")
        name = "synthetic images (MNIST not found)"
    if quick:
        data = Dataset(data.name, data.train[:2560], data.val[:256], data.test, data.binarization)
    return data, name


def pythae_datasets(data):
    """pythae has no dynamic binarization: its user binarizes the training set once."""
    from pythae.data.datasets import BaseDataset

    train = torch.bernoulli(data.train, generator=torch.Generator().manual_seed(0)) if data.binarization == "dynamic" else data.train
    return BaseDataset(train, torch.zeros(len(train))), BaseDataset(data.val, torch.zeros(len(data.val)))


def pythae_trainer(vae, data, folder: str):
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    train, val = pythae_datasets(data)
    config = BaseTrainerConfig(
        output_dir=folder, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, num_epochs=1,
        learning_rate=1e-3, no_cuda=True,
    )
    trainer = BaseTrainer(vae, train, val, training_config=config)
    trainer.prepare_training()
    return trainer


def zoo_fit(model, guide, data, **options) -> _Fit:
    """The object :func:`pyro_genmod.fit` steps with, built with fit's own defaults (and ``options``,
    e.g. ``compile=True``)."""
    defaults = {
        name: p.default for name, p in inspect.signature(fit).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name in inspect.signature(_Fit.__init__).parameters
    }
    defaults.update(batch_size=BATCH, seed=0, **options)
    return _Fit(model, guide, data, **defaults)


# ---------------------------------------------------------------- timing


def summarize(res: dict, name: str = "ours") -> dict:
    """Seconds and the ratio ``name``/pythae, from :func:`benchmarks.perf.interleaved` (baseline pythae)."""
    ours, theirs = res[name], res["pythae"]
    return {
        "ours_s": ours["wall"]["median_s"], "pythae_s": theirs["wall"]["median_s"],
        "ratio_wall": ours["wall"]["ratio"], "ratio_wall_ci95": ours["wall"]["ratio_ci95"],
        "ratio_cpu": ours["cpu"]["ratio"], "ratio_cpu_ci95": ours["cpu"]["ratio_ci95"],
    }


def bench_steps(data, args) -> dict:
    """Optimizer step on the same batch; the step as each library's training loop runs it."""
    out = {}
    model, guide = vae_pair()
    vae = pythae_vae(model, guide)
    x = data.training_batch(data.train[:BATCH], torch.Generator().manual_seed(0))
    ours_fit = zoo_fit(model, guide, data)
    compiled_fit = zoo_fit(*vae_pair(), data, compile=True)  # fit(compile=True)'s step: compiled loss and gradients
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)  # pythae's default optimizer

    def pythae_step(inputs):
        output = vae(inputs, epoch=1, dataset_size=len(data.train), uses_ddp=False)
        opt.zero_grad()
        output.loss.backward()
        opt.step()
        return output.loss.item()

    same = {"ours": lambda: _same_batch(ours_fit, x), "pythae": lambda: pythae_step({"data": x}),
            "ours_compiled": lambda: _same_batch_compiled(compiled_fit, x)}
    began = time.perf_counter()
    _same_batch_compiled(compiled_fit, x)  # compiles
    out["compile_seconds"] = time.perf_counter() - began
    for fn in same.values():
        for _ in range(5):
            fn()
    res = interleaved(same, rounds=args.rounds, block=args.block, baseline="pythae")
    out["step_same_batch"], out["step_same_batch_compiled"] = summarize(res), summarize(res, "ours_compiled")
    print("step on the same batch", out["step_same_batch"], out["step_same_batch_compiled"], flush=True)

    with tempfile.TemporaryDirectory() as folder:
        trainer = pythae_trainer(pythae_vae(*vae_pair()), data, folder)
        model2, guide2 = vae_pair()
        loops = {"ours": zoo_fit(model2, guide2, data), "ours_compiled": zoo_fit(*vae_pair(), data, compile=True)}
        loaders = {"pythae": iter(()), "ours": iter(()), "ours_compiled": iter(())}

        def zoo_next(name):
            try:
                step, index = next(loaders[name])
            except StopIteration:
                loops[name].order = None
                loaders[name] = loops[name].batches()
                step, index = next(loaders[name])
            return loops[name].step(1, step, index)

        def pythae_next():  # the body of BaseTrainer.train_step's loop
            try:
                inputs = next(loaders["pythae"])
            except StopIteration:
                loaders["pythae"] = iter(trainer.train_loader)
                inputs = next(loaders["pythae"])
            inputs = trainer._set_inputs_to_device(inputs)
            output = trainer.model(inputs, epoch=1, dataset_size=len(trainer.train_loader.dataset), uses_ddp=False)
            trainer._optimizers_step(output)
            return output.loss.item()

        fns = {"ours": lambda: zoo_next("ours"), "pythae": pythae_next, "ours_compiled": lambda: zoo_next("ours_compiled")}
        for fn in fns.values():
            for _ in range(5):
                fn()
        res = interleaved(fns, rounds=args.rounds, block=args.block, baseline="pythae")
        out["step_training_loop"], out["step_training_loop_compiled"] = summarize(res), summarize(res, "ours_compiled")
        print("step in the training loop", out["step_training_loop"], out["step_training_loop_compiled"], flush=True)
        out["compiled_in_loop"] = loops["ours_compiled"].compiled is not None  # no fallback to eager happened
    return out


def _same_batch(ours_fit: _Fit, x):
    """``_Fit.step``'s work on a fixed batch: the loss, zero_grad, backward, Adam."""
    differentiable, value = ours_fit.objective(x, 0)
    ours_fit.optimizer.zero_grad(set_to_none=True)
    differentiable.backward()
    ours_fit.optimizer.step()
    return float(value)


def _same_batch_compiled(compiled_fit: _Fit, x):
    """``fit(compile=True)``'s step on a fixed batch: the compiled loss and gradients, then Adam."""
    loss = compiled_fit._compiled_step(x)
    if loss is None:
        raise RuntimeError("torch.compile failed on this machine: no compiled step to measure")
    compiled_fit.optimizer.step()
    return float(loss.detach())


def bench_epoch(data, args) -> dict:
    """One epoch as each library trains it: ``pg.fit(epochs=1)`` (with its validation ELBO
    before and after), and pythae's ``BaseTrainer.train_step`` plus ``eval_step``."""
    with tempfile.TemporaryDirectory() as folder:
        pair = vae_pair()
        trainer = pythae_trainer(pythae_vae(*vae_pair()), data, folder)
        epoch = [0]

        def pythae_epoch():
            epoch[0] += 1
            trainer.train_step(epoch[0])
            trainer.eval_step(epoch[0])

        fns = {
            "ours": lambda: fit(*pair, data, epochs=1, batch_size=BATCH, seed=epoch[0], progress=False),
            "pythae": pythae_epoch,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = summarize(interleaved(fns, rounds=args.epoch_rounds, block=1, baseline="pythae"))
    res["train_points"] = len(data.train)
    print("epoch", res, flush=True)
    return res


def bench_nll(data, args) -> dict:
    """NLL throughput: ``pg.log_likelihood`` (per-point estimates, ELBO and k-hat) against
    pythae's ``get_nll`` at its default batch size, on the same weights and test images."""
    out = {}
    model, guide = vae_pair()
    vae = pythae_vae(model, guide).eval()
    hand = hand_scorer(model, guide)
    x = data.test[: args.nll_points]
    for k in args.ks:
        fns = {
            "ours": lambda k=k: pg.log_likelihood(model, guide, x, k, seed=0),
            "pythae": lambda k=k: vae.get_nll(x, n_samples=k),
            "hand": lambda k=k: hand(x, k),
        }
        with torch.no_grad():
            res = interleaved(fns, rounds=args.nll_rounds, block=1, baseline="pythae")
        row = summarize(res)
        row["throughput_ratio"] = 1 / row["ratio_wall"]
        row["throughput_ratio_ci95"] = [1 / row["ratio_wall_ci95"][1], 1 / row["ratio_wall_ci95"][0]]
        row["ours_over_hand_throughput"] = res["hand"]["wall"]["median_s"] / res["ours"]["wall"]["median_s"]
        row["points"] = x.shape[0]
        out[f"K={k}"] = row
        print(f"NLL K={k}", row, flush=True)
    return out


# ---------------------------------------------------------------- agreement


def same_draws(model, guide, vae, x: torch.Tensor, k: int, seed: int = 0):
    """Per-point log p(x) from ``pg.log_likelihood`` and from pythae's ``get_nll`` (one point at a
    time, ``n_samples = batch_size = K``) with the same standard-normal draws: both take their
    K x latent draws from torch's global stream after ``torch.manual_seed(seed)``."""
    ours = pg.log_likelihood(model, guide, x, k, seed=seed, max_rows=k, khat=False)
    theirs = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            torch.manual_seed(seed)
            for _ in range(i):  # our scorer draws point after point from one stream: skip the earlier
                torch.randn(k, model.latent_dim)  # points' draws, one call each (torch's normal_ works in blocks)
            theirs.append(vae.get_nll(x[i : i + 1], n_samples=k, batch_size=k))
    return ours.per_point, torch.tensor(theirs, dtype=torch.float32)


def bench_agreement(data, args) -> dict:
    """The two estimators on the same weights: with the same draws (per point, to float
    rounding) and with independent draws (the difference against its standard error)."""
    model, guide = vae_pair()
    vae = pythae_vae(model, guide).eval()
    x = data.test[:5]
    ours, theirs = same_draws(model, guide, vae, x, 100)
    k = 1000
    ll = pg.log_likelihood(model, guide, x, k, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        independent = torch.tensor([vae.get_nll(x[i : i + 1], n_samples=k) for i in range(x.shape[0])])
    res = {
        "same_draws_max_abs_diff_nats": float((ours - theirs).abs().max()),
        "same_draws_points": x.shape[0],
        "same_draws_K": 100,
        "ours_mean": ll.mean, "pythae_mean": float(independent.mean()), "independent_K": k,
        "ours_per_point": ll.per_point.tolist(), "pythae_per_point": independent.tolist(),
    }
    print("agreement", res, flush=True)
    return res


# ---------------------------------------------------------------- memory (fresh processes)


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``; ``getrusage``'s maximum would include the
    parent's size at fork, which ``exec`` does not reset)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(lib: str, k: int, images: str) -> dict:
    """Runs in a fresh process: build the pair, load the test images (a small ``.pt`` file the
    parent wrote, so loading MNIST does not set the peak), then the NLL run; peak RSS before
    (the loaded process) and after."""
    torch.set_num_threads(1)
    model, guide = vae_pair()
    x = torch.load(images)
    vae = pythae_vae(model, guide).eval() if lib == "pythae" else None
    loaded = peak_rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        if lib == "pythae":
            value = -vae.get_nll(x, n_samples=k)
        else:
            value = pg.log_likelihood(model, guide, x, k, seed=0).mean
    return {
        "lib": lib, "K": k, "points": x.shape[0], "loaded_mib": loaded, "peak_mib": peak_rss_mib(),
        "increment_mib": peak_rss_mib() - loaded, "seconds": time.perf_counter() - start, "nll": -value,
        "arviz_imported": "arviz" in sys.modules,
    }


def run_child(lib: str, k: int, images: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.peers", "--child", lib, str(k), images]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(data, args) -> dict:
    """Peak memory of the NLL run, each library in a fresh process, alternating, ``--memory-rounds``
    times; and ours at K = 10^6 on 10 points against K = 5000 on 10 points."""
    runs = {"pythae": [], "ours": []}
    folder = tempfile.mkdtemp()
    images, ten = os.path.join(folder, "images.pt"), os.path.join(folder, "ten.pt")
    torch.save(data.test[: args.memory_points].clone(), images)
    torch.save(data.test[:10].clone(), ten)
    for r in range(args.memory_rounds):
        for lib in (("ours", "pythae") if r % 2 == 0 else ("pythae", "ours")):
            runs[lib].append(run_child(lib, args.memory_k, images))
            print("memory", runs[lib][-1], flush=True)
    flat = {}
    for k in args.flat_ks:
        flat[f"K={k}"] = run_child("ours", k, ten)
        print("memory, 10 points", flat[f"K={k}"], flush=True)
    summary = {
        lib: {key: float(np.median([run[key] for run in rows])) for key in ("loaded_mib", "peak_mib", "increment_mib", "seconds")}
        for lib, rows in runs.items()
    }
    return {"K": args.memory_k, "points": args.memory_points, "runs": runs, "median": summary, "ours_10_points": flat}


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def ci(pair) -> str:
    return f"95% CI {pair[0]:.3f}-{pair[1]:.3f}" if pair else ""


def write_markdown(result: dict, out: Path) -> None:
    m = result["machine"]
    s, n, mem, agree = result["steps"], result["nll"], result["memory"], result["agreement"]
    e = result["epoch"]
    lines = [
        "# Side by side with pythae 0.1.2 (issue 21)",
        "",
        f"Command: `{result['command']}` at commit `{m['commit']}`, {m['utc']} UTC.",
        (f"Machine: {m['cpu']}, {m['cpus']} cores, shared with two background training jobs (load average at the "
        f"start {', '.join(f'{v:.1f}' for v in m['load_average'])}); one torch thread; torch {m['torch']}, "
        f"pyro {m['pyro']}, pythae {result['pythae_version']}. Data: {result['data']}."),
        *([("Sections run separately (`--sections`), each with its own commit and load: " + "; ".join(
            f"{name} at `{r['commit']}`, {r['utc']} UTC, load {r['load_average'][0]:.1f}"
            for name, r in result["section_runs"].items()) + ".")] if result.get("section_runs") else []),
        "",
        (f"Networks: encoder 784-400-(2x20) and decoder 20-400-784, tanh, Bernoulli likelihood, in both libraries "
        f"(pythae's `VAE` with a custom `BaseEncoder`/`BaseDecoder` holding our layers, weights copied). Parameters: "
        f"ours {result['params']['ours']:,}, pythae {result['params']['pythae']:,}."),
        "",
        ("Ratios are ours / pythae, medians of per-round ratios over interleaved rounds in one process, with "
        "order-statistic 95% intervals (wall clock; CPU time beside it)."),
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    step, loop = s["step_same_batch"], s["step_training_loop"]
    lines += [
        (f"| optimizer step on the same batch: at most 0.7x pythae's time | {step['ratio_wall']:.3f}x ({ci(step['ratio_wall_ci95'])}); "
        f"{step['ours_s'] * 1e3:.2f} vs {step['pythae_s'] * 1e3:.2f} ms | {verdict(step['ratio_wall'] <= 0.7)} |"),
        (f"| step as the training loop runs it: at most 0.7x | {loop['ratio_wall']:.3f}x ({ci(loop['ratio_wall_ci95'])}); "
        f"{loop['ours_s'] * 1e3:.2f} vs {loop['pythae_s'] * 1e3:.2f} ms | {verdict(loop['ratio_wall'] <= 0.7)} |"),
        (f"| epoch: at most 0.7x | {e['ratio_wall']:.3f}x ({ci(e['ratio_wall_ci95'])}); {e['ours_s']:.1f} vs {e['pythae_s']:.1f} s "
        f"| {verdict(e['ratio_wall'] <= 0.7)} |"),
    ]
    for key, text in (("step_same_batch_compiled", "optimizer step on the same batch"),
                      ("step_training_loop_compiled", "step as the training loop runs it")):
        if key in s:
            c = s[key]
            lines.append(
                f"| {text}, `fit(compile=True)`: at most 0.7x | {c['ratio_wall']:.3f}x ({ci(c['ratio_wall_ci95'])}); "
                f"{c['ours_s'] * 1e3:.2f} vs {c['pythae_s'] * 1e3:.2f} ms (compiling took {s['compile_seconds']:.0f} s once) "
                f"| {verdict(c['ratio_wall'] <= 0.7)} |"
            )
    for key, row in n.items():
        lines.append(
            f"| NLL throughput at {key}: at least 1.5x pythae's | {row['throughput_ratio']:.2f}x "
            f"({ci(row['throughput_ratio_ci95'])}); {row['ours_s']:.2f} vs {row['pythae_s']:.2f} s on {row['points']} points "
            f"| {verdict(row['throughput_ratio'] >= 1.5)} |"
        )
    med = mem["median"]
    lines.append(
        f"| NLL peak memory increment at K={mem['K']} ({mem['points']} images): at most pythae's | ours +{med['ours']['increment_mib']:.0f} MiB "
        f"(peak {med['ours']['peak_mib']:.0f}), pythae +{med['pythae']['increment_mib']:.0f} MiB (peak {med['pythae']['peak_mib']:.0f}) "
        f"| {verdict(med['ours']['increment_mib'] <= med['pythae']['increment_mib'])} |"
    )
    flat = mem["ours_10_points"]
    big, small = flat[f"K={max(result['flat_ks'])}"], flat[f"K={min(result['flat_ks'])}"]
    lines.append(
        f"| peak memory at K={big['K']:,} on 10 points within 1.2x of K={small['K']:,} | {big['peak_mib']:.0f} vs {small['peak_mib']:.0f} MiB "
        f"= {big['peak_mib'] / small['peak_mib']:.3f}x (increments +{big['increment_mib']:.0f} vs +{small['increment_mib']:.0f} MiB) "
        f"| {verdict(big['peak_mib'] <= 1.2 * small['peak_mib'])} |"
    )
    for key, row in n.items():
        lines.append(
            f"| scorer at least 0.95x a hand-written batched estimator ({key}, same interleaved rounds) | "
            f"{row['ours_over_hand_throughput']:.3f}x (ratio of medians) | {verdict(row['ours_over_hand_throughput'] >= 0.95)} |"
        )
    lines += [
        "",
        "## Agreement on the same weights",
        "",
        (f"- Same draws (each library seeded to take the same K={agree['same_draws_K']} standard-normal draws per point, "
        f"{agree['same_draws_points']} test images): per-point log p(x) differs by at most "
        f"{agree['same_draws_max_abs_diff_nats']:.2e} nats."),
        (f"- Independent draws, K={agree['independent_K']}: ours {agree['ours_mean']:.2f}, pythae {agree['pythae_mean']:.2f} nats "
        "(untrained weights; the per-point values are in peers.json). `tests/test_peers.py` checks both."),
        "",
        "## What is measured",
        "",
        ("- Step on the same batch: ours is the loss, zero_grad, backward and Adam of `fit`'s step object on one "
        "binarized batch of 128; pythae's is `model(inputs)`, zero_grad, backward, Adam (its trainer's default)."),
        ("- The compiled rows: the same two measures for `fit(..., compile=True)`'s step (loss and gradients under "
        "`torch.compile`, then the same Adam), in the same interleaved rounds as the eager rows; its one-off compile "
        "time is not in the per-step time. The epoch is measured eagerly only: each `pg.fit` call compiles again."),
        ("- Step as the training loop runs it: ours `fit`'s step on consecutive minibatches (gather and dynamic "
        "binarization included); pythae the body of `BaseTrainer.train_step` (its DataLoader, forward, optimizer step, "
        "`loss.item()`). pythae has no dynamic binarization: it trains on the training set binarized once."),
        (f"- Epoch ({e['train_points']:,} training images, batch 128): `pg.fit(epochs=1)` with its validation ELBO before and "
        "after training; pythae's `train_step` and `eval_step` on the same validation images."),
        ("- NLL: `pg.log_likelihood(..., seed=0)` (per-point estimates, ELBO and k-hat, default chunking) against "
        "`get_nll(x, n_samples=K)` (its default batch_size=100: a Python loop over points, one mean, no k-hat)."),
        (f"- Memory: each library in a fresh process (`python -m benchmarks.peers --child LIB K IMAGES.pt`), "
        f"{len(mem['runs']['ours'])} runs each, alternating; peak RSS (`VmHWM`) after building the pair and "
        "loading the images (the loaded process), and its increment over the NLL run; medians."),
        "",
        "Raw numbers: `benchmarks/results/peers/peers.json`.",
    ]
    out.write_text("\n".join(lines) + "\n")


SECTIONS = {"agreement": bench_agreement, "steps": bench_steps, "epoch": bench_epoch, "nll": bench_nll,
            "memory": bench_memory}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--data-root", default=DEFAULT_DATA)
    parser.add_argument("--child", nargs=3, metavar=("LIB", "K", "IMAGES"), help=argparse.SUPPRESS)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="measure only these; the others are kept from the saved peers.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        lib, k, images = args.child
        print(json.dumps(memory_child(lib, int(k), images)))
        return 0
    random.seed(0)
    torch.manual_seed(0)
    quick = args.quick
    args.rounds, args.block = (3, 3) if quick else (10, 10)
    args.epoch_rounds = 2 if quick else 3
    args.ks = (100, 500) if quick else (1000, 5000)
    args.nll_points, args.nll_rounds = (4, 2) if quick else (10, 5)
    args.memory_k, args.memory_points, args.memory_rounds = (500, 5, 1) if quick else (5000, 50, 2)
    args.flat_ks = (500, 20_000) if quick else (5000, 1_000_000)
    data, data_name = load_data(args.data_root, quick)
    import pythae

    model, guide = vae_pair()
    result = {
        "machine": machine(),
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.peers" + (" --quick" if quick else ""),
        "pythae_version": pythae.__version__ if hasattr(pythae, "__version__") else "0.1.2",
        "data": data_name,
        "params": {"ours": count(model) + count(guide), "pythae": count(pythae_vae(model, guide))},
        "flat_ks": list(args.flat_ks),
    }
    saved_path = ROOT / "peers" / "peers.json"
    if set(args.sections) != set(SECTIONS):  # a partial rerun: the other sections as they were measured
        if not saved_path.is_file():
            parser.error(f"--sections needs the earlier full run's {saved_path} for the other sections")
        saved = json.loads(saved_path.read_text())
        runs = saved.pop("section_runs", None) or {name: saved["machine"] for name in SECTIONS}
        result = {**saved, **{k: v for k, v in result.items() if k != "machine"}, "section_runs": runs}
    else:
        result["section_runs"] = {}
    for name in args.sections:
        result[name] = SECTIONS[name](data, args)
        result["section_runs"][name] = {**machine(), "command": result["command"] + " --sections " + name}
    if quick:
        print(json.dumps(result, indent=2, default=str))
        return 0
    (ROOT / "peers").mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_path, json.dumps(result, indent=2))
    write_markdown(result, ROOT / "peers.md")
    print(f"wrote {ROOT / 'peers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
