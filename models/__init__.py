"""Generative models p(z) p(x|z), one per file; each registers itself with ``@register_model``.

Installed as ``pyro_genmod.models`` (see ``package-dir`` in pyproject.toml).
"""
