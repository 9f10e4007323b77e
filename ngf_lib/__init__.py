"""ngf_lib: Natural Gradient Fine-tuning (NGF) for backdoor removal, with the attacks, defenses and Hessian tools
of the ngf-book (Karim et al., "Efficient Backdoor Removal Through Natural Gradient Fine-tuning").

Modules, in pipeline order: ``data`` -> ``attacks`` -> ``train`` / ``zoo`` (backdoored models, cached) ->
``defenses`` -> ``metrics`` / ``hessian``; ``results`` (the store), ``profiles``, ``report``, ``chapters``.
"""
__version__ = "0.1.0"

from . import attacks, data, metrics, models, paths, profiles, results  # noqa: F401
