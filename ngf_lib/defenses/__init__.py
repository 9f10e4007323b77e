"""Backdoor defenses: each takes a model and the defender's clean data and returns a purified copy.

Every defense has the same entry point ``defend(model, x_val, y_val, **config) -> model`` (the input model is never
modified) and is listed in :data:`REGISTRY`. Choices a defense makes (stopping points, thresholds, damping) use the
clean validation data only.

>>> from ngf_lib import defenses
>>> defenses.available()
['cls-adagrad', 'cls-adam', 'cls-rmsprop', 'cls-sgd', 'ngf', 'ngf-release']
"""
from __future__ import annotations

from functools import partial

from . import ngf, one_layer, release
from .ngf import NGF, purify
from .release import EKFAC, purify_release

REGISTRY = {"ngf": ngf.purify, "ngf-release": release.purify_release}
for _opt in one_layer.OPTIMIZERS:     # the paper's Cls.(SGD) (Table I) and the first-order rows of Table III
    REGISTRY[f"cls-{_opt}"] = partial(one_layer.finetune, optimizer=_opt)


def available() -> list[str]:
    return sorted(REGISTRY)


def get(name: str):
    """The ``defend(model, x_val, y_val, **config)`` function of defense ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown defense {name!r}; available: {', '.join(available())}")
    return REGISTRY[name]


__all__ = ["NGF", "EKFAC", "purify", "purify_release", "available", "get", "REGISTRY"]
