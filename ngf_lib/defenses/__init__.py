"""Backdoor defenses: each takes a model and the defender's clean data and returns a purified copy.

Every defense has the same entry point ``defend(model, x_val, y_val, **config) -> model`` (the input model is never
modified) and is listed in :data:`REGISTRY`. Choices a defense makes (stopping points, thresholds, damping) use the
clean validation data only.

>>> from ngf_lib import defenses
>>> defenses.available()
['anp', 'awm', 'cls-adagrad', 'cls-adam', 'cls-rmsprop', 'cls-sam', 'cls-sgd', 'cls-sgd-long', 'fp', 'ft', 'ft-backbone', 'i-bau', 'mcr', 'nad', 'ngf', 'ngf-all', 'ngf-noreg', 'ngf-release', 'sam-all']
"""
from __future__ import annotations

from functools import partial

from . import anp, awm, fp, ft, ibau, mcr, nad, ngf, ngf_all, one_layer, release
from .ngf import NGF, purify
from .release import EKFAC, purify_release

REGISTRY = {
    "ngf": ngf.purify,                                       # the paper's Algorithm 1
    "ngf-noreg": partial(ngf.purify, eta=0.0),               # Table VI: NGF without the regulariser of eq. 3
    "ngf-release": release.purify_release,                   # the authors' earlier release (chapter 2)
    "ngf-all": ngf_all.ngf_all_layers,                       # Table V: NGF on all layers (K-FAC per layer)
    "ft": ft.finetune,                                       # vanilla fine-tuning of all layers (Table II)
    "ft-backbone": partial(ft.finetune, part="backbone"),   # Table I: the CNN backbone fine-tuned, classifier fixed
    "sam-all": partial(ft.finetune, sam_rho=0.05),           # Table V: SAM on all layers
    "fp": fp.fine_prune,                                     # Fine-Pruning (supplement)
    "nad": nad.nad,                                          # Neural Attention Distillation (supplement)
    "anp": anp.anp,                                          # Adversarial Neuron Pruning (Table II)
    "awm": awm.awm,                                          # Adversarial Weight Masking (Table II)
    "mcr": mcr.mcr,                                          # Mode Connectivity Repair (supplement)
    "i-bau": ibau.ibau,                                      # implicit adversarial unlearning (Table II; 5 % data)
}
for _opt in one_layer.OPTIMIZERS:     # the paper's Cls.(SGD) (Table I) and the one-layer rows of Table III
    REGISTRY[f"cls-{_opt}"] = partial(one_layer.finetune, optimizer=_opt)
# Table VI: SGD-Long, 2,500 epochs; the schedule stretched with the run (x0.1 every 40 % of it, as 40 of 100 epochs)
REGISTRY["cls-sgd-long"] = partial(one_layer.finetune, optimizer="sgd", epochs=2500, lr_step=1000)


def available() -> list[str]:
    return sorted(REGISTRY)


def get(name: str):
    """The ``defend(model, x_val, y_val, **config)`` function of defense ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown defense {name!r}; available: {', '.join(available())}")
    return REGISTRY[name]


__all__ = ["NGF", "EKFAC", "purify", "purify_release", "available", "get", "REGISTRY"]
