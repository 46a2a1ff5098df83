"""Data parallelism: 2 gloo processes at batch B equal 1 process at batch 2B, step for step.

Two ranks with per-rank batch B take the same global minibatches of 2B points as one process
with batch 2B (the epoch permutation comes from the same seeded generator, and dynamic
binarization is drawn for the global batch before sharding), and DistributedDataParallel's
gradient (the average over ranks of the world-size-scaled shard losses' gradients, i.e. their
sum) equals the gradient of the global batch's summed loss. The replicas end bitwise identical.

The ``local`` guide is the case whose set of used parameters changes between steps: its
per-point parameters are used only on shards holding a point it has its own parameters for.
The test places such points so that in step 1 only rank 0's shard holds one and in step 2 only
rank 1's (then neither): a rank without a gradient for the parameter must still take the
summed update (DDP with ``find_unused_parameters=True``), or the replicas drift apart.

Latent noise: in the library each rank draws its own noise (seed + rank), which cannot
reproduce the rows of one (2B, d) draw: torch's CPU normal sampler fills whole tensors (Box-
Muller over blocks of 16 uniforms), so a (B, d) draw on rank 1 is not the second half of a
(2B, d) draw, and a guide may draw in any pattern. The test therefore makes the noise
correspond: it replaces the standard-normal draw behind ``rsample`` with one shared table per
step, drawn for the global batch from one seeded generator, of which each rank takes the rows
of its own points. With the delta guide (no latent noise) nothing is substituted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributions.normal as torch_normal
from safetensors.torch import load_file, save_file
from torch.utils.data import DistributedSampler

import pyro_genmod as pg
from pyro_genmod.distributed import DataParallel, buffers_may_change, parameter_use_may_vary

HERE = Path(__file__).resolve()
B, STEPS = 16, 5
GUIDES = ("delta", "mean_field", "local")


def _five_step_data(binarization: str = "dynamic") -> pg.Dataset:
    """Digits cut to 5 * 2B training points: one epoch is exactly 5 steps of 2B points (binarized
    once with ``binarization="none"``, so points keep their values from step to step)."""
    full = pg.load_dataset("digits")
    train = full.train[: STEPS * 2 * B]
    if binarization == "none":
        train = torch.bernoulli(train, generator=torch.Generator().manual_seed(5))
    return pg.Dataset(
        name="digits", train=train, val=full.val[:20], test=full.test[:20], binarization=binarization,
    )


def _local_points(train: torch.Tensor) -> torch.Tensor:
    """Two training points for the ``local`` guide's own parameters: global position 0 of step 1
    (rank 0's shard) and position 2B + 1 of step 2 (rank 1's), in fit's epoch order (seed 0)."""
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))
    return train[order[[0, 2 * B + 1]]]


class CorrespondingNoise:
    """Swap the standard-normal draw of ``rsample`` for a shared table: each draw for a training
    batch (``rows`` points on this process) takes the noise of the whole global batch from one
    seeded generator, and this rank keeps the rows of its points (positions rank, rank + world,
    ...), as the batch itself is sharded. Other draws (a one-point probe, validation) come
    from the usual RNG and leave the table's generator alone."""

    def __init__(self, rows: int, rank: int = 0, world: int = 1):
        self.rows, self.rank, self.world = rows, rank, world
        self.generator = torch.Generator().manual_seed(1234)

    def __call__(self, shape, dtype, device):
        if len(shape) == 0 or shape[0] != self.rows:
            return self.saved(shape, dtype=dtype, device=device)
        table = torch.randn((shape[0] * self.world, *shape[1:]), generator=self.generator, dtype=dtype)
        return table[self.rank :: self.world].to(device)

    def __enter__(self):
        self.saved, torch_normal._standard_normal = torch_normal._standard_normal, self
        return self

    def __exit__(self, *exc):
        torch_normal._standard_normal = self.saved


def train_five_steps(guide_name: str, batch_size: int, distributed: bool, rank: int = 0, world: int = 1) -> dict:
    data = _five_step_data("none" if guide_name == "local" else "dynamic")
    pyro.set_rng_seed(0)
    model = pg.create_model("vae", data, latent_dim=3, hidden=[32])
    guide = pg.create_guide(guide_name, model, hidden=[32])
    if guide_name == "local":
        guide.add_points(_local_points(data.train))
    with CorrespondingNoise(batch_size, rank, world):
        pg.fit(model, guide, data, epochs=1, batch_size=batch_size, lr=1e-2, seed=0, progress=False, distributed=distributed)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"guide.{k}": v for k, v in guide.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in tensors.items()}


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for guide_name in GUIDES:
        params = train_five_steps(guide_name, B, True, rank, world)
        save_file(params, f"{out}/{guide_name}-rank{rank}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) == 5:
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    sys.exit(0)


def test_shards_are_distributed_sampler_shards():
    for n, world in ((10, 2), (11, 2), (13, 4), (3, 3)):
        order = torch.randperm(n)
        for rank in range(world):
            ddp = DataParallel(rank, world, torch.device("cpu"))
            expected = order[list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))]
            assert torch.equal(ddp.shard(ddp.pad(order)), expected)


def test_two_gloo_processes_at_batch_b_equal_one_process_at_batch_2b(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():  # gloo on loopback: no dependence on the host name resolving
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    workers = [
        subprocess.Popen(
            [sys.executable, str(HERE), str(rank), "2", str(tmp_path / "rendezvous"), str(tmp_path)],
            env=env, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    for process in workers:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    torch.set_num_threads(1)
    for guide_name in GUIDES:
        single = train_five_steps(guide_name, 2 * B, False)
        trained = load_file(str(tmp_path / f"{guide_name}-rank0.safetensors"))
        other = load_file(str(tmp_path / f"{guide_name}-rank1.safetensors"))
        # the replicas are identical, bit for bit: every rank took the same update at every step
        assert trained.keys() == other.keys()
        assert all(torch.equal(trained[k], other[k]) for k in trained), guide_name
        for rank in range(2):
            ranked = load_file(str(tmp_path / f"{guide_name}-rank{rank}.safetensors"))
            assert ranked.keys() == single.keys()
            for name, value in single.items():
                # float32 sums in another order differ by ~1e-7 relative; 5 Adam steps of
                # size <= lr = 1e-2 keep that far below 1e-5
                assert torch.allclose(ranked[name], value, atol=1e-5, rtol=0), (guide_name, rank, name)
        # the 5 steps moved the parameters far more than the tolerance (the test has teeth)
        pyro.set_rng_seed(0)
        start = pg.create_model("vae", (1, 8, 8), latent_dim=3, hidden=[32]).state_dict()
        moved = max((trained[f"model.{k}"] - v).abs().max() for k, v in start.items() if v.is_floating_point())
        assert moved > 1e-3
    # the local guide's own parameters moved from where they started, on rank 1 too, which had no
    # gradient for them in step 1 (its shard held neither point) and took rank 0's update
    data = _five_step_data("none")
    pyro.set_rng_seed(0)
    guide = pg.create_guide("local", pg.create_model("vae", data, latent_dim=3, hidden=[32]), hidden=[32])
    guide.add_points(_local_points(data.train))
    rank1 = load_file(str(tmp_path / "local-rank1.safetensors"))["guide.local_params"]
    assert (rank1 - guide.local_params.detach()).abs().max() > 1e-3


def test_noise_that_does_not_correspond_gives_different_parameters():
    """Without the shared noise table, rank-local noise differs from one 2B draw: the equality
    above depends on making the noise correspond, and is not a tautology."""
    torch.set_num_threads(1)
    with_table = train_five_steps("mean_field", 2 * B, False)
    data = _five_step_data()
    pyro.set_rng_seed(0)
    model = pg.create_model("vae", data, latent_dim=3, hidden=[32])
    guide = pg.create_guide("mean_field", model, hidden=[32])
    pg.fit(model, guide, data, epochs=1, batch_size=2 * B, lr=1e-2, seed=0, progress=False)
    diff = max((with_table[f"model.{k}"] - v).abs().max() for k, v in model.state_dict().items() if v.is_floating_point())
    assert diff > 1e-5


def _program(x):
    """A plain Pyro program: its parameters are found by tracing, its code could branch on x."""
    n = x.shape[0]
    probs = pyro.param("probs", lambda: torch.full((x[0].numel(),), 0.5), constraint=pyro.distributions.constraints.unit_interval)
    with pyro.plate("data", n):
        z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(n, 1), 1.0).to_event(1))
        pyro.sample("x", pyro.distributions.Bernoulli(probs * torch.sigmoid(z)).to_event(1), obs=x.reshape(n, -1))


def test_ddp_searches_for_unused_parameters_and_syncs_buffers_only_where_needed():
    """find_unused_parameters (a graph walk every step) for Pyro programs and the local guide;
    the zoo's amortized pairs use every parameter at every step and go without it. Buffers are
    re-broadcast every step for programs and modules with running statistics; the zoo's are
    constants."""
    data = _five_step_data()
    model = pg.create_model("vae", data, latent_dim=2, hidden=[8])
    mean_field = pg.create_guide("mean_field", model, hidden=[8])
    assert list(model.buffers())  # a constant
    assert not parameter_use_may_vary(model, mean_field) and not buffers_may_change(model, mean_field)
    assert parameter_use_may_vary(model, pg.create_guide("local", model, hidden=[8]))
    program = pg.ProgramModel(_program, data)
    guide = pg.create_guide("mean_field", program, hidden=[8])
    assert list(program.parameters()) and parameter_use_may_vary(program, guide) and buffers_may_change(program, guide)
    mean_field.norm = torch.nn.BatchNorm1d(3)  # running mean and variance change in training
    assert buffers_may_change(model, mean_field) and not parameter_use_may_vary(model, mean_field)


@pytest.mark.parametrize("flag", [True, False])
def test_distributed_flag_without_torchrun_is_a_clear_error(flag, capsys, monkeypatch):
    from pyro_genmod.cli import main

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    if flag:
        assert main(["train", "--distributed", "--epochs", "1", "--out", "unused-never-created"]) == 2
        assert "torchrun" in capsys.readouterr().err
        assert not Path("unused-never-created").exists()
    else:
        with pytest.raises(pg.ConfigError, match="torch.distributed process group"):
            pg.fit(*_pair(), _five_step_data(), epochs=1, distributed=True, progress=False)


def _pair():
    model = pg.create_model("vae", (1, 8, 8), latent_dim=2, hidden=[8])
    return model, pg.create_guide("delta", model)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_torchrun_cli_sigkill_and_resume_is_bitwise_identical(tmp_path):
    """``torchrun --standalone --nproc_per_node=2 -m pyro_genmod train --distributed``: only rank 0
    writes; both workers SIGKILLed mid-run, resumed with ``--resume``, bitwise equal to an
    uninterrupted 2-process run. Slow: three torchrun launches of two workers each."""
    import signal

    from pyro_genmod.checkpoint import CHECKPOINT_FILE

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyro_genmod"]
    args = ["train", "--distributed", "--epochs", "10", "--batch-size", "64", "--latent-dim", "2", "-K", "10",
            "--model-opt", "hidden=[64]", "--guide-opt", "hidden=[64]", "--checkpoint-every", "7", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, run = tmp_path / "reference", tmp_path / "interrupted"
    done = subprocess.run(torchrun + args + ["--out", str(ref)], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run saved to") == 1  # rank 1 prints nothing

    launcher = subprocess.Popen(torchrun + args + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, inodes = run / CHECKPOINT_FILE, set()
    while len(inodes) < 3 and launcher.poll() is None:  # let it replace the checkpoint a few times
        if path.exists():
            inodes.add(path.stat().st_ino)
        time.sleep(0.002)
    workers = _children(launcher.pid)
    assert len(workers) == 2 and launcher.poll() is None, "the run finished before it could be killed"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=120)
    assert not (run / "params.safetensors").exists()

    done = subprocess.run(torchrun + ["train", "--distributed", "--resume", str(run), "--quiet"], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = load_file(str(ref / "params.safetensors")), load_file(str(run / "params.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
