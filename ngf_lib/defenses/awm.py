"""AWM: Adversarial Weight Masking (Chai & Chen, NeurIPS 2022), a column of the paper's Table II.

Every convolution weight ``W`` gets an element-wise soft mask ``M`` in [0, 1] of its shape (start 1); the network
runs with ``W * M`` (the linear classifier is not masked). For ``epochs`` outer rounds (``../shared/reference/
attacks-defenses.md`` 4.4):

1. **Trigger recovery**: a universal perturbation ``Delta`` (one image, start 0), one pass over the clean data, SGD
   (lr 10) on ``-CE(f_M(x + Delta), y_hat)`` with ``y_hat`` the masked model's own predictions; then ``Delta`` is
   rescaled to L1 norm at most ``trigger_norm`` (1 000).
2. **Mask update**: ``inner * floor(n / batch_size)`` batches drawn with replacement, Adam (lr 1e-2) on
   ``alpha CE(f_M(x), y) + (1 - alpha) CE(f_M(clip(x + Delta, 0, 1)), y) + gamma ||M||_1``, masks clipped to [0, 1].

Defaults are AWM's (``epochs = 20``, ``inner = 5``, ``alpha = 0.9``, ``gamma = 1e-8``, batch 128). The returned
model's convolution weights are ``W * M`` (the soft mask folded in). Nothing is selected: the masks after the last
round are used. BatchNorm stays in eval mode (our choice; the description leaves it open: the backdoored model's
running statistics are kept, so only the masks change what the network computes).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from ..data import to_float
from .ft import clean_copy
from .ibau import universal_perturbation


def conv_weights(model: nn.Module) -> list[str]:
    """Names of every convolution weight (the parameters AWM masks)."""
    out = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not out:
        raise ValueError("AWM masks convolution weights, and this model has no convolution layer")
    return out


def awm(model, x, y=None, *, epochs: int = 20, inner: int = 5, alpha: float = 0.9, gamma: float = 1e-8,
        lr: float = 1e-2, trigger_lr: float = 10.0, trigger_norm: float = 1000.0, batch_size: int = 128,
        device=None, seed: int = 0, progress: bool = False) -> nn.Module:
    """Adversarial Weight Masking of a copy of ``model`` (module docstring); ``model`` is untouched."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if epochs < 1 or inner < 1:
        raise ValueError(f"need epochs >= 1 and inner >= 1, got epochs={epochs}, inner={inner}")
    t0 = time.time()
    out, x, y, dev = clean_copy(model, x, y, device)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    names = conv_weights(out)
    params = dict(out.named_parameters())
    masks = {n: torch.ones_like(params[n], requires_grad=True) for n in names}
    opt = torch.optim.Adam(list(masks.values()), lr=lr)
    xf = to_float(x)
    g = torch.Generator().manual_seed(seed)

    def f(inp):
        return functional_call(out, {n: params[n] * masks[n] for n in names}, (inp,))

    steps = inner * max(1, len(y) // batch_size)
    hist = []
    for _ in tqdm(range(epochs), desc="AWM", disable=not progress, leave=False):
        delta = universal_perturbation(f, xf, lr=trigger_lr, reg=0.0, batch_size=batch_size,   # 1. trigger
                                       max_norm=trigger_norm, p=1)
        tot = 0.0
        for _ in range(steps):                                        # 2. mask update
            idx = torch.randint(len(y), (batch_size,), generator=g).to(dev)
            xb, yb = xf[idx], y[idx]
            loss = alpha * F.cross_entropy(f(xb), yb) + (1 - alpha) * F.cross_entropy(f((xb + delta).clamp(0, 1)), yb)
            loss = loss + gamma * sum(m.abs().sum() for m in masks.values())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"AWM diverged (loss {loss.item()}); lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for m in masks.values():
                    m.clamp_(0, 1)
            tot += loss.item()
        hist.append({"loss": tot / steps, "trigger_l1": float(delta.abs().sum())})
    with torch.no_grad():
        for n in names:
            params[n].mul_(masks[n])
    for p in out.parameters():
        p.requires_grad_(True)
    n_el = sum(m.numel() for m in masks.values())
    masks = {k: v.detach() for k, v in masks.items()}
    out.ngf_history = {"epochs": hist, "mask_mean": float(sum(m.sum() for m in masks.values()) / n_el),
                       "mask_zero_frac": float(sum((m == 0).sum() for m in masks.values()) / n_el),
                       "time_s": time.time() - t0}
    return out
