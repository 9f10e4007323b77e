"""Static image-space triggers: BadNets (a corner patch) and Blend (alpha blending with a fixed image).

Both are data-poisoning attacks: the training set is poisoned once, in uint8 pixel space, before augmentation
(see ``../shared/reference/attacks-defenses.md`` sections 2.1 and 2.2).
"""
from __future__ import annotations

import torch

from .base import Attack, register


@register
class BadNets(Attack):
    """BadNets (Gu et al. 2019): a 3x3 white square in the bottom-right corner, all-to-one (target 0 by default).

    Pixels at rows/cols ``size`` from the bottom-right border are set to 255 in every channel (BackdoorBench's
    trigger). ``patch_size`` changes the square's side.

    >>> atk = BadNets(10)
    >>> x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    >>> int(atk.apply(x)[0, :, -3:, -3:].min()), int(atk.apply(x)[0, :, :-3].max())
    (255, 0)
    """
    name = "badnets"

    def __init__(self, num_classes, *, patch_size: int = 3, **kw):
        super().__init__(num_classes, **kw)
        if not 0 < patch_size <= self.image_size:
            raise ValueError(f"patch_size must be in 1..{self.image_size}, got {patch_size}")
        self.patch_size = int(patch_size)

    def params(self):
        return {**super().params(), "patch_size": self.patch_size}

    def apply(self, x, y=None):
        out = x.clone()
        out[..., -self.patch_size:, -self.patch_size:] = 255
        return out


def uniform_noise_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """A fixed-seed i.i.d. uniform {0..255} image ``(3, size, size)`` uint8: the NGF authors' Blend trigger."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.int64).to(torch.uint8)


@register
class Blend(Attack):
    """Blend (Chen et al. 2017): ``x' = (1 - alpha) x + alpha T``, all-to-one, ``alpha = 0.2`` at train and test.

    Asset-free trigger: ``T`` is a fixed-seed uniform-noise image (what the NGF authors' own pipeline uses, in place
    of BackdoorBench's Hello Kitty picture); ``trigger_seed`` picks it.
    """
    name = "blend"

    def __init__(self, num_classes, *, alpha: float = 0.2, trigger_seed: int = 0, **kw):
        super().__init__(num_classes, **kw)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha, self.trigger_seed = float(alpha), int(trigger_seed)
        self.pattern = uniform_noise_image(self.image_size, self.trigger_seed)

    def params(self):
        return {**super().params(), "alpha": self.alpha, "trigger_seed": self.trigger_seed}

    def apply(self, x, y=None):
        t = self.pattern.to(x.device).float()
        out = (1.0 - self.alpha) * x.float() + self.alpha * t
        return out.round_().clamp_(0, 255).to(torch.uint8)
