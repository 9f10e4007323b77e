"""Backdoor attacks of the paper (Section VII-A), behind one interface (:class:`Attack`) and an explicit registry.

>>> from ngf_lib import attacks
>>> attacks.available()  # doctest: +NORMALIZE_WHITESPACE
['badnets', 'blend', 'bppa', 'cba', 'clb', 'dyn-all', 'dyn-one', 'fba', 'issba', 'none', 'sig', 'troj-all', 'troj-one',
 'wanet']
"""
from .base import REGISTRY, Attack, CleanLabelAttack, PoisonedSet, available, cached_artefact, get, register
from . import patch  # noqa: F401  (registers badnets, blend)
from .patch import BadNets, Blend
from . import sig, trojan, clb  # noqa: F401  (register sig, troj-one, troj-all, clb)
from . import batchpoison, wanet, inputaware, bppa  # noqa: F401  (register wanet, dyn-one, dyn-all, bppa)
from . import cba, fba, issba  # noqa: F401  (register cba, fba, issba)

__all__ = ["REGISTRY", "Attack", "CleanLabelAttack", "PoisonedSet", "available", "get", "register", "cached_artefact", "BadNets", "Blend"]
