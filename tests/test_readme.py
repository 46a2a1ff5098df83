"""The README's Python example runs as written, and its two commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has exactly one python block"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
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
