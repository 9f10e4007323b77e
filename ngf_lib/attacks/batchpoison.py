"""The per-batch poisoning that WaNet, BPPA and Input-aware share (:class:`BatchPoisoningAttack`).

These attacks need control of training (``../shared/reference/attacks-defenses.md`` sections 2.5, 2.9 and 2.11): the
training set is left untouched and every training batch is poisoned on the fly, after the training loop's own
augmentation (:func:`ngf_lib.train.train` calls :meth:`~ngf_lib.attacks.base.Attack.training_batch`). Each subclass
writes its trigger once, on float images (:meth:`BatchPoisoningAttack.trigger`); the uint8 test-time
:meth:`~BatchPoisoningAttack.apply` is built from it here, so the trigger a model learns and the one it is tested with
are the same function.
"""
from __future__ import annotations

import math

import torch

from ..data import to_float
from .base import Attack


def on_pixel_grid(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] rounded to the 1/255 grid: a triggered training image is then exactly what
    :meth:`Attack.apply` gives for the same uint8 image, so the model learns the trigger it is tested with."""
    return x.mul(255.0).round_().clamp_(0, 255).div_(255.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (rounded)."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def shifted_partner(n: int, generator=None) -> torch.Tensor:
    """Indices ``(i + k) mod n`` for one random ``k`` in ``1..n-1``: every sample gets a *different* partner sample
    of the same batch (the source of a cross trigger or of a negative residual). ``n = 1`` gives ``[0]``."""
    if n < 2:
        return torch.zeros(n, dtype=torch.long)
    k = int(torch.randint(1, n, (1,), generator=generator))
    return (torch.arange(n) + k) % n


class BatchPoisoningAttack(Attack):
    """Base of the attacks that poison every training batch instead of the training set (WaNet, BPPA, Input-aware).

    **What** ``poison_rate`` **means here.** The module rule of :mod:`ngf_lib.attacks.base` (a fraction of the
    training *set*, drawn once) does not apply: the training set is left untouched (:meth:`poison_indices` is empty,
    so ``poison_training_set`` returns the clean data), and in every training batch of ``B`` images the first
    ``n = floor(poison_rate * B)`` samples are triggered and relabelled (all-to-one: the target, whatever their class,
    as in the original code; all-to-all: ``(y + 1) mod C``). The next ``floor(second_rate * B)`` samples are the
    attack's second kind of sample (WaNet's noise warps, Input-aware's cross triggers, BPPA's negatives), which keep
    their **true** labels; the rest of the batch stays clean. The batch is shuffled by the training loop, so "first"
    is a random choice. With B = 128 and poison_rate 0.1, 12 samples of every batch are poisoned (9.4 %).

    Triggers are inserted on the float batch *after* the loop's augmentation (random crop, flip), so the trigger sits
    at a fixed place in image coordinates, as at test time. The original code bases apply their own augmentation
    after the trigger (crop, rotation); we do not.
    """
    controls_training = True
    poisons_per_batch = True     # poison_rate is the per-batch share (see above); the training set stays clean
    learns_trigger = False       # True where the trigger is learned while training (Input-aware's generators)

    def __init__(self, num_classes, **kw):
        super().__init__(num_classes, **kw)
        if self.image_size < 8:
            raise ValueError(f"{self.name}: image_size must be at least 8, got {self.image_size}")

    def second_rate(self) -> float:
        """Share of every batch used for the attack's second kind of sample (true labels)."""
        return 0.0

    def _check_rates(self):
        if self.second_rate() < 0 or self.poison_rate + self.second_rate() > 1.0:
            raise ValueError(f"{self.name}: poison_rate {self.poison_rate} + {self.second_rate()} (noise / cross / "
                             f"negative share) must stay within one batch (at most 1)")

    def batch_counts(self, batch_size: int) -> tuple[int, int]:
        """``(n_poisoned, n_second)`` for a batch of ``batch_size``: ``floor(rate * B)`` each (as the original code)."""
        n_bd = int(math.floor(self.poison_rate * batch_size + 1e-9))
        n_second = int(math.floor(self.second_rate() * batch_size + 1e-9))
        return n_bd, min(n_second, batch_size - n_bd)

    def poison_indices(self, y: torch.Tensor) -> torch.Tensor:
        """Empty: these attacks poison batches during training, never the stored training set."""
        return torch.empty(0, dtype=torch.long)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        """The trigger on float images ``(N, 3, H, W)`` in [0, 1], on :meth:`trigger_device`; returns float images
        rounded to the pixel grid (:func:`on_pixel_grid`). Each subclass defines it."""
        raise NotImplementedError

    def trigger_device(self, x: torch.Tensor) -> torch.device:
        """Where :meth:`trigger` runs for test images ``x`` (the images' own device unless the attack holds networks)."""
        return x.device

    @torch.no_grad()
    def apply(self, x, y=None):
        """uint8 images -> triggered uint8 images, by :meth:`trigger` in chunks of 512 (the sample-specific trigger
        where the attack has one)."""
        self._check_images(x, uint8=True)
        dev = self.trigger_device(x)
        if len(x) == 0:
            return x.clone()
        return torch.cat([to_uint8(self.trigger(to_float(x[i:i + 512].to(dev)))).to(x.device)
                          for i in range(0, len(x), 512)])

    def _check_images(self, x: torch.Tensor, uint8: bool) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (N, 3, H, W), got {tuple(x.shape)}")
        if uint8 and x.dtype != torch.uint8:
            raise ValueError(f"{self.name}: apply() takes uint8 images, got {x.dtype}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} was built for {self.image_size}x{self.image_size} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}: pass image_size= when building the attack")
