"""Ex-post samplers against the prior: Fréchet distance in a classifier trained on the dataset itself.

Trains a VAE (``mean_field`` guide, ``trace_elbo``) on the dataset, then draws ``--num-samples``
points (decoded means E[x|z]) from each sampler: ``prior`` (z ~ p(z)) and the ex-post samplers
``gmm``, ``maf`` and ``two_stage`` fitted to the training set's posterior means
(:func:`pyro_genmod.fit_sampler`). Each sample set is scored by the Fréchet distance to the grey-level
test images in the last hidden layer of an MLP classifier trained on the grey-level training images
and labels (:mod:`pyro_genmod.sample_quality`; no download, unlike FID's Inception network). FD is
biased upwards at finite N, so every set has the same size, and the ``data`` row (grey-level training
images, same N) shows the floor a perfect sampler would reach. Each FD is the mean over ``--repeats``
sample seeds with its standard error. A grid of 64 samples per sampler is written beside the table.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/samplers.py --dataset digits
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/samplers.py --dataset mnist   # $GENMOD_DATA_ROOT

Writes ``benchmarks/results/samplers_DATASET.json`` and PNGs, then rebuilds the section
"Ex-post samplers" of ``benchmarks/results/zoo.md`` from every ``samplers_*.json``
(``--results-dir DIR``: all of them in DIR instead; a missing ``DIR/zoo.md`` is started).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torchvision.utils

import pyro_genmod as pg
from pyro_genmod.bench.args import results_folder
from pyro_genmod.bench.provenance import commit_label, machine
from pyro_genmod.folders import atomic_write, atomic_write_text
from pyro_genmod.sample_quality import sample_fd, train_classifier

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLERS = ("prior", "gmm", "maf", "two_stage")
BEGIN, END = "<!-- samplers.py: begin -->", "<!-- samplers.py: end -->"
DEFAULTS = {  # per dataset: VAE epochs and latent size, classifier epochs, sampler options
    "digits": {"epochs": 40, "latent_dim": 8, "classifier_epochs": 30, "scale": 4,
               "options": {"gmm": {}, "maf": {"epochs": 100}, "two_stage": {"epochs": 100}}},
    "mnist": {"epochs": 10, "latent_dim": 20, "classifier_epochs": 5, "scale": 2,
              "options": {"gmm": {}, "maf": {"epochs": 10}, "two_stage": {"epochs": 20}}},
}


NOTES = {  # what the measured table says, checked against the numbers when they were written
    "digits": (23.7, (
        "On digits the ex-post samplers do not beat the prior at this budget: the prior's FD (23.7) is the "
        "lowest, gmm is 1.3 higher (2.2 s.e. of the difference), maf and two_stage 4.4-5.0 higher. A likely reason (not measured here): with 8 latent "
        "dimensions and 1,297 training points the aggregate posterior may already be close to N(0, I), and "
        "the flow and the second VAE, fitted to 1,297 codes, add their own error. Every sampler is far "
        "above the data floor (2.0): decoded means are smoother than real digits, which the classifier's "
        "features see. On MNIST (below) the ex-post samplers do beat the prior."
    )),
    "mnist": (17.7, (
        "On MNIST, with 20 latent dimensions, every ex-post sampler beats the prior, as pythae reports: gmm "
        "cuts the prior's FD (17.7) to 7.8 (9.9 lower, 12 s.e. of the difference), maf to 11.5 (6.2 lower, "
        "7 s.e.), two_stage to 15.8 (1.9 lower, 2.4 s.e.). A likely reason (not measured here): the prior puts mass where the aggregate posterior "
        "of a 10-epoch VAE has little (the holes between the classes), and a 10-component mixture fitted to "
        "59,000 codes follows the posterior's shape best at this budget; the flow (10 epochs) and the second "
        "VAE (20 epochs) are fitted briefly. The data floor is 5.2: gmm closes about 80% of the prior's gap to it."
    )),
}  # each note with the prior's FD of the run it describes: another run's table is shown without it


def load_load() -> str:
    try:
        return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def run(args) -> dict:
    settings = DEFAULTS[args.dataset]
    epochs = args.epochs or settings["epochs"]
    data = pg.load_dataset(args.dataset)
    grey = pg.load_dataset(args.dataset, binarize=False)
    began = time.perf_counter()
    classifier = train_classifier(grey.train, grey.train_labels, epochs=settings["classifier_epochs"], seed=args.seed)
    accuracy = classifier.accuracy(grey.test, grey.test_labels)
    classifier_seconds = time.perf_counter() - began

    torch.manual_seed(args.seed)
    model = pg.create_model("vae", data, latent_dim=settings["latent_dim"])
    guide = pg.create_guide("mean_field", model)
    began = time.perf_counter()
    pg.fit(model, guide, data, epochs=epochs, seed=args.seed, progress=False)
    vae_seconds = time.perf_counter() - began

    n = min(args.num_samples, grey.test.shape[0])
    reference = grey.test[:n]
    rows = []
    generator = torch.Generator().manual_seed(args.seed)
    floor = [sample_fd(classifier, grey.train[torch.randperm(grey.train.shape[0], generator=generator)[:n]], reference)
             for _ in range(args.repeats)]
    rows.append({"sampler": "data (training images)", "fd": floor, "fit_seconds": 0.0})
    for name in SAMPLERS:
        began = time.perf_counter()
        sampler = "prior" if name == "prior" else pg.fit_sampler(name, model, guide, data, seed=args.seed,
                                                               **settings["options"][name])
        fit_seconds = time.perf_counter() - began
        fds = [sample_fd(classifier, pg.sample(model, n, mean=True, seed=seed, sampler=sampler), reference)
               for seed in range(args.repeats)]
        grid = torchvision.utils.make_grid(pg.sample(model, 64, mean=True, seed=0, sampler=sampler).clamp(0, 1),
                                           nrow=8, padding=1, pad_value=0.5)
        grid = torch.nn.functional.interpolate(grid.unsqueeze(0), scale_factor=settings["scale"], mode="nearest")[0]
        png = args.results_dir / f"samplers_{args.dataset}_{name}.png"
        atomic_write(png, lambda tmp, grid=grid: torchvision.utils.save_image(grid, tmp, format="png"), what="image")
        rows.append({"sampler": name, "fd": fds, "fit_seconds": fit_seconds, "grid": png.name,
                     "options": settings["options"].get(name, {})})
        print(name, sum(fds) / len(fds), flush=True)
    commit = commit_label()
    return {
        "dataset": args.dataset, "shape": list(data.shape), "num_samples": n, "repeats": args.repeats,
        "vae": {"latent_dim": settings["latent_dim"], "epochs": epochs, "seconds": vae_seconds},
        "classifier": {"hidden": [256, 128], "epochs": settings["classifier_epochs"], "test_accuracy": accuracy,
                       "seconds": classifier_seconds},
        "rows": rows, "commit": commit,
        "machine": f"{machine()}, {load_load()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "command": f"OMP_NUM_THREADS=1 nice -n 10 python benchmarks/samplers.py --dataset {args.dataset}"
                   + (f" --epochs {args.epochs}" if args.epochs else "")
                   + f" --num-samples {args.num_samples} --repeats {args.repeats} --seed {args.seed}",
    }


def section(folder: Path = RESULTS) -> str:
    lines = [BEGIN, "## Ex-post samplers: Fréchet distance in a classifier trained on the data", "",
             ("Written by `benchmarks/samplers.py` (rebuilt from `samplers_*.json`). A VAE with a `mean_field` "
             "guide (200-200 tanh networks, Bernoulli likelihood, Adam lr 1e-3, batch 128) is sampled "
             "(decoded means E[x|z]) from its prior and from ex-post samplers fitted to the training set's "
             "posterior means (`pg.fit_sampler`). FD: Fréchet distance to the grey-level test images in the "
             "128 last-hidden features of an MLP (256-128, ReLU) trained on the grey-level training images "
             "(`pyro_genmod.sample_quality`); lower is better; mean ± s.e. over sample seeds, every set of the "
             "same size N. The `data` row (real training images, same N) is the floor set by N."), ""]
    for path in sorted(folder.glob("samplers_*.json")):
        r = json.loads(path.read_text())
        lines += [f"### {r['dataset']}", "",
                  (f"VAE latent {r['vae']['latent_dim']}, {r['vae']['epochs']} epochs ({r['vae']['seconds']:.0f} s); "
                  f"classifier {r['classifier']['epochs']} epochs, test accuracy {r['classifier']['test_accuracy']:.3f}; "
                  f"N = {r['num_samples']}, {r['repeats']} sample seeds. Command: `{r['command']}` at commit "
                  f"{r['commit']}. Machine: {r['machine']}."), "",
                  "| sampler | options | FD (mean ± s.e.) | fit s | samples |", "|---|---|---|---|---|"]
        for row in r["rows"]:
            fd = torch.tensor(row["fd"], dtype=torch.float64)
            se = float(fd.std() / len(fd) ** 0.5) if len(fd) > 1 else float("nan")
            grid = f"![{row['sampler']}]({row['grid']})" if row.get("grid") else "–"
            options = ", ".join(f"{k}={v}" for k, v in row.get("options", {}).items()) or "–"
            lines.append(f"| {row['sampler']} | {options} | {float(fd.mean()):.2f} ± {se:.2f} | "
                         f"{row['fit_seconds']:.1f} | {grid} |")
        lines += ["", *_note(r), ""]
    return "\n".join([*lines, END])


def _note(result: dict) -> list[str]:
    """The discussion of a dataset's table, if it was written for this run (the prior's FD matches)."""
    if result["dataset"] not in NOTES:
        return []
    prior_fd, text = NOTES[result["dataset"]]
    prior = next((row["fd"] for row in result["rows"] if row["sampler"] == "prior"), None)
    if prior is not None and round(sum(prior) / len(prior), 1) == prior_fd:
        return [text]
    return [f"(The discussion kept for this dataset describes another run, whose prior FD was {prior_fd}; "
            "this table is shown without it.)"]


def update_zoo(folder: Path = RESULTS) -> None:
    zoo = folder / "zoo.md"
    text = zoo.read_text() if zoo.is_file() else ""
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section(folder) + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section(folder) + "\n"
    atomic_write_text(zoo, text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
    parser.add_argument("--epochs", type=int, default=None, help="VAE epochs (default: per dataset)")
    parser.add_argument("--num-samples", type=int, default=1000, help="N per sample set (at most the test set)")
    parser.add_argument("--repeats", type=int, default=5, help="sample seeds per sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only rebuild the zoo.md section")
    parser.add_argument("--results-dir", type=results_folder, default=str(RESULTS), metavar="DIR",
                        help="where the json, the PNGs and zoo.md are (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if not args.report_only:
        result = run(args)
        atomic_write_text(args.results_dir / f"samplers_{args.dataset}.json", json.dumps(result, indent=1) + "\n")
    update_zoo(args.results_dir)


if __name__ == "__main__":
    main()
