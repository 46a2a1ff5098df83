"""The ``genmod`` command line: train, evaluate, sample, reconstruct, interpolate, diagnose, gaps and list."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from . import _registry, factories
from .errors import GenmodError, KhatWarning, TrainingDiverged
from .initialization import INIT_SCHEMES

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _class_index(text: str) -> int:
    """A class label or a point's index: an integer from 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer from 0, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 2 (the two endpoints), got {value}")
    return value


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2**32 - 1] (what pyro.set_rng_seed accepts)."""
    from .errors import ConfigError
    from .seeding import check_seed

    try:
        return check_seed(int(text))
    except ValueError as error:  # not an integer, or ConfigError: out of range
        message = str(error) if isinstance(error, ConfigError) else f"expected an integer, got '{text}'"
        raise argparse.ArgumentTypeError(message.removeprefix("seed ")) from None


def _device(text: str) -> str:
    """A device torch knows and can use here (``cuda`` needs a GPU)."""
    from .checks import check_device
    from .errors import ConfigError

    try:
        check_device(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _print_scores(metrics: dict, stream=None) -> None:
    stream = stream if stream is not None else sys.stdout  # looked up per call: it may be replaced
    k = metrics["num_importance_samples"]
    note = f" (proposal: {metrics['proposal']})" if metrics.get("proposal") == "prior" else ""
    if metrics.get("proposal") == "none":
        note = " (undefined: the model's prior is improper)"
    print(f"test ELBO                 : {_fmt(metrics['test_elbo'])} nats per point", file=stream)
    print(
        f"test log p(x), IS K={k:<5}: {_fmt(metrics['test_log_likelihood'])} "
        f"+/- {_fmt(metrics['test_log_likelihood_stderr'])} nats per point{note}",
        file=stream,
    )
    if metrics.get("test_bits_per_dim") is not None:  # image data
        print(
            f"-log p(x), bits per dim  : {_fmt(metrics['test_bits_per_dim'], 4)} (IS), "
            f"{_fmt(metrics['test_elbo_bits_per_dim'], 4)} (ELBO, a bound)",
            file=stream,
        )
    nan = metrics.get("khat_nan") or 0.0  # runs saved before it was recorded have none
    unknown = (
        f", {100 * nan:.1f}% with NaN k-hat (reliability unknown: K={k} is too few to fit it; use -K 100 or more)"
        if nan > 0 and metrics.get("proposal") != "none" else ""
    )
    print(
        f"PSIS k-hat                : mean {_fmt(metrics['khat_mean'], 2)}, max "
        f"{_fmt(metrics['khat_max'], 2)}, {100 * metrics['khat_above_0.7']:.1f}% of points above 0.7{unknown}",
        file=stream,
    )


def _default_out(args) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{args.model}-{args.guide}-{args.dataset}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _dataset_options(args) -> dict:
    options = dict(args.data_opt or [])
    if getattr(args, "data_root", None) is not None:
        options["root"] = args.data_root
    return options


def _check_resume_args(args) -> None:
    """``--resume`` takes every option from the checkpoint; refuse ones that would be ignored."""
    from .errors import ConfigError

    defaults = vars(build_parser().parse_args(["train"]))
    allowed = {"resume", "quiet", "device", "distributed", "func", "command", "trust_code", "allow_changed_data"}
    changed = [k for k, v in vars(args).items() if k not in allowed and v != defaults.get(k)]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(f"--resume continues the run with the options in its checkpoint; drop {flags}")


def _recipe_options(args) -> dict:
    """The optimizer, schedule and clipping options of ``genmod train`` (absent when default)."""
    recipe = dict(
        optimizer=args.optimizer, optimizer_options=dict(args.optimizer_opt or []) or None,
        lr_schedule=args.lr_schedule, lr_schedule_options=dict(args.lr_schedule_opt or []) or None,
        clip_grad_norm=args.clip_grad_norm, init=args.init,
    )
    return {k: v for k, v in recipe.items() if v is not None}


def _execution_options(args) -> dict:
    """``--threads`` and ``--compile`` for fit (absent when default, so the run's spec is unchanged)."""
    options = {"threads": args.threads, "compile": args.compile or None}
    return {k: v for k, v in options.items() if v is not None}


def _set_threads(threads: int | None) -> None:
    """The whole command (training and scoring) computes with ``threads`` torch threads, or the
    default of :func:`pyro_genmod.threads.default_threads`."""
    import torch

    from .threads import resolve_threads

    torch.set_num_threads(resolve_threads(threads))


def cmd_train(args) -> int:
    from .data import load_dataset
    from .distributed import init_distributed, launched_by_torchrun
    from .experiment import resume_experiment, run_experiment

    distributed = args.distributed or (launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1)
    _set_threads(args.threads)
    if args.allow_changed_data and args.resume is None:
        from .errors import ConfigError

        raise ConfigError("--allow-changed-data goes with --resume; a new run records the data file as it is now")
    if args.resume is not None:
        _check_resume_args(args)
        out, what = Path(args.resume), f"run {args.resume}"
    else:
        if args.guide is None:
            args.guide = factories.default_guide(args.model)
        from .tracking import check_logger_names

        loggers = check_logger_names(args.logger, "--logger")  # before any work: a missing extra is named
        data = load_dataset(args.dataset, **_dataset_options(args))
        if args.batch_size > data.train.shape[0]:
            print(
                f"genmod: note: --batch-size {args.batch_size} is larger than the {data.train.shape[0]} "
                f"training points, so every step uses the whole training set", file=sys.stderr,
            )
        model_options = dict(args.model_opt or [])
        if args.latent_dim is not None:
            model_options["latent_dim"] = args.latent_dim
        if args.likelihood is not None:
            model_options["likelihood"] = args.likelihood
        elif "likelihood" not in model_options and (chosen := factories.likelihood_for(args.model, data)):
            model_options["likelihood"] = chosen[0]
            print(f"genmod: note: --likelihood {chosen[0]}, since {chosen[1]} (pass --likelihood to choose)", file=sys.stderr)
        out, what = Path(args.out) if args.out else _default_out(args), f"{args.model} + {args.guide} on {args.dataset}"
    if distributed:
        init_distributed()
    try:
        if args.resume is not None:
            metrics, result, folder = resume_experiment(
                out, progress=not args.quiet, device=args.device, distributed=distributed,
                trust_code=args.trust_code, allow_changed_data=args.allow_changed_data,
            )
        else:
            metrics, result, folder = run_experiment(
                args.model, args.guide, data,
                model_options=model_options, guide_options=dict(args.guide_opt or []),
                num_samples=args.num_samples, eval_seed=args.seed, out=out, overwrite=args.overwrite,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                objective=args.objective, num_particles=args.num_particles,
                early_stopping=args.early_stopping, progress=not args.quiet, device=args.device,
                checkpoint_every=args.checkpoint_every, distributed=distributed, loggers=loggers,
                log_every=args.log_every,
                beta=args.beta, kl_warmup=args.kl_warmup, free_bits=args.free_bits,
                **_recipe_options(args), **_execution_options(args),
            )
    except TrainingDiverged as error:
        print(f"genmod: {error} (last good state saved in {out})", file=sys.stderr)
        return 1
    finally:
        if distributed:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if distributed and folder is None:  # ranks other than 0 write and print nothing
        return 0
    print(f"trained {what}: {result.epochs_run} epochs in {result.train_seconds:.1f} s ({result.stopped_reason})")
    if result.compile_seconds is not None:
        print(f"compiled the training step in {result.compile_seconds:.1f} s (included above)")
    _print_scores(metrics)
    print(f"run saved to {folder}")
    return 0


_AIS_FLAGS = (("--steps", "steps"), ("--chains", "chains"), ("--leapfrog", "leapfrog"), ("--step-size", "step_size"))


def _ais_result_name(args, seed: int, points: int) -> str:
    """The file an AIS evaluation is saved to in the run folder: one per setting, beside metrics.json."""
    size = "" if args.step_size is None else f"-eps{args.step_size:g}"
    return f"evaluation-ais-steps{args.steps or 100}-chains{args.chains or 16}-leapfrog{args.leapfrog or 5}{size}-seed{seed}-points{points}.json"


def _print_ais(metrics: dict) -> None:
    print(f"test ELBO (AIS chains)    : {_fmt(metrics['test_elbo'])} nats per point")
    print(
        f"test log p(x), AIS        : {_fmt(metrics['test_log_likelihood'])} +/- "
        f"{_fmt(metrics['test_log_likelihood_stderr'])} nats per point (T={metrics['num_steps']} steps, "
        f"{metrics['num_chains']} chains, {metrics['leapfrog_steps']} leapfrog; proposal: {metrics['proposal']})"
    )
    print(
        f"AIS per point            : mean Monte Carlo s.e. {_fmt(metrics['mc_stderr_mean'])} nats across chains, "
        f"mean HMC acceptance {_fmt(metrics['acceptance_mean'], 2)}, {metrics['seconds']:.1f} s"
    )


def cmd_evaluate(args) -> int:
    from .errors import ConfigError, RunFolderError
    from .estimates import LogLikelihood
    from .experiment import score, score_metrics
    from .runs import atomic_write_text, load_run

    given = [flag for flag, key in _AIS_FLAGS if getattr(args, key) is not None]
    if args.method == "is" and given:
        raise ConfigError(f"{', '.join(given)} set AIS options; add --method ais (or drop them)")
    if args.method == "ais" and args.num_samples is not None:
        raise ConfigError("--num-samples/-K counts importance samples (--method is); AIS takes --chains and --steps")
    run = load_run(args.run, trust_code=args.trust_code, allow_changed_data=args.allow_changed_data)
    seed = args.seed if args.seed is not None else run.config.get("evaluation", {}).get("seed", 0)
    x = run.data.test[: args.max_points] if args.max_points is not None else run.data.test
    if args.method == "is":
        ll, proposal = score(run.model, run.guide, x, args.num_samples or 1000, seed=seed)
        metrics = {**score_metrics(ll, proposal, run.data.shape if run.data.is_image else None), "seed": seed}
    else:
        path = run.path / _ais_result_name(args, seed, x.shape[0])
        if path.exists() and not args.overwrite:
            raise RunFolderError(f"'{path}' already holds this AIS evaluation; add --overwrite to replace it")
        options = {"num_steps": args.steps or 100, "leapfrog_steps": args.leapfrog or 5}
        if args.step_size is not None:
            options["step_size"] = args.step_size
        began = time.perf_counter()
        ll, proposal = score(run.model, run.guide, x, args.chains or 16, seed=seed, method="ais", **options)
        extra = {k: v for k, v in ll.summary().items() if k not in LogLikelihood.summary(ll)}  # AIS's own
        metrics = {**score_metrics(ll, proposal), **extra, "seed": seed, "seconds": time.perf_counter() - began}
        saved = {**metrics, "per_point": ll.per_point.tolist(), "mc_stderr": ll.mc_stderr.tolist(),
                 "acceptance": ll.acceptance.tolist()}
        try:  # a file of its own, written atomically: the run's metrics.json (IS) is left as it is
            atomic_write_text(path, json.dumps(saved, indent=1) + "\n")
        except OSError as error:
            raise RunFolderError(f"cannot write '{path}': {error.strerror or error}") from None
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"run {run.path}: {run.config['model']['name']} + {run.config['guide']['name']} on {run.data.name}")
        if args.method == "is":
            _print_scores(metrics)
        else:
            _print_ais(metrics)
            print(f"saved to {path}")
    return 0


def _image_out(args) -> Path:
    """``--out`` of an image command, checked before any work: a free (or ``--overwrite``) .png/.jpg path."""
    from .errors import DataError, RunFolderError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise RunFolderError(f"'{out}' already exists; choose another --out or pass --overwrite")
    if out.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
        raise DataError(f"--out must end in .png or .jpg, got '{out.name}'")
    return out


def _image_run(args):
    """The run of an image command, refused unless its data are images."""
    from .errors import DataError
    from .runs import load_run

    run = load_run(args.run, trust_code=args.trust_code, allow_changed_data=args.allow_changed_data)
    if not run.data.is_image:
        raise DataError(f"dataset '{run.data.name}' is not made of images (shape {run.data.shape}); cannot draw a grid")
    return run


def _write_grid(out: Path, images, nrow: int, scale: int = 1) -> None:
    """An image grid (torchvision), each pixel ``scale`` x ``scale`` (nearest neighbour), written atomically."""
    import torch
    import torchvision.utils

    from .errors import RunFolderError
    from .runs import atomic_write

    grid = torchvision.utils.make_grid(images.clamp(0, 1), nrow=nrow, padding=1, pad_value=0.5)
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid.unsqueeze(0), scale_factor=scale, mode="nearest")[0]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create the folder of '{out}': {error.strerror or error}") from None
    # a temporary file beside --out, then os.replace: an old image survives a full disk or a kill
    image_format = "png" if out.suffix.lower() == ".png" else "jpeg"
    atomic_write(out, lambda tmp: torchvision.utils.save_image(grid, tmp, format=image_format), what="image")


def cmd_sample(args) -> int:
    import torch

    from .errors import ConfigError
    from .samplers import list_samplers
    from .tasks import sample

    out = _image_out(args)
    if args.sampler not in list_samplers():
        raise ConfigError(f"unknown sampler '{args.sampler}'; choose one of: {', '.join(list_samplers())}")
    run = _image_run(args)
    y = None if args.label is None else torch.full((args.num,), args.label, dtype=torch.long)
    if args.sampler == "prior":
        x = sample(run.model, args.num, mean=not args.draws, seed=args.seed, y=y)
    else:  # fitted to the run's training codes, then drawn from
        x = sample(run.model, args.num, mean=not args.draws, seed=args.seed, y=y, sampler=args.sampler,
                   guide=run.guide, data=run.data)
    _write_grid(out, x, max(1, int(math.sqrt(args.num))), args.scale)
    print(f"wrote {args.num} samples to {out}")
    return 0


def _test_points(run, indices: list[int]):
    from .errors import DataError

    n = run.data.test.shape[0]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise DataError(f"test point {bad[0]} does not exist: the run's test set has {n} points (0 to {n - 1})")
    return run.data.test[indices]


def cmd_reconstruct(args) -> int:
    import torch

    from .reconstruction import reconstruct

    out = _image_out(args)
    run = _image_run(args)
    x = _test_points(run, list(range(min(args.num, run.data.test.shape[0]))))
    recon = reconstruct(run.model, run.guide, x, mean=not args.draws, seed=args.seed)
    pairs = torch.stack([x.to(recon.device), recon], dim=1).reshape(-1, *x.shape[1:])  # x_0, x'_0, x_1, x'_1, ...
    _write_grid(out, pairs, 2 * max(1, math.ceil(math.sqrt(x.shape[0]))), args.scale)
    print(f"wrote {x.shape[0]} test points, each beside its reconstruction, to {out}")
    return 0


def cmd_interpolate(args) -> int:
    from .errors import ConfigError
    from .reconstruction import interpolate

    out = _image_out(args)
    if (args.start is None) != (args.end is None):
        raise ConfigError("--from and --to go together (two test-point indices)")
    run = _image_run(args)
    if args.start is not None:
        starts, ends = [args.start], [args.end]
    else:  # the first --pairs test points, each to the one --pairs further on
        starts, ends = list(range(args.pairs)), list(range(args.pairs, 2 * args.pairs))
    x_a, x_b = _test_points(run, starts), _test_points(run, ends)
    path = interpolate(run.model, run.guide, x_a, x_b, args.steps, mean=not args.draws, seed=args.seed)
    _write_grid(out, path.reshape(-1, *path.shape[2:]), args.steps, args.scale)
    print(f"wrote {len(starts)} interpolation(s) of {args.steps} steps to {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import GridIncomplete, collect, load_config, run_bench

    if args.collect:
        config = load_config(args.config)
        config = config.with_runs_dir(args.runs_dir) if args.runs_dir is not None else config
        rows = collect(config, args.results_dir)
        missing = len(config.cells()) - len(rows)
    else:
        try:
            rows = run_bench(
                args.config, results_dir=args.results_dir, runs_dir=args.runs_dir, retry_failed=args.retry_failed,
                progress=not args.quiet, only=args.only, data_root=args.data_root, executor=args.executor,
                jobs=args.jobs, scheduler=args.scheduler, slurm_local=args.slurm_local,
                slurm_folder=args.slurm_folder,
            )
            missing = 0
        except GridIncomplete as error:
            print(f"genmod: error: {error}", file=sys.stderr)
            rows, missing = error.rows, len(error.problems)
    failed = [row["cell"] for row in rows if row.get("status") != "ok"]
    print(
        f"{len(rows) - len(failed)} cells ok, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else "")
        + (f"; {missing} without a result" if missing else "")
    )
    return 1 if failed or (missing and not args.collect) else 0


def cmd_diagnose(args) -> int:
    import warnings

    from .diagnose import check_continuous, diagnose
    from .runs import check_output_folder, load_run

    run = load_run(args.run, trust_code=args.trust_code, allow_changed_data=args.allow_changed_data)
    check_continuous(run.model, "genmod diagnose")
    count = min(args.points, run.data.test.shape[0])
    out = Path(args.out) if args.out else run.path / "diagnose"
    # refuse before the NUTS runs; the files are then replaced all at once (diagnose._write)
    check_output_folder(out, args.overwrite, what="diagnose output folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the report lists convergence warnings
        result = diagnose(
            run.model, run.guide, run.data.test[:count], num_chains=args.chains, num_warmup=args.warmup,
            num_draws=args.draws, num_importance=args.num_samples, seed=args.seed, out=out,
            progress=not args.quiet,
        )
    print(result.report())
    print(f"wrote {', '.join(sorted(p.name for p in result.files.values()))} to {out}")
    return 0


def cmd_gaps(args) -> int:
    from .gaps import inference_gaps
    from .runs import load_run

    run = load_run(args.run, trust_code=args.trust_code, allow_changed_data=args.allow_changed_data)
    count = min(args.points, run.data.test.shape[0])
    gaps = inference_gaps(
        run.model, run.guide, run.data.test[:count], num_samples=args.num_samples, steps=args.steps,
        lr=args.lr, seed=args.seed, progress=not args.quiet,
    )
    summary = gaps.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"run {run.path}: {run.config['model']['name']} + {run.config['guide']['name']} on {run.data.name}, "
        f"first {count} test points, K={args.num_samples}"
    )
    for key, label in (
        ("log_px", "log p(x), IS"), ("elbo_local", "ELBO, local"), ("elbo_amortized", "ELBO, amortized"),
        ("total", "inference gap"), ("approximation", "  approximation gap"), ("amortization", "  amortization gap"),
    ):
        print(f"{label:<21}: {_fmt(summary[key])} +/- {_fmt(summary[key + '_stderr'])} nats per point")
    print(f"local ELBO by        : {summary['local']}")
    return 0


def _pairs() -> dict[str, dict[str, str | None]]:
    table = {}
    for model_name in _registry.list_models():
        model = factories.create_model(model_name, (1, 8, 8))
        table[model_name] = {g: factories.pairing_problem(g, model) for g in _registry.list_guides()}
    return table


def cmd_list(args) -> int:
    from .objectives import list_objectives

    for kind, names in (
        ("models", _registry.list_models()),
        ("guides", _registry.list_guides()),
        ("datasets", _registry.list_datasets()),
    ):
        print(f"{kind}:")
        for name in names:
            print(f"  {name:<20} {_registry.summary_line(kind[:-1], name)}")
    print("objectives:")
    print("  " + ", ".join(list_objectives()))
    print("your own Pyro programs:")
    print("  --model path/to/file.py:ATTR  (or module:ATTR) a Pyro model program called as model(x), e.g. my_vae.py:vae.model")
    print("  --guide path/to/file.py:ATTR  a Pyro guide program guide(x), or any guide above that fits the model")
    print("  loading such a run (evaluate, sample, diagnose, --resume) imports that code: add --trust-code")
    pairs = _pairs()
    guides = _registry.list_guides()
    print("\nwhich guides fit each model:")
    for model_name, row in pairs.items():
        fitting = [g for g in guides if row[g] is None]
        print(f"  {model_name:<20} {', '.join(fitting) or 'none'}")
    if args.pairs:
        print("\nwhy not:")
        for model_name, row in pairs.items():
            for guide_name, reason in row.items():
                if reason is not None:
                    print(f"  {model_name} + {guide_name}: {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="genmod", description="Train, score and sample deep generative models built on Pyro.")
    parser.add_argument("--version", action="version", version=f"pyro-genmod {__version__}",
                        help="print the version of pyro-genmod and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model/guide pair and score it on the test set")
    train.add_argument("--model", default="vae", help="registered model (default: vae)")
    train.add_argument("--guide", default=None,
                       help="registered guide (default: the model's own guide if it needs one, e.g. m2 for m2; else mean_field)")
    train.add_argument("--dataset", default="digits", help="registered dataset (default: digits)")
    train.add_argument("--data-root", default=None, help="folder holding downloaded datasets")
    train.add_argument("--epochs", type=_positive_int, default=100)
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--lr", type=_positive_float, default=1e-3)
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--objective", default=None, help="default: the model's own (diffusion_elbo for diffusion), else trace_elbo")
    train.add_argument("--num-particles", type=_positive_int, default=1, help="particles per point (K for iwae)")
    train.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE")
    train.add_argument("--beta", type=float, default=1.0, help="weight of the KL terms (beta-VAE; default 1)")
    train.add_argument("--kl-warmup", type=int, default=0, metavar="EPOCHS", help="raise the KL weight linearly from 0 over EPOCHS")
    train.add_argument("--free-bits", type=float, default=0.0, metavar="NATS", help="KL per latent site not penalized below NATS")
    train.add_argument("--optimizer", default=None, help="torch.optim optimizer by name (default: adam)")
    train.add_argument("--optimizer-opt", type=_option, action="append", metavar="KEY=VALUE",
                       help="optimizer option (JSON value), e.g. eps=1e-4")
    train.add_argument("--lr-schedule", default=None,
                       help="learning-rate schedule stepped every epoch: burda, constant, or a torch.optim.lr_scheduler name")
    train.add_argument("--lr-schedule-opt", type=_option, action="append", metavar="KEY=VALUE",
                       help="schedule option (JSON value), e.g. gamma=0.99")
    train.add_argument("--clip-grad-norm", type=_positive_float, default=None, metavar="NORM",
                       help="clip the global gradient norm to NORM at every step")
    train.add_argument("--init", choices=INIT_SCHEMES, default=None,
                       help="re-initialize the networks: glorot, or burda (glorot and the decoder's output bias "
                            "at the mean pixel's logits, as in Burda et al.'s code)")
    train.add_argument("--latent-dim", type=_positive_int, default=None)
    train.add_argument("--likelihood", default=None)
    train.add_argument("--model-opt", type=_option, action="append", metavar="KEY=VALUE", help="extra model option (JSON value)")
    train.add_argument("--guide-opt", type=_option, action="append", metavar="KEY=VALUE", help="extra guide option (JSON value)")
    train.add_argument("--data-opt", type=_option, action="append", metavar="KEY=VALUE", help="extra dataset option (JSON value)")
    train.add_argument("--num-samples", "-K", type=_positive_int, default=1000, help="importance samples for the test score")
    train.add_argument("--device", type=_device, default=None, help="cpu (default) or cuda")
    train.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="torch threads (default: torch's count lowered to the idle CPUs, from the load average)")
    train.add_argument("--compile", action="store_true",
                       help="compile the training step's loss and gradients with torch.compile (pays on long runs)")
    train.add_argument("--out", default=None, help="run folder (default: runs/MODEL-GUIDE-DATASET-TIME)")
    train.add_argument("--overwrite", action="store_true", help="replace the run files in a non-empty --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="STEPS",
                       help="also checkpoint every STEPS steps (a checkpoint is written every epoch)")
    train.add_argument("--resume", default=None, metavar="DIR", help="continue the interrupted run in DIR")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the processes torchrun starts (--batch-size is per process)")
    train.add_argument("--logger", action="append", metavar="NAME",
                       help="record the run as it trains into its folder: tensorboard, mlflow or csv "
                            "(repeat, or a comma list: --logger tensorboard,mlflow)")
    train.add_argument("--log-every", type=_positive_int, default=50, metavar="STEPS",
                       help="with --logger: record the loss, learning rate and gradient norm every STEPS steps (default 50)")
    train.add_argument("--trust-code", action="store_true", help="allow loading a run that names user code (file.py:attr): this imports and runs that code")
    train.add_argument("--allow-changed-data", action="store_true",
                       help="with --resume: use a data file (--dataset file) even if its content changed since the run started")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="re-score a saved run's test set")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--num-samples", "-K", type=_positive_int, default=None,
                          help="importance samples per point (--method is; default 1000)")
    evaluate.add_argument("--method", choices=("is", "ais"), default="is",
                          help="is: importance sampling from the guide; ais: annealed importance sampling "
                               "from the guide to p(z|x), saved to its own file in the run folder")
    evaluate.add_argument("--steps", type=_positive_int, default=None, help="AIS: intermediate distributions T (default 100)")
    evaluate.add_argument("--chains", type=_positive_int, default=None, help="AIS: chains per point (default 16)")
    evaluate.add_argument("--leapfrog", type=_positive_int, default=None,
                          help="AIS: leapfrog steps per HMC transition (default 5)")
    evaluate.add_argument("--step-size", type=_positive_float, default=None,
                          help="AIS: initial HMC step size, adapted per point (default 0.05)")
    evaluate.add_argument("--max-points", type=_positive_int, default=None, help="score only the first N test points")
    evaluate.add_argument("--overwrite", action="store_true", help="AIS: replace a saved evaluation with the same settings")
    evaluate.add_argument("--seed", type=_seed, default=None, help="default: the run's evaluation seed")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--trust-code", action="store_true", help="allow loading a run that names user code (file.py:attr): this imports and runs that code")
    evaluate.add_argument("--allow-changed-data", action="store_true",
                       help="use a data file (--dataset file) even if its content changed since the run was trained")
    evaluate.set_defaults(func=cmd_evaluate)

    sample = sub.add_parser("sample", help="draw new images from a saved run into a grid")
    sample.add_argument("run", help="run folder")
    sample.add_argument("-n", "--num", type=_positive_int, default=64)
    sample.add_argument("--out", default="samples.png")
    sample.add_argument("--seed", type=_seed, default=0)
    sample.add_argument("--draws", action="store_true", help="draw x ~ p(x|z) rather than showing E[x|z]")
    sample.add_argument("--overwrite", action="store_true")
    sample.add_argument("--trust-code", action="store_true", help="allow loading a run that names user code (file.py:attr): this imports and runs that code")
    sample.add_argument("--allow-changed-data", action="store_true",
                       help="use a data file (--dataset file) even if its content changed since the run was trained")
    sample.add_argument("--scale", type=_positive_int, default=1, metavar="N",
                        help="draw each pixel as N x N pixels (nearest neighbour; default 1)")
    sample.add_argument("--class", dest="label", type=_class_index, default=None, metavar="C",
                        help="draw every sample from class C (label-using models: cvae, m2)")
    sample.add_argument("--sampler", default="prior",
                        help="where z comes from: prior (default) or an ex-post sampler fitted to the run's "
                             "training codes: gmm, maf, two_stage")
    sample.set_defaults(func=cmd_sample)

    for name, what in (("reconstruct", "test points beside their reconstructions E[x|z], z = E_q[z|x]"),
                       ("interpolate", "decoded straight paths between the codes of two test points")):
        image = sub.add_parser(name, help=f"an image grid of a saved run's {what}")
        image.add_argument("run", help="run folder")
        if name == "reconstruct":
            image.add_argument("-n", "--num", type=_positive_int, default=32, help="first N test points (default 32)")
        else:
            image.add_argument("--steps", type=_at_least_two, default=10, help="images per path, endpoints included (default 10)")
            image.add_argument("--pairs", type=_positive_int, default=8,
                               help="paths from test point i to test point i + PAIRS, i < PAIRS (default 8)")
            image.add_argument("--from", dest="start", type=_class_index, default=None, metavar="I",
                               help="one path, from test point I (with --to)")
            image.add_argument("--to", dest="end", type=_class_index, default=None, metavar="J", help="... to test point J")
        image.add_argument("--out", default=f"{name}.png")
        image.add_argument("--scale", type=_positive_int, default=1, metavar="N",
                           help="draw each pixel as N x N pixels (nearest neighbour; default 1)")
        image.add_argument("--seed", type=_seed, default=0)
        image.add_argument("--draws", action="store_true", help="draw x ~ p(x|z) rather than showing E[x|z]")
        image.add_argument("--overwrite", action="store_true")
        image.add_argument("--trust-code", action="store_true", help="allow loading a run that names user code (file.py:attr): this imports and runs that code")
        image.add_argument("--allow-changed-data", action="store_true",
                           help="use a data file (--dataset file) even if its content changed since the run was trained")
        image.set_defaults(func=cmd_reconstruct if name == "reconstruct" else cmd_interpolate)

    bench = sub.add_parser("bench", help="run a benchmark grid from a TOML config (resumable)")
    bench.add_argument("config", help="benchmark config, e.g. benchmarks/configs/digits_smoke.toml")
    bench.add_argument("--results-dir", default=None, help="where NAME.csv and NAME.md go (default: from the config)")
    bench.add_argument("--runs-dir", default=None, metavar="DIR",
                       help="where the cells' run folders go (default: the config's runs_dir, else runs/NAME)")
    bench.add_argument("--retry-failed", action="store_true", help="run cells recorded as failed again")
    bench.add_argument("--only", default=None, metavar="TEXT", help="run only the cells whose id contains TEXT")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.add_argument("--data-root", default=None, metavar="DIR",
                       help="folder holding downloaded datasets (default: $GENMOD_DATA_ROOT, else ./data)")
    bench.add_argument("--collect", action="store_true",
                       help="only build NAME.csv and NAME.md from the cells' result files (run nothing)")
    bench.add_argument("--executor", choices=["local", "dask", "slurm"], default=None,
                       help="where cells run: worker processes here (default), a Dask cluster, a Slurm job array")
    bench.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="cells at once: local worker processes (default 1: this process), LocalCluster "
                            "workers, or Slurm array tasks (default: one per cell)")
    bench.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="Dask scheduler address (default: a LocalCluster of --jobs workers)")
    bench.add_argument("--slurm-local", action="store_true",
                       help="run the job array with submitit's local executor (no Slurm needed)")
    bench.add_argument("--slurm-folder", default=None, metavar="DIR",
                       help="submitit's logs and job files (default: RUNS/.submitit)")
    bench.set_defaults(func=cmd_bench)

    diag = sub.add_parser("diagnose", help="compare a run's guide with NUTS draws of p(z|x) on test points (ArviZ)")
    diag.add_argument("run", help="run folder")
    diag.add_argument("--points", type=_positive_int, default=8, help="first N test points (default 8)")
    diag.add_argument("--chains", type=_positive_int, default=4)
    diag.add_argument("--warmup", type=_positive_int, default=500, help="NUTS warm-up steps per chain")
    diag.add_argument("--draws", type=_positive_int, default=500, help="NUTS draws kept per chain")
    diag.add_argument("--num-samples", "-K", type=_positive_int, default=5000, help="importance samples for k-hat")
    diag.add_argument("--seed", type=_seed, default=0)
    diag.add_argument("--out", default=None, help="output folder (default: RUN/diagnose)")
    diag.add_argument("--overwrite", action="store_true", help="replace the files of an earlier diagnosis in --out")
    diag.add_argument("--quiet", action="store_true", help="no progress bars")
    diag.add_argument("--trust-code", action="store_true", help="allow loading a run that names user code (file.py:attr): this imports and runs that code")
    diag.add_argument("--allow-changed-data", action="store_true",
                       help="use a data file (--dataset file) even if its content changed since the run was trained")
    diag.set_defaults(func=cmd_diagnose)

    gaps = sub.add_parser("gaps", help="inference gap = approximation gap + amortization gap (Cremer et al. 2018)")
    gaps.add_argument("run", help="run folder")
    gaps.add_argument("--points", type=_positive_int, default=100, help="first N test points (default 100)")
    gaps.add_argument("--num-samples", "-K", type=_positive_int, default=5000)
    gaps.add_argument("--steps", type=_positive_int, default=500, help="Adam steps of the per-point optimization")
    gaps.add_argument("--lr", type=_positive_float, default=0.05)
    gaps.add_argument("--seed", type=_seed, default=0)
    gaps.add_argument("--json", action="store_true", help="print the summary as JSON")
    gaps.add_argument("--quiet", action="store_true", help="no progress bar")
    gaps.add_argument("--trust-code", action="store_true", help="allow loading a run that names user code (file.py:attr): this imports and runs that code")
    gaps.add_argument("--allow-changed-data", action="store_true",
                       help="use a data file (--dataset file) even if its content changed since the run was trained")
    gaps.set_defaults(func=cmd_gaps)

    listing = sub.add_parser("list", help="models, guides, datasets, objectives and which pairs fit")
    listing.add_argument("--pairs", action="store_true", help="also say why each non-fitting pair does not fit")
    listing.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (code 2) and --help (code 0)
        return int(exit_.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", KhatWarning)  # the score printout says how many are NaN
            return args.func(args)
    except GenmodError as error:
        print(f"genmod: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genmod: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
