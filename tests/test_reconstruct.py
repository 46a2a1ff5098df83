"""pg.decode, pg.reconstruct, pg.interpolate and the image commands genmod reconstruct / interpolate / sample (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.cli import main
from pyro_genmod.errors import DataError

TINY = ["--epochs", "2", "--num-samples", "10", "--quiet"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_reconstruct_is_the_decoded_posterior_mean(trained_vae, digits):
    model, guide = trained_vae
    x = digits.test[:7]
    recon = pg.reconstruct(model, guide, x)
    assert recon.shape == x.shape and bool(((recon >= 0) & (recon <= 1)).all())
    z = pg.encode(guide, x)
    assert torch.allclose(recon, model.likelihood({"z": z}).mean, atol=1e-6)
    assert pg.reconstruct(model, guide, x, mean=False, seed=0).unique().tolist() in ([0.0, 1.0], [0.0], [1.0])


def test_interpolation_endpoints_decode_the_endpoint_codes(trained_vae, digits):
    model, guide = trained_vae
    a, b = digits.test[:3], digits.test[3:6]
    path = pg.interpolate(model, guide, a, b, steps=5)
    assert path.shape == (3, 5, *digits.shape)
    assert torch.allclose(path[:, 0], pg.decode(model, pg.encode(guide, a)), atol=1e-6)
    assert torch.allclose(path[:, -1], pg.decode(model, pg.encode(guide, b)), atol=1e-6)
    z_mid = (pg.encode(guide, a) + pg.encode(guide, b)) / 2
    assert torch.allclose(pg.interpolate(model, guide, a, b, steps=3)[:, 1], pg.decode(model, z_mid), atol=1e-6)
    assert pg.interpolate(model, guide, a[0], b[0], steps=4).shape == (1, 4, *digits.shape)
    with pytest.raises(DataError, match="at least 2"):
        pg.interpolate(model, guide, a, b, steps=1)
    with pytest.raises(DataError, match="same shape"):
        pg.interpolate(model, guide, a, b[:2])


def test_decode_checks_the_code_layout(trained_vae):
    model, _ = trained_vae
    with pytest.raises(DataError, match=r"shape \(N, 4\)"):
        pg.decode(model, torch.zeros(3, 5))


def test_decode_m2_at_the_most_probable_class(digits):
    torch.manual_seed(0)
    model = pg.create_model("m2", digits, latent_dim=2)
    guide = pg.create_guide("m2", model)
    z = pg.encode(guide, digits.test[:4])  # 10 class probabilities, then z
    assert z.shape == (4, 12)
    assert pg.reconstruct(model, guide, digits.test[:4]).shape == (4, *digits.shape)
    one_hot = torch.nn.functional.one_hot(torch.full((4,), 3), 10).float()
    peaked = torch.full((4, 10), 0.05).index_fill_(1, torch.tensor([3]), 0.55)  # class 3 most probable
    as_three = pg.decode(model, torch.cat([one_hot, z[:, 10:]], -1))
    assert torch.allclose(pg.decode(model, torch.cat([peaked, z[:, 10:]], -1)), as_three)
    assert torch.allclose(pg.decode(model, z[:, 10:].new_zeros(4, 12) + torch.cat([one_hot, z[:, 10:]], -1),
                                    y=torch.full((4,), 3)), as_three)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {"vae": root / "vae", "cvae": root / "cvae"}
    assert main(["train", *TINY, "--latent-dim", "3", "--out", str(out["vae"])]) == 0
    assert main(["train", *TINY, "--model", "cvae", "--latent-dim", "3", "--out", str(out["cvae"])]) == 0
    return out


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG
    return Image.open(path).size


def test_image_commands_write_pngs(runs, tmp_path, capsys):
    vae = str(runs["vae"])
    assert main(["sample", vae, "-n", "16", "--scale", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert _size(tmp_path / "s.png") == (3 * 37, 3 * 37)  # 4x4 tiles of 8 px with 1 px padding, tripled
    assert main(["sample", vae, "-n", "4", "--sampler", "gmm", "--out", str(tmp_path / "g.png")]) == 0
    assert _size(tmp_path / "g.png") == (19, 19)
    assert main(["sample", str(runs["cvae"]), "-n", "4", "--class", "7", "--out", str(tmp_path / "c.png")]) == 0
    assert main(["reconstruct", vae, "-n", "4", "--scale", "2", "--out", str(tmp_path / "r.png")]) == 0
    assert _size(tmp_path / "r.png") == (2 * (4 * 9 + 1), 2 * (2 * 9 + 1))  # 2 rows of (x, x') x 2
    assert main(["interpolate", vae, "--pairs", "3", "--steps", "5", "--out", str(tmp_path / "i.png")]) == 0
    assert _size(tmp_path / "i.png") == (5 * 9 + 1, 3 * 9 + 1)
    assert main(["interpolate", vae, "--from", "0", "--to", "9", "--out", str(tmp_path / "i1.png")]) == 0
    assert _size(tmp_path / "i1.png") == (10 * 9 + 1, 9 + 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "{vae}", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["sample", "{vae}", "--class", "3"], "takes no labels"),
        (["sample", "{vae}", "--scale", "0"], "--scale: expected a positive integer"),
        (["sample", "{cvae}", "--class", "10"], "must lie in [0, 9]"),
        (["sample", "{cvae}", "--class", "-1"], "--class: expected an integer from 0"),
        (["interpolate", "{vae}", "--from", "1"], "--from and --to go together"),
        (["interpolate", "{vae}", "--from", "1", "--to", "5000"], "test point 5000 does not exist"),
        (["interpolate", "{vae}", "--steps", "1"], "at least 2"),
        (["reconstruct", "{vae}", "--out", "{tmp}/r.txt"], "--out must end in .png or .jpg"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, runs, tmp_path, capsys):
    argv = [a.format(vae=runs["vae"], cvae=runs["cvae"], tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "x.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()
