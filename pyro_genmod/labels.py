"""Labels during training: which models and guides take ``y``, and feeding each minibatch's labels.

A model with ``uses_labels = True`` (``cvae``, ``m2``) gets ``y=data.train_labels`` for each
minibatch from :func:`~pyro_genmod.train.fit`, and so does its guide when its ``forward`` has a
``y`` argument (:class:`LabelFeed`); guides without one see x alone.
"""

from __future__ import annotations

import inspect

from torch import Tensor

from .errors import DataError

__all__ = ["LabelFeed", "takes_labels", "with_labels", "training_labels"]


def takes_labels(fn) -> bool:
    """Whether a model or guide accepts labels: a label-using model, or a ``forward`` with ``y``."""
    if getattr(fn, "uses_labels", False):
        return True
    forward = getattr(fn, "forward", fn)
    try:
        return "y" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


class LabelFeed:
    """The labels of the current minibatch, passed as ``y`` by the callables :meth:`bind` makes.

    One feed per fit: the bound model and guide keep their identity across steps, and each step
    sets :attr:`y`. Rows of ``y`` follow rows of ``x``: a call on the first k rows of the
    batch gets the first k labels.
    """

    def __init__(self, y: Tensor | None = None):
        self.y = y

    def bind(self, fn):
        """``fn`` taking its labels from this feed if it takes labels (:func:`takes_labels`), else ``fn``."""
        return _Labelled(fn, self) if takes_labels(fn) else fn


class _Labelled:
    def __init__(self, fn, feed: LabelFeed):
        self.fn, self.feed = fn, feed
        self.max_plate_nesting = getattr(fn, "max_plate_nesting", 1)  # objectives read it

    def forward(self, x: Tensor, *args, **kwargs):
        y = self.feed.y
        return self.fn(x, *args, y=None if y is None else y[: x.shape[0]], **kwargs)

    __call__ = forward


def with_labels(fn, y: Tensor | None):
    """``fn`` with ``y`` bound when it takes labels (see :func:`takes_labels`), else ``fn``."""
    return LabelFeed(y).bind(fn) if y is not None else fn


def training_labels(model, data) -> Tensor | None:
    """``data.train_labels`` checked for a label-using model; ``None`` for any other model."""
    if not getattr(model, "uses_labels", False):
        return None
    if data.train_labels is None:
        raise DataError(
            f"model '{model.registry_name}' learns from labels but dataset '{data.name}' has "
            f"none; use a dataset with labels (digits, mnist)"
        )
    model.validate_labels(data.train_labels, data.train.shape[0], "training labels")
    return data.train_labels
