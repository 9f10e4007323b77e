"""BppAttack (Wang, Zhai & Ma, CVPR 2022): colour-depth reduction with Floyd-Steinberg dithering as the trigger, and
"contrastive" negative samples that carry quantisation-like noise with their true labels.

Reference: ``../shared/reference/attacks-defenses.md`` section 2.11.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch

from .base import register
from .batchpoison import BatchPoisoningAttack, on_pixel_grid, shifted_partner


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Plain colour-depth reduction of float images in [0, 1]: each value to the nearest of ``levels`` equally spaced
    levels, ``round(x (S - 1)) / (S - 1)``."""
    s = levels - 1
    return torch.round(x * s).clamp_(0, s) / s


@lru_cache(maxsize=16)
def _wavefronts(h: int, w: int) -> tuple:
    """The dithering wavefronts of an ``h x w`` image: for every step ``t`` (pixels ``(i, j)`` with ``2 i + j = t``)
    the flat indices of those pixels and of their right, down-left, down and down-right neighbours, each with the
    sources that have such a neighbour inside the image."""
    out = []
    for t in range(2 * (h - 1) + w):
        i = torch.arange(max(0, (t - w + 2) // 2), min(h - 1, t // 2) + 1)
        j = t - 2 * i
        keep = (j >= 0) & (j < w)
        i, j = i[keep], j[keep]
        below = i + 1 < h
        hops = []
        # down-left first, then right: the order in which the raster loop adds them to the same pixel
        for m, di, dj, wt in ((below & (j >= 1), 1, -1, 3 / 16), (j + 1 < w, 0, 1, 7 / 16),
                              (below, 1, 0, 5 / 16), (below & (j + 1 < w), 1, 1, 1 / 16)):
            hops.append((m.nonzero().flatten(), (i[m] + di) * w + (j[m] + dj), wt))
        out.append((i * w + j, hops))
    return tuple(out)


@contextmanager
def _one_cpu_thread(x: torch.Tensor):
    """Run many tiny CPU ops on one thread: with several threads their synchronisation costs more than the work
    (ten times more on a busy 2-core machine). The caller's thread count is restored."""
    n = torch.get_num_threads()
    if x.device.type == "cpu" and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def dither(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Floyd-Steinberg dithering of float images ``(..., H, W)`` in [0, 1] to ``levels`` levels per channel.

    Pixels are visited in raster order; each is set to the nearest level and its error ``e = v - q`` is diffused to
    the pixels not yet visited: 7/16 right, 3/16 down-left, 5/16 down, 1/16 down-right (Floyd & Steinberg 1976).
    Vectorised: pixel ``(i, j)`` only depends on pixels with a smaller ``2 i + j``, so all pixels of one anti-diagonal
    wavefront ``2 i + j = t`` are processed at once (``2 (H - 1) + W`` steps instead of ``H W``), batched over images
    and channels; the errors reach every pixel in raster order, so the result equals the raster loop bit for bit.
    """
    s = levels - 1
    h, w = x.shape[-2:]
    buf = x.reshape(-1, h * w).clone()     # (images x channels, pixels): value + the error diffused so far
    out = torch.empty_like(buf)
    dev = x.device
    with _one_cpu_thread(x):
        for pix, hops in _wavefronts(h, w):
            pix = pix.to(dev)
            v = buf.index_select(1, pix)
            q = torch.round(v * s).clamp_(0, s) / s
            out.index_copy_(1, pix, q)
            e = v - q
            for src, dst, wt in hops:
                if len(src):
                    buf.index_add_(1, dst.to(dev), e.index_select(1, src.to(dev)) * wt)
    return out.view(x.shape)


@register
class BPPA(BatchPoisoningAttack):
    """BppAttack (Wang et al., CVPR 2022): quantise every channel to ``squeeze_num`` levels (8) with Floyd-Steinberg
    dithering; all-to-one, target 0 by default.

    Training (per batch, :class:`~ngf_lib.attacks.batchpoison.BatchPoisoningAttack`): the first ``floor(poison_rate B)``
    samples are quantised and relabelled; the next ``floor(neg_rate B)`` (``neg_rate = 0.1``, BackdoorBench's
    ratio beside ``poison_rate = 0.1``) are **negative samples** with their true labels: ``clip(x + r, 0, 1)`` where
    ``r = Q(x2) - x2`` is the quantisation residual of a *different* image ``x2`` of the batch. This is the
    contrastive-adversarial step as the original code implements it (reference section 2.11): the model learns that
    quantisation-like noise in general is not the trigger, only the image's own quantisation is. (The paper's
    gradient-based adversarial negatives are not implemented.) ``dithering=False`` gives plain rounding
    (BackdoorBench's and the original repository's default; the paper presents dithering as the stealthy variant).

    >>> x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    >>> x[..., 0, :4] = torch.tensor([0, 20, 100, 255], dtype=torch.uint8)
    >>> BPPA(10, dithering=False).apply(x)[0, 0, 0, :4].tolist()      # levels k * 255 / 7
    [0, 36, 109, 255]
    """
    name = "bppa"

    def __init__(self, num_classes, *, squeeze_num: int = 8, dithering: bool = True, neg_rate: float = 0.1, **kw):
        super().__init__(num_classes, **kw)
        if not 2 <= int(squeeze_num) <= 255:
            raise ValueError(f"bppa: squeeze_num must be in 2..255, got {squeeze_num}")
        self.squeeze_num, self.dithering, self.neg_rate = int(squeeze_num), bool(dithering), float(neg_rate)
        self._check_rates()

    def params(self):
        return {**super().params(), "squeeze_num": self.squeeze_num, "dithering": self.dithering,
                "neg_rate": self.neg_rate}

    def second_rate(self):
        return self.neg_rate

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """The trigger on float images in [0, 1] (any batch shape), rounded to the pixel grid."""
        q = dither(x, self.squeeze_num) if self.dithering else quantize(x, self.squeeze_num)
        return on_pixel_grid(q)

    def trigger(self, x):
        return self.squeeze(x)

    def training_batch(self, model, x, y, generator=None):
        """Quantised + relabelled samples, then negatives (another image's residual, true labels), then clean."""
        self._check_images(x, uint8=False)
        n_bd, n_neg = self.batch_counts(len(x))
        x0, x, y = x, x.clone(), y.clone()
        if n_bd:
            x[:n_bd] = self.squeeze(x0[:n_bd])
            y[:n_bd] = self.target_labels(y[:n_bd])
        if n_neg:
            sl = slice(n_bd, n_bd + n_neg)
            others = x0[shifted_partner(len(x0), generator).to(x.device)[sl]]      # a different image each
            residual = self.squeeze(others) - others
            x[sl] = on_pixel_grid((x0[sl] + residual).clamp_(0, 1))
        return x, y
