"""Variational families q(z|x), one per file; each registers itself with ``@register_guide``.

Installed as ``pyro_genmod.guides`` (see ``package-dir`` in pyproject.toml).
"""
