"""Run folders cannot be lost or corrupted: kills during ``--overwrite``, two writers at once, stale
locks, full disks, edited checkpoints and the umask (issue 20).

Like ``test_resume.py``, the kill tests use a driver process that imports pyro-genmod once and
forks one child per command; a child installs a trap that sends SIGKILL to itself at a chosen
moment (right after the n-th ``os.replace`` onto a given file name, at the n-th optimizer step,
halfway through a checkpoint write, after the n-th netCDF file of a diagnosis). The lock tests
start real ``python`` processes; the full-disk tests run the CLI under ``RLIMIT_FSIZE``, which
makes a write past the limit fail with EFBIG as a full disk fails with ENOSPC.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pyro_genmod as pg
from pyro_genmod.checkpoint import CHECKPOINT_FILE, load_checkpoint
from pyro_genmod.cli import main
from pyro_genmod.runs import load_run

HERE = Path(__file__).resolve()
TINY = ["--epochs", "1", "--batch-size", "512", "--latent-dim", "2", "--model-opt", "hidden=[8]",
        "--guide-opt", "hidden=[8]", "-K", "4", "--quiet"]
ARGS = ["train", "--epochs", "3", "--batch-size", "512", "--latent-dim", "2", "--model-opt", "hidden=[8]",
        "--guide-opt", "hidden=[8]", "-K", "8", "--checkpoint-every", "2", "--quiet"]
# 1,297 training points: 3 steps per epoch, 9 steps; checkpoints after steps 2, 3, 4, 6, 8, 9
DIAGNOSE = ["--points", "1", "--chains", "2", "--warmup", "10", "--draws", "10", "-K", "20", "--quiet"]


# --- the driver (runs in its own process: python tests/test_run_safety.py JOBS.json) -----------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_trap(job: dict) -> None:
    """Arrange for this process to SIGKILL itself at the ``n``-th occurrence of ``kind``."""
    kind, n, count = job["kill"], job.get("n", 0), [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] == n

    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: _die() if hit() else None)
    elif kind == "replace":  # right after the n-th os.replace onto a file called job["name"]
        replace = os.replace

        def dying_replace(src, dst, *args, **kwargs):
            replace(src, dst, *args, **kwargs)
            if Path(dst).name == job["name"] and hit():
                _die()

        os.replace = dying_replace
    elif kind == "checkpoint_half":
        from pyro_genmod import checkpoint

        write = checkpoint._write_bytes

        def dying_write(path, payload):
            if hit():
                with open(path, "wb") as handle:
                    handle.write(payload[: len(payload) // 2])
                _die()
            write(path, payload)

        checkpoint._write_bytes = dying_write
    elif kind == "netcdf":  # right after the n-th netCDF file of a diagnosis is written
        from pyro_genmod import arviz_bridge as diagnostics

        write_netcdf = diagnostics.write_netcdf

        def dying_write_netcdf(idata, path):
            written = write_netcdf(idata, path)
            if hit():
                _die()
            return written

        diagnostics.write_netcdf = dying_write_netcdf
    elif kind != "none":
        raise ValueError(kind)


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def driver(jobs_file: str) -> None:
    import sklearn.datasets  # noqa: F401  (import once here, not in every forked child)

    import pyro_genmod.diagnose  # noqa: F401
    import pyro_genmod.arviz_bridge  # noqa: F401
    import pyro_genmod.experiment  # noqa: F401
    from pyro_genmod.cli import main

    pg.list_models(), pg.list_guides(), pg.list_datasets()
    torch.set_num_threads(1)
    results = []
    for job in json.loads(Path(jobs_file).read_text()):
        if "copy_from" in job:  # a copy of an earlier run, with a file of the user's and a diagnosis
            shutil.copytree(job["copy_from"], job["folder"])
            (Path(job["folder"]) / "notes.txt").write_text("keep")
            (Path(job["folder"]) / "diagnose").mkdir()
            (Path(job["folder"]) / "diagnose" / "report.md").write_text("of the old run")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sys.stdout = sys.stderr = open(os.devnull, "w")
                _install_trap(job)
                code = main(job["argv"])
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        results.append({"killed": killed, "code": code, "files": _snapshot(Path(job["folder"]))})
    print(json.dumps(results))


def held(go: str, at_step: int, argv: list[str]) -> int:
    """``genmod`` that waits before its ``at_step``-th optimizer step until the file ``go`` exists,
    so a test decides how long it holds its run folder, whatever the load on the machine."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from pyro_genmod.cli import main

    torch.set_num_threads(1)
    steps, deadline = [0], time.monotonic() + 600

    def wait(optimizer, args, kwargs):
        steps[0] += 1
        while steps[0] == at_step and not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.02)

    register_optimizer_step_pre_hook(wait)
    return main(argv)


if __name__ == "__main__" and len(sys.argv) == 2:
    driver(sys.argv[1])
    sys.exit(0)
if __name__ == "__main__" and sys.argv[1] == "--held":
    sys.exit(held(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))


# --- helpers ----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _run_jobs(tmp_path: Path, jobs: list[dict], name: str = "jobs") -> list[dict]:
    jobs_file = tmp_path / f"{name}.json"
    jobs_file.write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, str(HERE), str(jobs_file)], capture_output=True, text=True, env=_env(), timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _history(folder: Path) -> list[dict]:
    with open(folder / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


def _config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "file_sha256"}  # it holds the metrics' digest


def _which(run: pg.Run, refs: dict[str, Path]) -> str:
    """'old' or 'new' if the loaded run is, in every part, the reference run of that name."""
    state = {**{f"model.{k}": v for k, v in run.model.state_dict().items()},
             **{f"guide.{k}": v for k, v in run.guide.state_dict().items()}}
    matches = []
    for name, folder in refs.items():
        params = load_file(str(folder / "params.safetensors"))
        same = [
            params.keys() == state.keys() and all(torch.equal(params[k], state[k]) for k in params),
            _metrics(run.metrics) == _metrics(json.loads((folder / "metrics.json").read_text())),
            _config(run.config) == _config(json.loads((folder / "config.json").read_text())),
            _history(run.path) == _history(folder),
        ]
        if all(same):
            matches.append(name)
        assert not any(same) or all(same), f"a mix: {name} in parts only ({same})"
    assert len(matches) == 1, matches
    return matches[0]


def _leftovers(folder: Path) -> list[str]:
    """Staging folders, locks and temporary files: none may stay after a writer finished."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genmod: error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


# --- 1 and 2: a killed --overwrite leaves the old run or the new one, and can be resumed --------

# (kill, evaluate before resuming, what the folder holds after the kill)
OVERWRITE_KILLS = [
    ({"kill": "step", "n": 5}, True, "old"),  # training, in epoch 2
    ({"kill": "replace", "name": "params.safetensors", "n": 1}, True, "old"),  # saving the new run
    ({"kill": "replace", "name": "metrics.json", "n": 1}, False, "old"),
    ({"kill": "replace", "name": "config.json", "n": 1}, True, "old"),  # saved, not yet committed
    ({"kill": "replace", "name": ".genmod-commit", "n": 1}, True, "new"),  # just past the commit point
    ({"kill": "replace", "name": "params.safetensors", "n": 2}, True, "new"),  # moving files in
    ({"kill": "replace", "name": "metrics.json", "n": 2}, False, "new"),
    ({"kill": "replace", "name": "config.json", "n": 2}, True, "new"),  # all moved, staging not removed
]


def test_sigkill_during_overwrite_leaves_old_or_new_run_never_a_mix_and_resumes(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    refs = {"old": old, "new": new}
    jobs = [
        {"argv": ARGS + ["--seed", "1", "--out", str(old)], "kill": "none", "folder": str(old)},
        {"argv": ARGS + ["--seed", "2", "--out", str(new)], "kill": "none", "folder": str(new)},
    ]
    folders = [tmp_path / f"run{i}" for i in range(len(OVERWRITE_KILLS))]
    for folder, (kill, _, _) in zip(folders, OVERWRITE_KILLS):
        argv = ARGS + ["--seed", "2", "--overwrite", "--out", str(folder)]
        jobs.append({"argv": argv, "folder": str(folder), "copy_from": str(old), **kill})
    results = _run_jobs(tmp_path, jobs)
    assert [r["code"] for r in results[:2]] == [0, 0], results[:2]

    # what `genmod evaluate` would serve right after the kill: exactly the old run or the new one
    for folder, (kill, evaluate, expected), result in zip(folders, OVERWRITE_KILLS, results[2:]):
        if evaluate:
            assert _which(load_run(folder), refs) == expected, kill
            assert (folder / "notes.txt").read_text() == "keep"
        assert result["killed"], (kill, result["code"])  # each trap went off

    resumed = _run_jobs(tmp_path, [
        {"argv": ["train", "--resume", str(folder), "--quiet"], "kill": "none", "folder": str(folder)}
        for folder in folders
    ], name="resume")
    for folder, (kill, _, expected), result in zip(folders, OVERWRITE_KILLS, resumed):
        # an interrupted replacement resumes; a committed one is the finished new run
        assert result["code"] == (0 if expected == "old" else 2), (kill, result["code"])
        assert _which(load_run(folder), refs) == "new", kill
        expected_params, got = load_file(str(new / "params.safetensors")), load_file(str(folder / "params.safetensors"))
        assert all(torch.equal(expected_params[k], got[k]) for k in expected_params), kill  # bit for bit
        assert (folder / "notes.txt").read_text() == "keep"  # the user's file stays
        assert not (folder / "diagnose").exists()  # the old run's diagnosis went with it
        assert _leftovers(folder) == [], (kill, _leftovers(folder))


# --- 3: one writer at a time; a lock left by a killed writer is taken over ---------------------


def _held(go: Path, at_step: int, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE), "--held", str(go), str(at_step), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def test_two_writers_started_together_one_is_refused_naming_the_other(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    argv = ["train", *TINY, "--epochs", "3", "--out", str(out)]
    first, second = _held(go, 1, argv), _held(go, 1, argv)  # each waits at its first step for `go`
    deadline = time.monotonic() + 120
    while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # until one of them gives up (without a lock both would wait here)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, 2], (codes, outputs)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f"run saved to {out}" in outputs[winner][0]
    err = outputs[loser][1]
    assert err.count("\n") == 1 and err.startswith("genmod: error: "), err
    assert f"'{out}'" in err and f"pid {(first, second)[winner].pid}" in err, err
    assert "run saved" not in outputs[loser][0]
    load_run(out)
    assert _leftovers(out) == []


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    # it waits before step 4, after the checkpoint of epoch 1 (3 steps), until it is killed
    writer = _held(tmp_path / "never", 4, ["train", *TINY, "--epochs", "3", "--out", str(out)])
    lock, deadline = out / ".genmod-lock", time.monotonic() + 120
    try:
        while not ((out / CHECKPOINT_FILE).is_file() and lock.is_file()
                   and lock.read_text().strip() == str(writer.pid)):
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never held a lock"
            time.sleep(0.01)
        # a second writer, even with --overwrite, is refused while the first one lives
        err = _one_line_error(capsys, ["train", *TINY, "--out", str(out), "--overwrite"])
        assert f"'{out}'" in err and f"pid {writer.pid}" in err, err
    finally:
        writer.kill()
        writer.wait()
    # the killed writer's lock file stays behind, naming a process that no longer exists
    assert lock.read_text().strip() == str(writer.pid)
    with pytest.raises(ProcessLookupError):
        os.kill(writer.pid, 0)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert load_run(out).metrics["epochs"] == 3
    assert _leftovers(out) == []


# --- 6: temporaries of killed checkpoint writes are removed by the next writer -----------------


def test_temporaries_of_killed_checkpoint_writes_are_cleaned_up(tmp_path):
    out = tmp_path / "run"
    results = _run_jobs(tmp_path, [
        {"argv": ARGS + ["--out", str(out)], "kill": "checkpoint_half", "n": 3, "folder": str(out)},
        {"argv": ["train", "--resume", str(out), "--quiet"], "kill": "none", "folder": str(out)},
    ])
    assert results[0]["killed"] and results[1]["code"] == 0, results
    assert any(name.startswith(f".{CHECKPOINT_FILE}.") for name in results[0]["files"]), results[0]["files"]
    assert not any(name.startswith(".") for name in results[1]["files"]), results[1]["files"]


# --- 7: a hand-edited checkpoint is refused ----------------------------------------------------


def _edit_checkpoint(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    key = next(iter(metadata))
    metadata[key] = edit(metadata[key])
    save_file(tensors, str(path), metadata=metadata)


def test_hand_edited_checkpoint_metadata_is_refused(tmp_path, finished_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in ("config.json", "metrics.json", "history.csv", "params.safetensors"):
        (run / name).unlink()  # as a run killed during training leaves it
    path = run / CHECKPOINT_FILE
    pristine = path.read_bytes()

    # the same metadata re-serialised (other key order, indented): the digest is over its canonical JSON
    _edit_checkpoint(path, lambda text: json.dumps(dict(reversed(list(json.loads(text).items()))), indent=1))
    assert load_checkpoint(path).meta["progress"]["epoch"] == 2

    path.write_bytes(pristine)

    def back_one_epoch(text: str) -> str:
        meta = json.loads(text)
        meta["progress"]["epoch"] -= 1  # the SHA-256 field is left as it was
        return json.dumps(meta)

    _edit_checkpoint(path, back_one_epoch)
    with pytest.raises(pg.RunFolderError, match="altered"):
        load_checkpoint(path)
    err = _one_line_error(capsys, ["train", "--resume", str(run), "--quiet"])
    assert "SHA-256" in err and str(path) in err, err
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_FILE]

    # a checkpoint written before the digest covered the metadata (version 1) still resumes
    path.write_bytes(pristine)

    def version_1(text: str) -> str:
        meta = json.loads(text)
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        sha = hashlib.sha256()
        for name in sorted(tensors):
            t = tensors[name]
            sha.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return json.dumps({**meta, "version": 1, "sha256": sha.hexdigest()})

    _edit_checkpoint(path, version_1)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert load_run(run).metrics["epochs"] == 1


# --- 4: sample --overwrite on a full disk keeps the old image ----------------------------------


def _limit_file_size(limit: int):
    def preexec() -> None:  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_sample_overwrite_on_a_full_disk_keeps_the_old_image(tmp_path, finished_run):
    image = tmp_path / "images" / "grid.png"
    assert main(["sample", str(finished_run), "--out", str(image)]) == 0
    before = image.read_bytes()
    assert len(before) > 1000
    done = subprocess.run(
        [sys.executable, "-m", "pyro_genmod", "sample", str(finished_run), "--out", str(image), "--overwrite",
         "--seed", "7"], capture_output=True, text=True, env=_env(), preexec_fn=_limit_file_size(512), timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("genmod: error: cannot write image"), done.stderr
    assert image.read_bytes() == before
    assert sorted(p.name for p in image.parent.iterdir()) == ["grid.png"]  # no temporary left
    assert main(["sample", str(finished_run), "--out", str(image), "--overwrite", "--seed", "7"]) == 0
    assert image.read_bytes() != before and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- 5: diagnose refuses a non-empty --out; --overwrite replaces it all at once ----------------


def test_diagnose_refuses_a_folder_with_files_unless_overwrite(tmp_path, finished_run, capsys):
    out = tmp_path / "diag"
    out.mkdir()
    (out / "reference.nc").write_bytes(b"an earlier result")
    err = _one_line_error(capsys, ["diagnose", str(finished_run), *DIAGNOSE, "--out", str(out)])
    assert f"'{out}'" in err and "not empty" in err and "--overwrite" in err, err
    assert _snapshot(out) == {"reference.nc": hashlib.sha256(b"an earlier result").hexdigest()}


def test_diagnose_overwrite_killed_midway_keeps_the_earlier_diagnosis(tmp_path, finished_run):
    out = tmp_path / "diag"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    diagnose = ["diagnose", str(finished_run), *DIAGNOSE, "--out", str(out)]
    results = _run_jobs(tmp_path, [
        {"argv": diagnose + ["--overwrite"], "kill": "none", "folder": str(out)},
        {"argv": diagnose + ["--overwrite", "--seed", "1"], "kill": "netcdf", "n": 2, "folder": str(out)},
        {"argv": diagnose + ["--overwrite", "--seed", "1"], "kill": "none", "folder": str(out)},
    ])
    first, killed, second = results
    assert first["code"] == 0 and killed["killed"] and second["code"] == 0, results
    assert "report.md" in first["files"] and "reference.nc" in first["files"]
    # the kill came after two new files were written: the earlier diagnosis is untouched
    assert {k: v for k, v in killed["files"].items() if not k.startswith(".")} == first["files"]
    # the next run replaces every file, keeps the user's, and leaves no staging folder or lock
    assert second["files"].keys() == first["files"].keys()
    changed = [k for k in first["files"] if k != "mine.txt" and first["files"][k] != second["files"][k]]
    assert {"reference.nc", "guide.nc", "report.md"} <= set(changed), changed
    assert (out / "mine.txt").read_text() == "keep"
    umask = os.umask(0)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~umask for p in out.iterdir()), {
        p.name: oct(p.stat().st_mode) for p in out.iterdir()
    }


# --- files follow the umask --------------------------------------------------------------------


def test_written_files_follow_the_umask(tmp_path, finished_run):
    out, image = tmp_path / "run", tmp_path / "grid.png"
    previous = os.umask(0o002)
    try:
        assert main(["train", *TINY, "--out", str(out)]) == 0
        first = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert main(["train", *TINY, "--seed", "3", "--out", str(out), "--overwrite"]) == 0
        assert main(["sample", str(finished_run), "--out", str(image)]) == 0
    finally:
        os.umask(previous)
    names = {"config.json", "metrics.json", "history.csv", "params.safetensors", CHECKPOINT_FILE}
    assert first == dict.fromkeys(names, 0o664), first
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(names, 0o664)
    assert image.stat().st_mode & 0o777 == 0o664
    assert out.stat().st_mode & 0o777 == 0o775


# --- a full disk while params.safetensors is written -------------------------------------------


def test_a_full_disk_while_writing_params_keeps_the_old_run_and_says_so_in_one_line(
    tmp_path, finished_run, monkeypatch, capsys
):
    import errno

    from pyro_genmod import runs

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {name: _snapshot(run)[name] for name in ("config.json", "metrics.json", "history.csv", "params.safetensors")}
    write = runs._write_bytes  # the low-level write of every run file

    def full_disk(path: str, payload: bytes) -> None:
        if Path(path).name.startswith(".params.safetensors."):
            with open(path, "wb") as handle:  # half the bytes fit, then the disk is full
                handle.write(payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        write(path, payload)

    monkeypatch.setattr(runs, "_write_bytes", full_disk)
    err = _one_line_error(capsys, ["train", *TINY, "--seed", "5", "--out", str(run), "--overwrite"])
    assert "No space left on device" in err and str(run) in err, err
    after = _snapshot(run)
    assert {name: after[name] for name in before} == before  # the old run's files, byte for byte
    assert not [p for p in run.rglob(".params.safetensors.*")]  # the half-written temporary is gone
    assert load_run(run).metrics == json.loads((finished_run / "metrics.json").read_text())
    monkeypatch.setattr(runs, "_write_bytes", write)  # space again: the same command now replaces the run
    assert main(["train", *TINY, "--seed", "5", "--out", str(run), "--overwrite"]) == 0
    assert _snapshot(run)["params.safetensors"] != before["params.safetensors"]
    assert _leftovers(run) == []
