"""An objective's learned state (FactorVAE's discriminator and its Adam state) is checkpointed:
a resumed fit is bitwise the uninterrupted one, and the file holds the state as safetensors."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import pyro_genmod as pg
from pyro_genmod.checkpoint import load_checkpoint, save_checkpoint
from pyro_genmod.errors import ConfigError, RunFolderError
from pyro_genmod.objectives import get_objective

SPEC = "factor_vae(gamma=10, hidden=[8])"


def _fit(data, epochs, checkpoint=None, resume=False, objective=SPEC):
    torch.manual_seed(1)  # a resumed fit's fresh pair starts elsewhere: the checkpoint must overwrite it
    model = pg.create_model("vae", data, latent_dim=2, hidden=(16,))
    guide = pg.create_guide("mean_field", model, hidden=(16,))
    result = pg.fit(model, guide, data, epochs=epochs, batch_size=16, seed=3, objective=objective,
                    checkpoint=checkpoint, resume=resume, progress=False)
    return model, guide, result


def _assert_same_run(a, b) -> None:
    for left, right in zip(a[:2], b[:2]):
        sa, sb = left.state_dict(), right.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    drop = ("seconds", "time")  # wall-clock columns, if any
    strip = [[{k: v for k, v in row.items() if not any(d in k for d in drop)} for row in r[2].history] for r in (a, b)]
    assert strip[0] == strip[1]


def test_factor_vae_resumed_at_an_epoch_end_is_bitwise_the_uninterrupted_fit(tiny, tmp_path):
    reference = _fit(tiny, 4)
    _fit(tiny, 2, checkpoint=tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoint.safetensors")
    saved = ckpt.group("objective")
    assert saved is not None and any(k.startswith("discriminator.") for k in saved)
    assert any(k.endswith(".exp_avg_sq") for k in saved) and any(k.endswith(".step") for k in saved)
    assert float(saved["adam.0.step"]) == 6  # one discriminator step per training step, 2 epochs of 3
    _assert_same_run(reference, _fit(tiny, 4, checkpoint=tmp_path, resume=True))


class _Interrupt(Exception):
    pass


def test_factor_vae_interrupted_mid_epoch_resumes_bitwise(tiny, tmp_path):
    """Killed (here: an exception) after a mid-epoch checkpoint, between two training steps."""
    reference = _fit(tiny, 3)
    count = [0]

    def interrupt(optimizer, args, kwargs):
        if optimizer.defaults["betas"] == (0.5, 0.9):  # the discriminator's own step
            return
        count[0] += 1
        if count[0] == 6:  # checkpoints after steps 2 and 4 (epoch 2, step 1) were written
            raise _Interrupt

    handle = register_optimizer_step_pre_hook(interrupt)
    try:
        with pytest.raises(_Interrupt):
            _fit(tiny, 3, checkpoint=pg.checkpoint.Checkpointer(tmp_path, every=2))
    finally:
        handle.remove()
    progress = load_checkpoint(tmp_path / "checkpoint.safetensors").meta["progress"]
    assert (progress["epoch"], progress["step"]) == (2, 1)  # mid-epoch: step 5 is redone
    _assert_same_run(reference, _fit(tiny, 3, checkpoint=pg.checkpoint.Checkpointer(tmp_path, every=2), resume=True))


def test_saved_and_reloaded_discriminator_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    objective = get_objective("factor_vae(hidden=[16, 8])")
    for _ in range(3):
        loss = objective.discriminator_loss(torch.randn(32, 3))
        objective.optimizer.zero_grad()
        loss.backward()
        objective.optimizer.step()
    state = objective.state_tensors()
    save_checkpoint(tmp_path / "c.safetensors", {f"objective.{k}": v for k, v in state.items()}, {})
    reloaded = get_objective("factor_vae(hidden=[16, 8])")
    rng = torch.get_rng_state()
    reloaded.load_state_tensors(load_checkpoint(tmp_path / "c.safetensors").group("objective"))
    assert torch.equal(torch.get_rng_state(), rng)  # building it drew no random numbers
    z = torch.randn(64, 3)
    with torch.no_grad():
        assert torch.equal(objective.discriminator(z), reloaded.discriminator(z))
    # and the next optimizer step is the same too (Adam's step counts and moments came along)
    for each in (objective, reloaded):
        torch.manual_seed(5)
        each.optimizer.zero_grad()
        each.discriminator_loss(z).backward()
        each.optimizer.step()
    for a, b in zip(objective.discriminator.parameters(), reloaded.discriminator.parameters()):
        assert torch.equal(a, b)


def test_objectives_without_state_hold_none_and_refuse_some():
    objective = get_objective("trace_elbo")
    assert objective.state_tensors() == {}
    objective.load_state_tensors({})
    with pytest.raises(ConfigError, match="keeps no state"):
        objective.load_state_tensors({"x": torch.zeros(1)})
    with pytest.raises(ConfigError, match="discriminator"):
        get_objective(SPEC).load_state_tensors({})


def test_factor_vae_checkpoint_without_the_discriminator_is_refused(tiny, tmp_path):
    _fit(tiny, 1, checkpoint=tmp_path)
    path = tmp_path / "checkpoint.safetensors"
    ckpt = load_checkpoint(path)
    # as an older pyro-genmod wrote it: no objective tensors
    older = {k: v for k, v in ckpt.tensors.items() if not k.startswith("objective.")}
    save_checkpoint(path, older, {k: v for k, v in ckpt.meta.items() if k not in ("version", "sha256")})
    with pytest.raises(RunFolderError, match="discriminator") as error:
        _fit(tiny, 2, checkpoint=tmp_path, resume=True)
    assert "\n" not in str(error.value)
    # an objective without state resumes a file without objective tensors
    (tmp_path / "elbo").mkdir()
    _fit(tiny, 1, checkpoint=tmp_path / "elbo", objective="trace_elbo")
    ckpt = load_checkpoint(tmp_path / "elbo" / "checkpoint.safetensors")
    assert ckpt.group("objective") is None
    _fit(tiny, 2, checkpoint=tmp_path / "elbo", resume=True, objective="trace_elbo")


def test_factor_vae_refuses_data_parallel_training(tiny):
    model = pg.create_model("vae", tiny, latent_dim=2, hidden=(16,))
    guide = pg.create_guide("mean_field", model, hidden=(16,))
    with pytest.raises(ConfigError, match="factor_vae.*distributed=True.*one process"):
        pg.fit(model, guide, tiny, epochs=1, objective=SPEC, distributed=True, progress=False)


def test_a_restored_discriminator_follows_the_draws_dtype_with_its_adam_state():
    torch.manual_seed(0)
    objective = get_objective("factor_vae(hidden=[4])")
    loss = objective.discriminator_loss(torch.randn(8, 2))
    loss.backward()
    objective.optimizer.step()
    reloaded = get_objective("factor_vae(hidden=[4])")
    reloaded.load_state_tensors(objective.state_tensors())  # built on the CPU in float32
    z = torch.randn(8, 2, dtype=torch.float64)
    reloaded.discriminator_loss(z).backward()  # moved, not rebuilt: Adam's moments come along, cast
    reloaded.optimizer.step()
    state = reloaded.optimizer.state[reloaded.discriminator[0].weight]
    assert state["exp_avg"].dtype == torch.float64 and float(state["step"]) == 2
