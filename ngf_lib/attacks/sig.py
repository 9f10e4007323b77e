"""SIG (Barni et al., ICIP 2019): a clean-label backdoor whose trigger is a horizontal sinusoidal signal.

See ``../shared/reference/attacks-defenses.md`` section 2.4 (and section 0.4 for the poison rate).
"""
from __future__ import annotations

import math

import torch

from .base import CleanLabelAttack, register


def sinusoid(width: int, delta: float, freq: float) -> torch.Tensor:
    """The SIG signal ``v(j) = delta * sin(2 pi j freq / width)`` over the columns ``j``, shape ``(width,)`` float32."""
    j = torch.arange(width, dtype=torch.float64)
    return (delta * torch.sin(2 * math.pi * j * freq / width)).float()


@register
class SIG(CleanLabelAttack):
    """SIG: ``x' = clip(x + v)`` with ``v(i, j) = delta * sin(2 pi j f / W)``, the same for every row and channel.

    Defaults ``delta = 20``, ``f = 6`` (the value the NAD code base states, on whose data pipeline the NGF authors
    built; BackdoorBench uses ``delta = 40``), the same signal at training and test time. The signal is defined by
    the image width ``W``, so it scales to any image size (``f`` cycles across the image).

    **Clean-label** (the attack's point): only target-class training images receive the signal, their labels are
    kept. ``poison_rate`` follows the rule of :mod:`ngf_lib.attacks.base`: the poisoned images are
    ``round(poison_rate * N)`` target-class images, ``N`` the size of the attacker's training set, and a rate above the
    target class's share is an error. The default 0.1 is the paper's 10 % read as BackdoorBench reads it: on CIFAR-10
    (10 % of the images per class) it poisons every target-class image. On GTSRB no class holds 10 % of the images
    (class 0: 0.5 %), so the profiles read the rate per target class there and follow BackdoorBench on GTSRB: the
    whole class poisoned (the cap of its rule) at ``delta = 40`` (:data:`ngf_lib.profiles.DATASET_ATTACK_PARAMS`).
    (The NAD / NGF-authors' loader instead draws 10 % of all images and triggers only the target-class ones among
    them, about 10 % of the target class; ``rate_of="target"`` reads the rate that way, see
    :class:`~ngf_lib.attacks.base.CleanLabelAttack`.)

    >>> atk = SIG(10)
    >>> x = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    >>> out = atk.apply(x)
    >>> out[0, 0, 0, :4].tolist()             # 100 + 20 sin(2 pi j 6 / 32), j = 0..3
    [100, 118, 114, 92]
    >>> bool((out == out[:, :1, :1]).all())  # the same signal on every row and channel
    True
    """
    name = "sig"
    clean_label = True

    def __init__(self, num_classes, *, delta: float = 20.0, freq: float = 6.0, **kw):
        super().__init__(num_classes, **kw)
        if not 0.0 < delta <= 255.0:
            raise ValueError(f"delta (the signal's amplitude in pixel levels) must be in (0, 255], got {delta}")
        if not 0.0 < freq < self.image_size / 2:
            raise ValueError(f"freq must be in (0, {self.image_size / 2}) cycles per image width, got {freq}")
        self.delta, self.freq = float(delta), float(freq)
        self.signal = sinusoid(self.image_size, self.delta, self.freq)   # (W,)

    def params(self):
        return {**super().params(), "delta": self.delta, "freq": self.freq}

    def apply(self, x, y=None):
        if x.shape[-1] != self.image_size:
            raise ValueError(f"sig was built for images {self.image_size} pixels wide, got shape {tuple(x.shape)}; "
                             f"pass image_size= when building it")
        out = x.float() + self.signal.to(x.device)          # (N, 3, H, W) + (W,): every row and channel
        return out.round_().clamp_(0, 255).to(torch.uint8)
