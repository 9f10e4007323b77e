"""MCR: Mode Connectivity Repair (Zhao et al., ICLR 2020), a supplementary column of the paper's Table II.

Two end-points are joined by a quadratic Bezier curve ``theta(t) = (1-t)^2 theta_A + 2t(1-t) theta_M + t^2 theta_B``
(``../shared/reference/attacks-defenses.md`` 4.6): ``theta_A`` the backdoored model, ``theta_B`` the backdoored
model fine-tuned on the clean data (FT's recipe, ``endpoint_epochs``), the bend ``theta_M`` started at their midpoint
and trained (end-points fixed) by drawing ``t ~ U(0, 1)`` for every batch and minimising the cross-entropy of
``f_theta(t)`` on the clean data. The returned model is ``theta(t)`` at the chosen ``t`` with its BatchNorm running
statistics recomputed on the clean data at that point of the curve.

Defaults are BackdoorBench's (the reference the supplement's numbers are comparable with): end-point 100 epochs of FT,
curve 100 epochs, SGD lr 3e-5, momentum 0.9, weight decay 5e-4, cosine, batch 128, **t = 0.1**. ``t`` is a fixed
parameter, never chosen on test data; the curve's clean validation accuracy at ``t = 0, 0.1, ..., 1`` is in
``returned_model.ngf_history["val_acc_curve"]`` so a reader sees what the defender could see.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from ..data import augment as augment_images
from ..data import to_float
from ..metrics import accuracy
from .ft import clean_copy, finetune_all


def bezier(t: float, a: dict, m: dict, b: dict) -> dict:
    """The quadratic Bezier point ``(1-t)^2 a + 2t(1-t) m + t^2 b`` of three parameter dicts."""
    return {k: (1 - t) ** 2 * a[k] + 2 * t * (1 - t) * m[k] + t ** 2 * b[k] for k in a}


@torch.no_grad()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> None:
    """Replace every BatchNorm layer's running statistics by their averages over ``x`` (in place), each batch weighted
    by its size (so the running mean is exactly the mean over ``x``)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        for m in bns:                                   # running <- running + n/(seen+n) (batch - running)
            m.momentum = len(xb) / (seen + len(xb))
        model(to_float(xb))
        seen += len(xb)
    for m, mom in saved:
        m.momentum = mom
    model.eval()


def curve_point(model: nn.Module, t: float, a: dict, m: dict, b: dict, x=None) -> nn.Module:
    """A copy of ``model`` holding ``theta(t)``; BatchNorm statistics recomputed on ``x`` when given."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for k, v in bezier(t, a, m, b).items():
            out.get_parameter(k).copy_(v)
    if x is not None:
        recompute_bn(out, x)
    return out.eval()


def mcr(model, x, y=None, *, t: float = 0.1, endpoint_epochs: int = 100, epochs: int = 100, lr: float = 3e-5,
        momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 128, augment: bool = True,
        flip: bool = True, device=None, seed: int = 0, progress: bool = False) -> nn.Module:
    """Mode Connectivity Repair of ``model`` (module docstring); ``model`` is untouched."""
    if not 0 <= t <= 1:
        raise ValueError(f"t (the point on the curve) must be in [0, 1], got {t}")
    t0 = time.time()
    a_model, x, y, dev = clean_copy(model, x, y, device)
    b_model = copy.deepcopy(a_model)
    finetune_all(b_model, x, y, epochs=endpoint_epochs, batch_size=batch_size, augment=augment, flip=flip,
                 seed=seed, desc="MCR end-point", progress=progress)
    a = {k: v.detach().clone() for k, v in a_model.named_parameters()}
    b = {k: v.detach().clone() for k, v in b_model.named_parameters()}
    bend = {k: ((a[k] + b[k]) / 2).requires_grad_(True) for k in a}
    opt = torch.optim.SGD(list(bend.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    work = copy.deepcopy(a_model).train()
    buffers = {k: v.clone() for k, v in work.named_buffers()}     # batch statistics while the curve trains
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    total, step, hist = epochs * math.ceil(n / batch_size), 0, []
    for _ in tqdm(range(epochs), desc="MCR curve", disable=not progress, leave=False):
        perm = torch.randperm(n, generator=g).to(y.device)
        tot = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb = augment_images(x[idx], flip=flip, generator=g) if augment else x[idx]
            tb = float(torch.rand(1, generator=g))
            loss = F.cross_entropy(functional_call(work, {**bezier(tb, a, bend, b), **buffers}, (to_float(xb),)),
                                   y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"MCR curve training diverged (loss {loss.item()}); lower lr")
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += loss.item() * len(idx)
        hist.append(tot / n)
    m = {k: v.detach() for k, v in bend.items()}
    out = curve_point(a_model, t, a, m, b, x)
    curve = {round(s / 10, 1): accuracy(curve_point(a_model, s / 10, a, m, b, x), x, y) for s in range(11)}
    out.ngf_history = {"loss": hist, "t": t, "val_acc_curve": curve, "time_s": time.time() - t0}
    for p in out.parameters():
        p.grad = None
    return out
