"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible, smooth image warp as the trigger; and the per-batch poisoning
that WaNet, BPPA and Input-aware share (:class:`BatchPoisoningAttack`).

These attacks need control of training (``../shared/reference/attacks-defenses.md`` sections 2.5, 2.9 and 2.11): the
training set is left untouched and every training batch is poisoned on the fly, after the training loop's own
augmentation (:func:`ngf_lib.train.train` calls :meth:`~ngf_lib.attacks.base.Attack.training_batch`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Attack, register


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

    def _check_images(self, x: torch.Tensor, uint8: bool) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (N, 3, H, W), got {tuple(x.shape)}")
        if uint8 and x.dtype != torch.uint8:
            raise ValueError(f"{self.name}: apply() takes uint8 images, got {x.dtype}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} was built for {self.image_size}x{self.image_size} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}: pass image_size= when building the attack")


# ------------------------------------------------------------------------------------------------------------- WaNet

def identity_grid(size: int) -> torch.Tensor:
    """The sampling grid that leaves a ``size x size`` image unchanged: ``(size, size, 2)``, (x, y) in [-1, 1]."""
    t = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def warp_field(size: int, k: int = 4, generator=None) -> torch.Tensor:
    """WaNet's smooth random displacement field P ``(size, size, 2)``: a ``k x k x 2`` draw from U(-1, 1), divided by
    its mean absolute value, upsampled bicubically (corners aligned) to the image size (reference section 2.9)."""
    u = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    u = u / u.abs().mean()
    p = F.interpolate(u, size=(size, size), mode="bicubic", align_corners=True)   # (1, 2, H, W)
    return p[0].permute(1, 2, 0).contiguous()


@register
class WaNet(BatchPoisoningAttack):
    """WaNet (Nguyen & Tran, ICLR 2021): warp the image with a fixed smooth field; all-to-one, target 0 by default.

    The backdoor grid is ``G = clamp(G0 + s * P / H, -1, 1) * grid_rescale`` with ``G0`` the identity grid and ``P``
    the field of :func:`warp_field` (``k = 4``, ``s = 0.5``, ``grid_rescale = 1``; drawn once from ``seed``), and the
    trigger is ``x' = grid_sample(x, G)`` (bilinear, zero padding, corners aligned): a displacement of about
    ``s / 2`` pixel on average at any image size. **Noise mode**: ``cross_ratio * poison_rate`` of every batch
    (``cross_ratio = 2``: 20 % at the default 10 %) is warped with ``clamp(G + U(-1, 1) / H, -1, 1)``, a fresh random
    perturbation of ``G`` per sample, and keeps its true label, so that only the exact warp is the trigger.
    ``poison_rate`` is the per-batch share of poisoned samples (:class:`BatchPoisoningAttack`).

    >>> atk = WaNet(10)
    >>> x = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    >>> atk.apply(x).shape, bool((atk.apply(x)[..., 8:24, 8:24] == 128).all())   # a flat image stays flat inside
    (torch.Size([1, 3, 32, 32]), True)
    """
    name = "wanet"

    def __init__(self, num_classes, *, k: int = 4, s: float = 0.5, grid_rescale: float = 1.0,
                 cross_ratio: float = 2.0, **kw):
        super().__init__(num_classes, **kw)
        if not 2 <= int(k) <= self.image_size:
            raise ValueError(f"wanet: k must be in 2..{self.image_size}, got {k}")
        if not s > 0:
            raise ValueError(f"wanet: warp strength s must be positive, got {s}")
        if not 0 < grid_rescale <= 1:
            raise ValueError(f"wanet: grid_rescale must be in (0, 1], got {grid_rescale}")
        self.k, self.s, self.grid_rescale, self.cross_ratio = int(k), float(s), float(grid_rescale), float(cross_ratio)
        self._check_rates()
        g = torch.Generator().manual_seed(self.seed + 7_000_001)
        self.field = warp_field(self.image_size, self.k, g)                              # (H, W, 2)
        h = self.image_size
        self.grid = (identity_grid(h) + self.s * self.field / h).clamp(-1, 1) * self.grid_rescale  # (H, W, 2)

    def params(self):
        return {**super().params(), "k": self.k, "s": self.s, "grid_rescale": self.grid_rescale,
                "cross_ratio": self.cross_ratio}

    def second_rate(self):
        return self.cross_ratio * self.poison_rate

    def warp(self, x: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
        """Float images ``(N, 3, H, W)`` in [0, 1] warped by ``grid`` (``(H, W, 2)`` or ``(N, H, W, 2)``;
        default the backdoor grid), rounded to the pixel grid."""
        grid = (self.grid if grid is None else grid).to(x.device, x.dtype)
        if grid.ndim == 3:
            grid = grid.expand(len(x), *grid.shape)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return on_pixel_grid(out)

    def noise_grids(self, n: int, generator=None) -> torch.Tensor:
        """``n`` noise-mode grids ``(n, H, W, 2)``: the backdoor grid plus U(-1, 1) / H per sample, clamped."""
        h = self.image_size
        u = torch.rand(n, h, h, 2, generator=generator) * 2 - 1
        return (self.grid + u / h).clamp(-1, 1)

    def apply(self, x, y=None):
        self._check_images(x, uint8=True)
        if len(x) == 0:
            return x.clone()
        return torch.cat([to_uint8(self.warp(x[i:i + 512].float() / 255.0)) for i in range(0, len(x), 512)])

    def training_batch(self, model, x, y, generator=None):
        """First ``floor(poison_rate B)`` samples warped and relabelled, next ``floor(cross_ratio poison_rate B)``
        warped with noise grids (true labels), rest clean. ``x`` float in [0, 1]; returns new tensors."""
        self._check_images(x, uint8=False)
        n_bd, n_noise = self.batch_counts(len(x))
        x, y = x.clone(), y.clone()
        if n_bd:
            x[:n_bd] = self.warp(x[:n_bd])
            y[:n_bd] = self.target_labels(y[:n_bd])
        if n_noise:
            sl = slice(n_bd, n_bd + n_noise)
            x[sl] = self.warp(x[sl], self.noise_grids(n_noise, generator))
        return x, y
