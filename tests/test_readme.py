"""The README's Python example runs as written, and its two commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2, "the README has two python blocks: swapping guides, and bringing your own model"
    return blocks


def test_readme_python_example_runs():
    namespace: dict = {}
    exec(compile(_blocks()[0], str(README), "exec"), namespace)
    scores = namespace["scores"]
    assert set(scores) == {"mean_field", "full_rank"}
    for ll in scores.values():
        assert ll.per_point.shape == (300,) and ll.mean > ll.elbo_mean
    assert namespace["x_new"].shape == (16, 1, 8, 8)
    assert namespace["z"].shape == (300, 8)


def test_readme_commands_match_ci():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = [block.strip() for block in bash[:2]]
    assert commands == ['pip install . && genmod train', 'pip install ".[test]" && pytest']
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_readme_bring_your_own_pyro_model_runs(tmp_path, monkeypatch):
    """The tutorial VAE block, on a small MNIST-layout set written here (found via $GENMOD_DATA_ROOT)."""
    import numpy as np
    import pyro

    from test_datasets import write_idx

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw, "train", rng.integers(10, size=10_200))  # mnist holds out 10,000 for validation
    write_idx(raw, "t10k", rng.integers(10, size=40))
    monkeypatch.setenv("GENMOD_DATA_ROOT", str(tmp_path))
    pyro.clear_param_store()
    namespace: dict = {}
    exec(compile(_blocks()[1], str(README), "exec"), namespace)
    own, with_iaf = namespace["own"], namespace["with_iaf"]
    assert own.per_point.shape == with_iaf.per_point.shape == (40,)
    assert np.isfinite(own.mean) and np.isfinite(with_iaf.mean)
    assert "latent" in namespace["report"].reference.posterior
    assert namespace["x_new"].shape == (16, 1, 28, 28)
    assert len(pyro.get_param_store()) == 0
