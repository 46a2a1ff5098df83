"""A catalogue of bad inputs: each gives exit code 2 and one stderr line from the CLI, a specific
exception from the Python API, and leaves everything on disk exactly as it was."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pyro_genmod as pg
from pyro_genmod.bench import load_config
from pyro_genmod.checkpoint import CHECKPOINT_FILE, _digest
from pyro_genmod.cli import main
from pyro_genmod.experiment import resume_experiment, run_experiment
from pyro_genmod.runs import load_run

TINY = ["--epochs", "1", "--batch-size", "512", "--latent-dim", "2", "--model-opt", "hidden=[8]",
        "--guide-opt", "hidden=[8]", "-K", "4", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _pair(data=(1, 8, 8)):
    model = pg.create_model("vae", data, latent_dim=2, hidden=[8])
    return model, pg.create_guide("mean_field", model, hidden=[8])


def _fit(data, **options):
    pg.fit(*_pair(data), data, **{"epochs": 1, "progress": False, **options})


def _binary(rows: int = 40, cols: int = 6) -> np.ndarray:
    return (np.random.default_rng(0).random((rows, cols)) > 0.5).astype(np.float64)


def _csv(path: Path, x: np.ndarray, cells: dict | None = None) -> Path:
    lines = [[repr(float(v)) for v in row] for row in x]
    for (r, c), text in (cells or {}).items():
        lines[r][c] = text
    path.write_text("".join(",".join(row) + "\n" for row in lines))
    return path


@dataclass
class Case:
    """``setup(tmp)`` writes the input files and returns (CLI argv, API call, error, match)."""

    name: str
    setup: Callable[[Path, Path], tuple[list[str], Callable[[], object], type, str]]


def _file_case(write, match: str, extra: tuple[str, ...] = ()):
    """A bad data file: the CLI trains on it, the API loads it."""

    def setup(tmp: Path, run: Path):
        path = write(tmp)
        argv = _train(tmp, "--dataset", "file", "--data-opt", f"path={path}", *extra)
        return argv, lambda: pg.load_dataset("file", path=str(path)), pg.DataError, match

    return setup


def _train(tmp: Path, *argv: str) -> list[str]:
    return ["train", *TINY, *argv, "--out", str(tmp / "out")]


def _copy_run(tmp: Path, run: Path, edit: Callable[[Path], object] = lambda c: None) -> Path:
    copy = tmp / "run"
    shutil.copytree(run, copy)
    edit(copy)
    return copy


def _interrupt(copy: Path) -> Path:
    """Leave only the checkpoint, as a run killed during training does."""
    for name in ("config.json", "metrics.json", "history.csv", "params.safetensors"):
        (copy / name).unlink()
    return copy


def _nan_row_5(tmp):
    x = _binary()
    x[5, 2] = np.nan
    return _csv(tmp / "nan.csv", x)


def _inf_row_7(tmp):
    x = _binary()
    x[7, 0] = np.inf
    np.save(tmp / "inf.npy", x)
    return tmp / "inf.npy"


def _pickled(tmp):
    np.save(tmp / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return tmp / "objects.npy"


def _set_version(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["format_version"] = 0
    (copy / "config.json").write_text(json.dumps(config))


class Payload:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def wrong_shape(tmp, run):
    path = _csv(tmp / "x.csv", _binary())
    argv = _train(tmp, "--dataset", "file", "--data-opt", f"path={path}", "--data-opt", "shape=[5,5]")
    return argv, lambda: pg.load_dataset("file", path=str(path), shape=[5, 5]), pg.DataError, "do not fit shape [5, 5]"


def shape_changed_since_checkpoint(tmp, run):
    path, out = _csv(tmp / "x.csv", _binary()), tmp / "run"
    assert main(["train", *TINY, "--dataset", "file", "--data-opt", f"path={path}", "--out", str(out)]) == 0
    _interrupt(out)
    _csv(path, _binary(cols=5))
    # told to accept a changed file, the resume still refuses points of another shape
    argv = ["train", "--resume", str(out), "--allow-changed-data"]
    api = lambda: resume_experiment(out, allow_changed_data=True)  # noqa: E731
    return argv, api, pg.DataError, "trained on points of shape (6,)"


def _file_run(tmp) -> tuple[Path, Path]:
    path, out = _csv(tmp / "x.csv", _binary()), tmp / "run"
    assert main(["train", *TINY, "--dataset", "file", "--data-opt", f"path={path}", "--out", str(out)]) == 0
    flipped = _binary()
    flipped[3, 2] = 1 - flipped[3, 2]  # one value edited: same shape, other data
    _csv(path, flipped)
    return path, out


def data_changed_since_training(tmp, run):
    path, out = _file_run(tmp)
    return ["evaluate", str(out)], lambda: load_run(out), pg.DataError, "has changed since this run loaded it"


def data_changed_since_checkpoint(tmp, run):
    path, out = _file_run(tmp)
    _interrupt(out)
    return ["train", "--resume", str(out)], lambda: resume_experiment(out), pg.DataError, "has changed since this run loaded it"


def not_binary(tmp, run):
    path = _csv(tmp / "grey.csv", np.random.default_rng(0).random((40, 6)))
    # grey values get a Gaussian likelihood by default; a Bernoulli one, asked for, is refused
    argv = _train(tmp, "--dataset", "file", "--data-opt", f"path={path}", "--likelihood", "bernoulli")
    return argv, lambda: _fit_bernoulli(pg.load_dataset("file", path=str(path))), pg.DataError, "needs values in {0, 1}"


def _fit_bernoulli(data):
    model = pg.create_model("vae", data, latent_dim=2, hidden=[8], likelihood="bernoulli")
    pg.fit(model, pg.create_guide("mean_field", model, hidden=[8]), data, epochs=1, progress=False)


def taken_output(tmp, run):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    api = lambda: run_experiment("vae", "mean_field", pg.load_dataset("digits"), out=tmp / "out", epochs=1)  # noqa: E731
    return _train(tmp), api, pg.RunFolderError, "not empty"


def unwritable_output(tmp, run):
    (tmp / "a-file").write_text("x")
    out = tmp / "a-file" / "out"
    api = lambda: run_experiment("vae", "mean_field", pg.load_dataset("digits"), out=out, epochs=1)  # noqa: E731
    return ["train", *TINY, "--out", str(out)], api, pg.RunFolderError, "cannot write to output folder"


def evaluate_case(edit, match):
    def setup(tmp, run):
        copy = _copy_run(tmp, run, edit)
        return ["evaluate", str(copy)], lambda: load_run(copy), pg.RunFolderError, match

    return setup


def resume_case(edit, match, extra=(), api=None, error=pg.RunFolderError):
    def setup(tmp, run):
        copy = _copy_run(tmp, run, edit)
        call = api(copy) if api else (lambda: resume_experiment(copy))
        return ["train", "--resume", str(copy), *extra], call, error, match

    return setup


def _truncate(copy: Path) -> None:
    path = _interrupt(copy) / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:500])


def _pickle_checkpoint(copy: Path) -> None:
    (_interrupt(copy) / CHECKPOINT_FILE).write_bytes(pickle.dumps(Payload(copy.parent / "payload-ran")))


def _resume_with_lr(copy: Path):
    return lambda: pg.fit(
        *_pair(), pg.load_dataset("digits"), epochs=1, batch_size=512, lr=0.5, checkpoint=copy, resume=True, progress=False
    )


def _simple(argv, api, error, match):
    return lambda tmp, run: (_train(tmp, *argv), api, error, match)


def _digits():
    return pg.load_dataset("digits")


def _npy(name: str, x: np.ndarray):
    def write(tmp):
        np.save(tmp / name, x)
        return tmp / name

    return write


def _huge_header(tmp):
    """A .npy whose header claims 10**9 rows of 6 float64 (48 GB) in a 192-byte file."""
    path = tmp / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 6)})
        handle.write(np.zeros(12).tobytes())
    return path


def _pickle_named_npz(tmp):
    """A raw pickle saved as .npz: loading it must never unpickle (the payload would create a file)."""
    path = tmp / "payload.npz"
    path.write_bytes(pickle.dumps(Payload(tmp / "payload-ran")))
    return path


def _objects_in_npz(tmp):
    path = tmp / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    return path


def _sample_case(out: str):
    """``genmod sample --out`` where no file can be written; the API writes through atomic_write."""

    def setup(tmp, run):
        api = lambda: pg.runs.atomic_write(out, lambda t: Path(t).write_bytes(b"x"), what="image")  # noqa: E731
        return ["sample", str(run), "-n", "4", "--out", out], api, pg.RunFolderError, f"cannot write image '{out}'"

    return setup


def _diagnose_few_draws(tmp, run):
    loaded = load_run(run)
    api = lambda: pg.diagnose(loaded.model, loaded.guide, loaded.data.test[:1], num_draws=2)  # noqa: E731
    return (["diagnose", str(run), "--draws", "2", "--warmup", "5", "--out", str(tmp / "diag")], api, pg.ConfigError,
            "must be at least 4, got 2")


def _x():
    return pg.load_dataset("digits").test[:3]


_BENCH = """name = "bad"
[grid]
datasets = ["digits"]
models = ["vae"]
guides = ["mean_field"]
objectives = ["trace_elbo"]
[training]
epochs = 1
"""


def _bench_case(edit, match: str):
    """A benchmark config with one mistake: ``genmod bench`` and ``load_config`` refuse it whole."""

    def setup(tmp, run):
        path = tmp / "bad.toml"
        text = edit(_BENCH)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["bench", str(path), "--quiet"], lambda: load_config(path), pg.ConfigError, match

    return setup


def _edit_config(dotted: str, value=None, delete: bool = False):
    """Hand-edit one field of a run's config.json."""

    def edit(copy: Path) -> None:
        config = json.loads((copy / "config.json").read_text())
        *parents, last = dotted.split(".")
        table = config
        for part in parents:
            table = table[part]
        if delete:
            del table[last]
        else:
            table[last] = value
        (copy / "config.json").write_text(json.dumps(config))

    return edit


def _edit_checkpoint_meta(key: str, value):
    """Hand-edit a progress field of an interrupted run's checkpoint, its SHA-256 recomputed to match."""

    def edit(copy: Path) -> None:
        path = _interrupt(copy) / CHECKPOINT_FILE
        with safe_open(str(path), framework="pt") as handle:
            (meta_key, text), = handle.metadata().items()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        meta = json.loads(text)
        meta["progress"][key] = value
        meta["sha256"] = _digest(tensors, {k: v for k, v in meta.items() if k != "sha256"})
        save_file(tensors, str(path), metadata={meta_key: json.dumps(meta)})

    return edit


CASES = [
    Case("unknown optimizer", _simple(
        ["--optimizer", "adamm"], lambda: _fit(_digits(), optimizer="adamm"), pg.ConfigError, "unknown optimizer 'adamm'")),
    Case("optimizer option it does not take", _simple(
        ["--optimizer", "sgd", "--optimizer-opt", "betas=[0.9,0.99]"],
        lambda: _fit(_digits(), optimizer="sgd", optimizer_options={"betas": [0.9, 0.99]}), pg.ConfigError,
        "optimizer SGD refused its options")),
    Case("unknown lr schedule", _simple(
        ["--lr-schedule", "cosine"], lambda: _fit(_digits(), lr_schedule="cosine"), pg.ConfigError, "unknown lr_schedule 'cosine'")),
    Case("schedule options without a schedule", _simple(
        ["--lr-schedule-opt", "gamma=0.5"], lambda: _fit(_digits(), lr_schedule_options={"gamma": 0.5}), pg.ConfigError,
        "without an lr_schedule")),
    Case("schedule missing a required option", _simple(
        ["--lr-schedule", "StepLR"], lambda: _fit(_digits(), lr_schedule="StepLR"), pg.ConfigError, "step_size")),
    Case("negative gradient clip", _simple(
        ["--clip-grad-norm", "-1"], lambda: _fit(_digits(), clip_grad_norm=-1.0), pg.ConfigError, "positive number")),
    Case("nan in the data names its row", _file_case(_nan_row_5, "first in row 5")),
    Case("inf in the data names its row", _file_case(_inf_row_7, "first in row 7")),
    Case("non-numeric cell in a data file", _file_case(
        lambda tmp: _csv(tmp / "text.csv", _binary(), {(3, 1): "abc"}), "could not convert string 'abc'")),
    Case("empty data file", _file_case(lambda tmp: _csv(tmp / "empty.csv", np.zeros((0, 3))), "empty")),
    Case("pickled objects in a data file", _file_case(_pickled, "unpickling")),
    Case("missing data file", _file_case(lambda tmp: tmp / "absent.csv", "does not exist")),
    Case("data of the wrong shape", wrong_shape),
    Case("data shape changed since the checkpoint", shape_changed_since_checkpoint),
    Case("data file edited since the run was trained", data_changed_since_training),
    Case("data file edited since the checkpoint", data_changed_since_checkpoint),
    Case("values outside {0,1} with a Bernoulli likelihood", not_binary),
    Case("non-numeric value in a model option", lambda tmp, run: (
        ["train", "--epochs", "1", "--model-opt", "latent_dim=abc", "--out", str(tmp / "out")],
        lambda: pg.create_model("vae", (1, 8, 8), latent_dim="abc"), pg.ConfigError,
        "option 'latent_dim' must be a number, got 'abc'")),
    Case("non-numeric value in a dataset option", _simple(
        ["--data-opt", "seed=abc"], lambda: pg.load_dataset("digits", seed="abc"), pg.ConfigError,
        "option 'seed' must be a number, got 'abc'")),
    Case("fractional value for an integer model option", _simple(
        ["--model-opt", "channels=2.5"], lambda: pg.create_model("vae", (1, 8, 8), channels=2.5), pg.ConfigError,
        "option 'channels' must be an integer, got 2.5")),
    Case("true/false for an integer dataset option", _simple(
        ["--data-opt", "seed=true"], lambda: pg.load_dataset("digits", seed=True), pg.ConfigError,
        "option 'seed' must be an integer, got True")),
    Case("a word that is not yes or no for a boolean option", _simple(
        ["--data-opt", "binarize=maybe"], lambda: pg.load_dataset("digits", binarize="maybe"), pg.ConfigError,
        "option 'binarize' must be true or false, got 'maybe'")),
    Case("non-numeric learning rate", _simple(
        ["--lr", "fast"], lambda: _fit(pg.load_dataset("digits"), lr="fast"), pg.ConfigError, "positive number, got 'fast'")),
    Case("unknown objective", _simple(
        ["--objective", "elbo2"], lambda: _fit(pg.load_dataset("digits"), objective="elbo2"),
        pg.UnknownNameError, "unknown objective 'elbo2'")),
    Case("K = 0 importance samples", _simple(
        ["-K", "0"], lambda: pg.log_likelihood(*_pair(), torch.zeros(3, 1, 8, 8), 0), pg.ConfigError,
        "positive integer, got 0")),
    Case("zero epochs", _simple(
        ["--epochs", "0"], lambda: _fit(pg.load_dataset("digits"), epochs=0), pg.ConfigError, "positive integer, got 0")),
    Case("unknown model", _simple(
        ["--model", "gann"], lambda: pg.create_model("gann", (1, 8, 8)), pg.UnknownNameError, "unknown model 'gann'")),
    Case("unknown model option", _simple(
        ["--model-opt", "depth=3"], lambda: pg.create_model("vae", (1, 8, 8), depth=3), pg.ConfigError, "no option 'depth'")),
    Case("guide that does not fit the model", lambda tmp, run: (
        ["train", "--epochs", "1", "--model", "gmm", "--guide", "mean_field", "--out", str(tmp / "out")], lambda: pg.create_guide("mean_field", pg.create_model("gmm", (1, 8, 8))),
        pg.PairingError, "does not fit model 'gmm'")),
    Case("unknown dataset", _simple(
        ["--dataset", "imagenet"], lambda: pg.load_dataset("imagenet"), pg.UnknownNameError, "unknown dataset 'imagenet'")),
    Case("distributed without torchrun", _simple(
        ["--distributed"], lambda: pg.fit(*_pair(), pg.load_dataset("digits"), distributed=True), pg.ConfigError, "torchrun")),
    Case("output folder already holds files", taken_output),
    Case("unwritable output folder", unwritable_output),
    Case("run folder from an incompatible version", evaluate_case(_set_version, "format version 0")),
    Case("incomplete run folder", evaluate_case(lambda c: (c / "params.safetensors").unlink(), "missing params.safetensors")),
    Case("corrupted parameters file", evaluate_case(
        lambda c: (c / "params.safetensors").write_bytes(b"\x00" * 7), "not a readable safetensors file")),
    Case("config.json that is not JSON", evaluate_case(lambda c: (c / "config.json").write_text("{epochs: 3"), "cannot read")),
    Case("resume a finished run", resume_case(lambda c: None, "finished run")),
    Case("resume without a checkpoint", resume_case(lambda c: (_interrupt(c) / CHECKPOINT_FILE).unlink(), "no checkpoint")),
    Case("resume from a truncated checkpoint", resume_case(_truncate, "truncated or corrupted")),
    Case("resume from a pickle payload", resume_case(_pickle_checkpoint, "pickle")),
    Case("resume with a changed option", resume_case(
        _interrupt, "lr", extra=("--lr", "0.5"), api=_resume_with_lr, error=pg.ConfigError)),
    Case("unknown device", _simple(
        ["--device", "bogus"], lambda: _fit(_digits(), device="bogus"), pg.ConfigError, "unknown device 'bogus'")),
    *([Case("cuda without a GPU", _simple(
        ["--device", "cuda"], lambda: _fit(_digits(), device="cuda"), pg.ConfigError, "needs a CUDA GPU"))]
      if not torch.cuda.is_available() else []),
    Case("negative seed", _simple(
        ["--seed", "-1"], lambda: _fit(_digits(), seed=-1), pg.ConfigError, "from 0 to 4294967295 (2**32 - 1), got -1")),
    Case("seed above 2**64 - 1", _simple(
        ["--seed", str(2**64)], lambda: pg.log_likelihood(*_pair(), _x(), 10, seed=2**64), pg.ConfigError,
        f"from 0 to 4294967295 (2**32 - 1), got {2**64}")),
    Case("seed above 2**32 - 1, which numpy's legacy seeding refuses", _simple(
        ["--seed", str(2**32)], lambda: pg.sample(_pair()[0], 2, seed=2**32), pg.ConfigError,
        f"got {2**32}")),
    Case("evaluate with a negative seed", lambda tmp, run: (
        ["evaluate", str(run), "--seed", "-5"], lambda: pg.log_likelihood(*_pair(), _x(), 10, seed=-5),
        pg.ConfigError, "got -5")),
    Case("file dataset without a path", lambda tmp, run: (
        _train(tmp, "--dataset", "file"), lambda: pg.load_dataset("file"), pg.ConfigError,
        "dataset 'file' needs the path of a .npy, .npz or .csv file")),
    Case("timedelta values in a .npy", _file_case(
        _npy("td.npy", _binary().astype("m8[s]")), "holds timedelta64[s] (timedelta) values")),
    Case("datetime values in a .npy", _file_case(
        _npy("dt.npy", np.zeros((40, 6), dtype="M8[D]")), "holds datetime64[D] (datetime) values")),
    Case("complex values in a .npy", _file_case(_npy("c.npy", _binary().astype(np.complex64)), "(complex) values")),
    Case("text in a .npy", _file_case(_npy("s.npy", np.full((40, 6), "a")), "(text) values")),
    Case("a .npy header claiming 10**9 rows", _file_case(
        _huge_header, "the header claims shape (1000000000, 6) of float64 (48,000,000,000 bytes)")),
    Case("a raw pickle named .npz", _file_case(_pickle_named_npz, "would need unpickling")),
    Case("an object array inside a .npz", _file_case(_objects_in_npz, "would need unpickling")),
    Case("sample --out in a read-only file system", _sample_case("/sys/genmod-grid.png")),
    Case("diagnose with too few draws for split R-hat", _diagnose_few_draws),
    Case("a latent dimension whose parameters cannot fit in memory", _simple(
        ["--latent-dim", str(10**10)], lambda: pg.create_model("vae", (1, 8, 8), latent_dim=10**10), pg.ConfigError,
        "billion parameters, needs at least")),
    Case("particles whose training step cannot fit in memory", _simple(
        ["--num-particles", str(10**8)], lambda: _fit(_digits(), num_particles=10**8), pg.ConfigError,
        "x 100000000 particles (points of shape (1, 8, 8)) needs at least")),
    Case("K = true", _simple(
        ["-K", "true"], lambda: pg.log_likelihood(*_pair(), _x(), True), pg.ConfigError, "positive integer, got")),
    Case("bench grid datasets not a list", _bench_case(
        lambda t: t.replace('datasets = ["digits"]', 'datasets = "digits"'),
        "[grid]: 'datasets' must be a list of dataset names, got 'digits'")),
    Case("bench grid seeds of the wrong type", _bench_case(
        lambda t: t.replace('objectives = ["trace_elbo"]', 'objectives = ["trace_elbo"]\nseeds = ["0"]'),
        "'seeds' must be a list of integer seeds")),
    Case("bench grid with an unknown key", _bench_case(
        lambda t: t.replace('guides = ["mean_field"]', 'guides = ["mean_field"]\nmodel = ["vae"]'),
        "[grid] has an unknown key 'model'")),
    Case("bench training with an unknown key", _bench_case(
        lambda t: t.replace("epochs = 1", "epoch = 1"), "[training] has an unknown key 'epoch'")),
    Case("bench training value of the wrong type", _bench_case(
        lambda t: t.replace("epochs = 1", 'epochs = "ten"'), "'epochs' must be an integer, got 'ten'")),
    Case("bench evaluation value of the wrong type", _bench_case(
        lambda t: t + "[evaluation]\nnum_samples = 0\n", "'num_samples' must be a positive integer, got 0")),
    Case("bench published number as text", _bench_case(
        lambda t: t + '[[published]]\ndataset = "digits"\nnll = "86.7"\n', "'nll' must be a number (nats), got '86.7'")),
    Case("bench published as a table, not an array", _bench_case(
        lambda t: t + '[published]\nnll = 86.7\n', "published must be an array of tables")),
    Case("bench model options not a table", _bench_case(
        lambda t: t + '[models]\nvae = 3\n', "[models.vae] must be a table of options")),
    Case("bench override matching an unknown field", _bench_case(
        lambda t: t + '[[overrides]]\nmatch = {modle = "vae"}\n', "match has an unknown key 'modle'")),
    Case("config.json with the format version as text", evaluate_case(
        _edit_config("format_version", "1"), "field 'format_version' must be the integer 1, got '1'")),
    Case("config.json from a newer version", evaluate_case(
        _edit_config("format_version", 9), "written by a newer pyro-genmod")),
    Case("config.json with epochs as text", evaluate_case(
        _edit_config("training.epochs", "three"), "field 'training.epochs' must be a positive integer, got 'three'")),
    Case("config.json with model options as a list", evaluate_case(
        _edit_config("model.options", [8]), "field 'model.options' must be an object")),
    Case("config.json with a negative evaluation seed", evaluate_case(
        _edit_config("evaluation.seed", -1), "field 'evaluation.seed' must be an integer seed")),
    Case("config.json without the dataset's name", evaluate_case(
        _edit_config("dataset.name", delete=True), "field 'dataset.name' is missing")),
    Case("config.json whose options build other shapes", evaluate_case(
        _edit_config("model.options.latent_dim", 3), "has shape (8, 2) in the file but (8, 3) in the rebuilt")),
    Case("checkpoint metadata with the epoch as text", resume_case(
        _edit_checkpoint_meta("epoch", "2"), "field 'progress.epoch' must be a positive integer, got '2'")),
    Case("checkpoint metadata with a negative step", resume_case(
        _edit_checkpoint_meta("step", -1), "field 'progress.step' must be a non-negative integer, got -1")),
    Case("bench config that is not UTF-8", _bench_case(
        lambda t: t.replace('"bad"', '"bad"  # caf\xe9').encode("latin-1"), "is not UTF-8 text (byte 0xe9")),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, finished_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    argv, api, error, match = case.setup(tmp_path, finished_run)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("genmod: note:")]
    assert len(lines) == 1 and lines[0].startswith("genmod"), err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), (match, lines[0])
    assert _snapshot(tmp_path) == before, "the CLI modified files on disk"
    with pytest.raises(error, match=None) as caught:
        api()
    assert match.lower() in str(caught.value).lower(), (match, str(caught.value))
    assert _snapshot(tmp_path) == before, "the Python API modified files on disk"


def test_batch_larger_than_the_dataset_trains_full_batch_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", *TINY, "--batch-size", "5000", "--out", str(out)]) == 0
    assert "every step uses the whole training set" in capsys.readouterr().err
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 2  # one epoch, of one full-batch step


# --- the Python API alone: inputs the command line cannot express -------------------------------


def _swapped_fit():
    model, guide = _pair()
    pg.fit(guide, model, _digits(), epochs=1, progress=False)


def _nan_points():
    x = _x().clone()
    x[1, 0, 2, 3] = float("nan")
    return x


API_CASES = [
    ("run_experiment seed=-1", lambda: __import__("pyro_genmod.experiment").experiment.run_experiment(
        "vae", "mean_field", pg.load_dataset("digits"), seed=-1, epochs=1), pg.ConfigError,
     "seed must be an integer from 0 to 4294967295"),
    ("encode a list", lambda: pg.encode(_pair()[1], _x().tolist()), pg.DataError, "must be a torch.Tensor of points"),
    ("encode NaN", lambda: pg.encode(_pair()[1], _nan_points()), pg.DataError, "NaN or inf values, first in row 1"),
    ("encode points of another shape", lambda: pg.encode(_pair()[1], _x()[:, :, :4]), pg.DataError,
     "point shape (1, 4, 8) but guide 'mean_field' was built for points of shape (1, 8, 8)"),
    ("encode no points", lambda: pg.encode(_pair()[1], _x()[:0]), pg.DataError, "is empty"),
    ("encode num_samples=True", lambda: pg.encode(_pair()[1], _x(), num_samples=True), pg.ConfigError,
     "num_samples must be a positive integer, got True"),
    ("encode mc_samples=0", lambda: pg.encode(_pair()[1], _x(), mc_samples=0), pg.ConfigError,
     "mc_samples must be a positive integer, got 0"),
    ("encode given the model", lambda: pg.encode(_pair()[0], _x()), pg.ConfigError, "passed as the guide but is a model"),
    ("log_likelihood with (guide, model)", lambda: pg.log_likelihood(*reversed(_pair()), _x(), 10), pg.ConfigError,
     "passed as the model but is a guide"),
    ("fit with (guide, model)", _swapped_fit, pg.ConfigError, "passed as the model but is a guide"),
    ("inference_gaps with (guide, model)", lambda: pg.inference_gaps(*reversed(_pair()), _x(), num_samples=10),
     pg.ConfigError, "passed as the model but is a guide"),
    ("log_likelihood num_samples=True", lambda: pg.log_likelihood(*_pair(), _x(), True), pg.ConfigError,
     "must be a positive integer, got True"),
    ("log_likelihood max_rows=True", lambda: pg.log_likelihood(*_pair(), _x(), 10, max_rows=True), pg.ConfigError,
     "max_rows must be a positive integer, got True"),
    ("log_likelihood a list", lambda: pg.log_likelihood(*_pair(), _x().tolist(), 10), pg.DataError,
     "must be a torch.Tensor of points"),
    ("log_likelihood complex points", lambda: pg.log_likelihood(*_pair(), _x().to(torch.complex64), 10), pg.DataError,
     "complex values"),
    ("log_likelihood an object array", lambda: pg.log_likelihood(*_pair(), np.array([[None]] * 3), 10), pg.DataError,
     "holds object values"),
    ("log_likelihood a fractional seed", lambda: pg.log_likelihood(*_pair(), _x(), 10, seed=1.5), pg.ConfigError,
     "got 1.5"),
    ("inference_gaps a negative seed", lambda: pg.inference_gaps(*_pair(), _x(), num_samples=10, seed=-1),
     pg.ConfigError, "got -1"),
    ("sample num_samples=True", lambda: pg.sample(_pair()[0], True), pg.ConfigError, "positive integer, got True"),
    ("sample a negative seed", lambda: pg.sample(_pair()[0], 3, seed=-2), pg.ConfigError, "got -2"),
    ("fit a boolean seed", lambda: _fit(_digits(), seed=True), pg.ConfigError, "got True"),
    ("file dataset path that is not a name", lambda: pg.load_dataset("file", path=3), pg.ConfigError,
     "option 'path' must be text, got 3"),
]


def test_the_whole_catalogue_has_at_least_80_cases():
    assert len(CASES) + len(API_CASES) >= 80, (len(CASES), len(API_CASES))
    assert len({name for name, *_ in API_CASES}) == len(API_CASES)


@pytest.mark.parametrize("call, error, match", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_api_input(call, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as caught:
        call()
    assert match.lower() in str(caught.value).lower(), (match, str(caught.value))
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == [], "the API wrote files"
