"""Backdoor attacks of the paper (Section VII-A), behind one interface (:class:`Attack`) and an explicit registry.

>>> from ngf_lib import attacks
>>> attacks.available()
['badnets', 'blend', 'none']
"""
from .base import REGISTRY, Attack, PoisonedSet, available, cached_artefact, get, register
from . import patch  # noqa: F401  (registers badnets, blend)
from .patch import BadNets, Blend

__all__ = ["REGISTRY", "Attack", "PoisonedSet", "available", "get", "register", "cached_artefact", "BadNets", "Blend"]
