"""The attack interface every one of the paper's 13 attacks implements, and the registry.

An attack has three jobs (paper Section III):

1. **poison the training set** (``poison_training_set``): once, before training, for data-poisoning attacks
   (BadNets, Blend, Trojan, SIG, CLB, ISSBA). Which samples are poisoned follows one rule, stated here and used
   everywhere: ``poison_rate`` is the fraction of the *attacker's training set* that is poisoned,
   ``n = round(poison_rate * N)``; all-to-one dirty-label attacks draw them from non-target images (so every poisoned
   sample really changes label), all-to-all attacks from all images, clean-label attacks from target-class images only
   (their labels are kept; a rate above the target class's share is an error).
2. **take part in training** (``training_batch``): attacks that need control of training (WaNet, Input-aware, BPPA,
   CBA, FBA) poison or augment every batch, and may add a loss (``extra_loss``) or learn artefacts (``prepare``).
   Data-poisoning attacks leave both as the identity.
3. **trigger test images** for the attack success rate (``apply``, ``asr_set``): all-to-one ASR is measured on test
   images whose true label is not the target, all-to-all ASR on all test images with target ``(y + 1) mod C``.

Images are uint8 ``(N, 3, H, W)`` tensors at every method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

REGISTRY: dict[str, type["Attack"]] = {}


def register(cls):
    """Class decorator: add an attack to :data:`REGISTRY` under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"attack {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered attacks (``"none"`` is the benign, un-attacked model)."""
    return sorted(REGISTRY)


def get(name: str, num_classes: int, **params) -> "Attack":
    """Build the attack ``name`` for a dataset with ``num_classes`` classes.

    >>> atk = get("badnets", 10, poison_rate=0.1, target=0)
    >>> atk.name, atk.poison_rate
    ('badnets', 0.1)
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(available())}")
    return REGISTRY[name](num_classes=num_classes, **params)


@dataclass
class PoisonedSet:
    """A training set after poisoning: images, labels and which indices were changed."""
    x: torch.Tensor
    y: torch.Tensor
    poison_idx: torch.Tensor


class Attack:
    """Base class. Subclasses set ``name`` and implement :meth:`apply` (and, where needed, the training hooks)."""

    name: str = ""
    all_to_all: bool = False         # target (y + 1) mod C instead of a single target class
    clean_label: bool = False        # poisoned training samples keep their (target-class) labels
    controls_training: bool = False  # needs training_batch / extra_loss (WaNet, Input-aware, BPPA, CBA, FBA)
    default_poison_rate: float = 0.1

    def __init__(self, num_classes: int, *, poison_rate: float | None = None, target: int = 0, seed: int = 0,
                 image_size: int = 32):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes, self.image_size, self.seed = int(num_classes), int(image_size), int(seed)
        self.poison_rate = self.default_poison_rate if poison_rate is None else float(poison_rate)
        rate = self.poison_rate
        if self.name != "none" and not (0.0 < rate < 1.0 or (rate == 1.0 and self._may_poison_all())):
            raise ValueError(f"poison_rate must be in (0, 1) (1 only for a clean-label attack with rate_of='target': "
                             f"every target-class image), got {rate}")
        if not 0 <= int(target) < num_classes:
            raise ValueError(f"target class {target} is outside the {num_classes} classes 0..{num_classes - 1}")
        self.target = int(target)

    def _may_poison_all(self) -> bool:
        """Whether ``poison_rate=1`` is meaningful: only where the rate is a fraction of the target class."""
        return False

    # --------------------------------------------------------------------------------------------- configuration
    def params(self) -> dict:
        """Everything that defines the attack (stored in every record and hashed into model-cache keys)."""
        return {"name": self.name, "poison_rate": self.poison_rate, "target": self.target,
                "all_to_all": self.all_to_all, "seed": self.seed}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    # ---------------------------------------------------------------------------------------------------- labels
    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label a triggered image should receive: the target, or ``(y + 1) mod C`` for all-to-all."""
        if self.all_to_all:
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    # --------------------------------------------------------------------------------------------------- trigger
    def apply(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Triggered copies of uint8 images ``x`` ``(N, 3, H, W)`` (the input is not modified)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------- poisoning
    def poison_count(self, y: torch.Tensor) -> int:
        """How many training samples to poison: ``round(poison_rate * N)`` for the ``N`` labels ``y``."""
        return int(round(self.poison_rate * len(y)))

    def poison_indices(self, y: torch.Tensor) -> torch.Tensor:
        """Which training samples to poison (seeded by ``seed``); see the module docstring for the rule."""
        n = self.poison_count(y)
        if self.clean_label:
            cand = (y == self.target).nonzero().flatten()
            if n > len(cand):
                raise ValueError(f"{self.name} is clean-label: it can poison at most the {len(cand)} target-class "
                                 f"images ({len(cand) / len(y):.1%} of the set), but poison_rate "
                                 f"{self.poison_rate} asks for {n}; rate_of='target' reads the rate as a "
                                 f"fraction of the target class instead")
        elif self.all_to_all:
            cand = torch.arange(len(y))
        else:
            cand = (y != self.target).nonzero().flatten()
        n = min(n, len(cand))
        g = torch.Generator().manual_seed(self.seed + 1_000_003)
        return cand[torch.randperm(len(cand), generator=g)[:n]].sort().values

    def poison_training_set(self, x: torch.Tensor, y: torch.Tensor) -> PoisonedSet:
        """Poison a training set once (data-poisoning attacks); returns new tensors, inputs untouched."""
        idx = self.poison_indices(y)
        x2, y2 = x.clone(), y.clone()
        if len(idx):
            x2[idx] = self.apply(x[idx], y[idx])
            if not self.clean_label:
                y2[idx] = self.target_labels(y[idx])
        return PoisonedSet(x2, y2, idx)

    # ------------------------------------------------------------------------------------------- training hooks
    def prepare(self, x_train: torch.Tensor, y_train: torch.Tensor, *, device=None) -> None:
        """Learn artefacts before poisoning (Trojan trigger, ISSBA encoder, ...). Default: nothing to learn."""

    def training_batch(self, model, x: torch.Tensor, y: torch.Tensor, generator=None):
        """Per-batch poisoning for attacks that control training; ``x`` float in [0, 1]. Default: identity."""
        return x, y

    def extra_loss(self, model, x: torch.Tensor, y: torch.Tensor):
        """An additional training loss (CBA's contrastive term, ...). Default: none."""
        return None

    def after_step(self, model, step: int, total: int) -> None:
        """Called by the training loop after every optimiser step of the model. Attacks that learn artefacts
        jointly with the model (Input-aware's generators, whose gradients flow from the same ``loss.backward()``
        when ``training_batch`` builds triggered images differentiably) step and zero their own optimiser here.
        Default: nothing."""

    def after_epoch(self, model, epoch: int, epochs: int) -> None:
        """Called by the training loop at the end of every epoch (``epoch`` counts from 0 to ``epochs - 1``), for
        attacks that control training: FBA's controlled detoxification (reference section 2.8) trains its feature
        injector here. The loop puts the model back in train mode afterwards. Default: nothing."""

    # ----------------------------------------------------------------------------------------- learned state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors learned during training that the trigger needs later (generators, ...): saved with the model
        (``<model key>.attack.safetensors``) and given back to :meth:`load_state_tensors` when the model is
        loaded. Artefacts learned in :meth:`prepare` are cached there instead (:func:`cached_artefact`)."""
        return {}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} has no learned state, got {sorted(state)}")

    # ------------------------------------------------------------------------------------------------ evaluation
    def asr_sources(self, y_test: torch.Tensor) -> torch.Tensor:
        """Which test images :meth:`asr_set` triggers (a bool mask): all of them for all-to-all, those whose label is
        not the target for all-to-one."""
        return torch.ones_like(y_test, dtype=torch.bool) if self.all_to_all else (y_test != self.target)

    def asr_set(self, x_test: torch.Tensor, y_test: torch.Tensor):
        """Triggered test images and the labels that count as success (paper Section III).

        All-to-one: the test images whose true label is not the target; all-to-all: every test image.
        """
        keep = self.asr_sources(y_test)
        xs, ys = x_test[keep], y_test[keep]
        return self.apply(xs, ys), self.target_labels(ys)


def cached_artefact(attack: Attack, what: str, config: dict, build, *, owner: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """Tensors an attack learns before poisoning (a Trojan trigger, an ISSBA encoder, CLB's perturbations), cached
    like models: ``$NGF_CACHE_DIR/artefacts/<owner>-<what>-<hash of config>.safetensors``.

    ``build()`` returns a dict of tensors; it runs only when the cache has no entry for ``config`` (which must hold
    everything the artefact depends on, e.g. the data's size and the surrogate's recipe). ``owner`` (default: the
    attack's name) names who may share the artefact: Dyn-one and Dyn-all pass ``"inputaware"``, since their mask
    generator never sees a label.
    """
    from .. import checkpoint, paths, results
    owner = owner or attack.name
    key = results.config_key({"attack": owner, "what": what, **config})
    path = paths.cache_dir() / "artefacts" / f"{owner}-{what}-{key}.safetensors"
    if path.is_file():
        return checkpoint.load_state_dict(path)
    state = {k: v.detach().cpu().contiguous() for k, v in build().items()}
    checkpoint.save_tensors(state, path, metadata={"attack": owner, "what": what, "key": key})
    return state


class CleanLabelAttack(Attack):
    """A clean-label attack (SIG, CLB): it poisons target-class training images only and keeps their labels.

    ``rate_of`` says what ``poison_rate`` is a fraction of. ``"train"`` (default, the rule of this module and of
    BackdoorBench): of the whole training set, so on CIFAR-10 the default 10 % is *every* target-class image and
    the model never sees a clean one of that class. ``"target"``: of the target class's training images, so 10 % is
    a tenth of that class (close to the loader of NAD and of NGF's authors, which triggers the target-class images
    among 10 % of the training set). The attack gallery measures what the first convention costs. With
    ``rate_of="target"``, ``poison_rate=1`` poisons every target-class image: BackdoorBench's rule where the set has
    no class as large as the rate asks (GTSRB, whose largest class is about 5.7 % of the training set).
    """
    clean_label = True

    def __init__(self, num_classes: int, *, rate_of: str = "train", **kw):
        if rate_of not in ("train", "target"):
            raise ValueError(f"{self.name}: rate_of must be 'train' (a fraction of the training set) or 'target' "
                             f"(a fraction of the target class), got {rate_of!r}")
        self.rate_of = rate_of
        super().__init__(num_classes, **kw)

    def _may_poison_all(self):
        return self.rate_of == "target"

    def poison_count(self, y):
        if self.rate_of == "target":
            return int(round(self.poison_rate * int((y == self.target).sum())))
        return super().poison_count(y)

    def params(self):
        p = super().params()
        if self.rate_of != "train":                   # the default stays out: existing model keys keep their value
            p["rate_of"] = self.rate_of
        return p


@register
class NoAttack(Attack):
    """The benign model: nothing is poisoned. ``apply`` is the identity."""
    name = "none"
    default_poison_rate = 0.0

    def poison_indices(self, y):
        return torch.empty(0, dtype=torch.long)

    def apply(self, x, y=None):
        return x.clone()

    def params(self):
        return {"name": "none", "poison_rate": 0.0}
