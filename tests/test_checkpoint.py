"""Checkpoint files: round trip, refusal of pickle payloads, truncated and corrupted files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from pyro_genmod.cli import main


class Payload:
    """Unpickling this creates the file ``marker``: stands for arbitrary code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    tensors = {"model.w": torch.randn(40, 30), "optim.0.step": torch.tensor(3.0), "order": torch.randperm(50)}
    return save_checkpoint(tmp_path / CHECKPOINT_FILE, tensors, {"progress": {"epoch": 2, "step": 0}})


def test_round_trip_keeps_tensors_and_metadata_exactly(checkpoint):
    loaded = load_checkpoint(checkpoint)
    assert loaded.meta["progress"] == {"epoch": 2, "step": 0}
    assert set(loaded.tensors) == {"model.w", "optim.0.step", "order"}
    again = save_checkpoint(checkpoint.with_name("copy.safetensors"), loaded.tensors, {"progress": {}})
    assert all(torch.equal(loaded.tensors[k], v) for k, v in load_checkpoint(again).tensors.items())
    assert not list(checkpoint.parent.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, writer, capsys):
    folder, marker = tmp_path / "run", tmp_path / "payload-ran"
    folder.mkdir()
    path = folder / CHECKPOINT_FILE
    if writer == "torch.save":
        torch.save({"model": Payload(marker), "w": torch.zeros(2)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Payload(marker)}))
    # control: the payload is live, unpickling it does create its file
    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    with pytest.raises(pg.RunFolderError, match="pickle"):
        load_checkpoint(path)
    assert main(["train", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pickle" in err and "Traceback" not in err
    assert not marker.exists()
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE]


def test_truncated_checkpoints_give_a_clear_error(checkpoint):
    data = checkpoint.read_bytes()
    for length in (0, 3, 8, 60, len(data) // 2, len(data) - 1):
        checkpoint.write_bytes(data[:length])
        with pytest.raises(pg.RunFolderError, match="truncated or corrupted|not a pyro-genmod checkpoint"):
            load_checkpoint(checkpoint)


def test_corrupted_bytes_anywhere_give_a_clear_error(checkpoint):
    data = checkpoint.read_bytes()
    header = int.from_bytes(data[:8], "little")
    # a byte in the length prefix, the JSON header, our metadata, and three in the tensor data
    for position in (0, 9, header // 2, header + 8 + 5, len(data) // 2, len(data) - 1):
        corrupted = bytearray(data)
        corrupted[position] ^= 0x5A
        checkpoint.write_bytes(bytes(corrupted))
        with pytest.raises(pg.RunFolderError):
            load_checkpoint(checkpoint)
    checkpoint.write_bytes(data)
    load_checkpoint(checkpoint)  # the pristine bytes still load


def test_missing_checkpoint_and_wrong_version(tmp_path, checkpoint):
    with pytest.raises(pg.RunFolderError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    future = save_checkpoint(tmp_path / "future.safetensors", {"x": torch.zeros(1)}, {"version": 99})
    with pytest.raises(pg.RunFolderError, match="format version 99"):
        load_checkpoint(future)


def test_a_checkpoint_for_another_model_or_with_broken_metadata_is_refused(tmp_path, digits):
    from pyro_genmod.checkpoint import Checkpointer

    torch.manual_seed(0)
    small = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
    pg.fit(small, pg.create_guide("mean_field", small, hidden=[8]), digits, epochs=1, checkpoint=tmp_path, progress=False)
    big = pg.create_model("vae", digits, latent_dim=2, hidden=[16])
    with pytest.raises(pg.RunFolderError, match="does not fit this model"):
        pg.fit(big, pg.create_guide("mean_field", big, hidden=[16]), digits, epochs=1, checkpoint=tmp_path,
               resume=True, progress=False)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_FILE)  # valid tensors, but metadata missing a field
    del ckpt.meta["progress"]["epoch_loss"], ckpt.meta["sha256"]
    save_checkpoint(tmp_path / CHECKPOINT_FILE, ckpt.tensors, ckpt.meta)
    with pytest.raises(pg.RunFolderError, match="epoch_loss"):
        pg.fit(small, pg.create_guide("mean_field", small, hidden=[8]), digits, epochs=1, checkpoint=tmp_path,
               resume=True, progress=False)
    assert isinstance(Checkpointer(tmp_path).load().meta, dict)
