"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible, smooth image warp as the trigger.

Poisoned per training batch (:class:`~ngf_lib.attacks.batchpoison.BatchPoisoningAttack`); reference section 2.9 of
``../shared/reference/attacks-defenses.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register
from .batchpoison import BatchPoisoningAttack, on_pixel_grid


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

    def trigger(self, x):
        return self.warp(x)

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
