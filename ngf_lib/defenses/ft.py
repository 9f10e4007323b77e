"""Vanilla fine-tuning of all layers (FT, paper Table II; Table I's "Full-Net") and the loop other defenses reuse.

The paper: all parameters fine-tuned on the 1 % clean validation set, 100 epochs, lr 0.01 (Section VII-B). The
optimiser and schedule are not given; we use SGD (momentum 0.9, weight decay 5e-4) with a cosine schedule and random
crop + flip, batch 128: BackdoorBench's `ft` recipe (``../shared/reference/attacks-defenses.md`` 4.1) at the paper's
data budget. Nothing is selected: the model after the last epoch is returned.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import augment as augment_images
from ..data import to_float
from ..models import classifier
from .ngf import _check_inputs, as_tensors


def clean_copy(model, x, y=None, device=None):
    """Shared set-up of the all-layer defenses: validate the clean data, copy the model onto ``device``.

    Returns ``(copy, x, y, device)`` with ``x`` (uint8 or float images) and ``y`` on the device.
    """
    x, y = as_tensors(x, y)
    _, y = _check_inputs(model, x, y)
    out = copy.deepcopy(model)
    dev = torch.device(device) if device is not None else next(out.parameters()).device
    out.to(dev)
    for p in out.parameters():
        p.requires_grad_(True)
    return out, x.to(dev), y.to(dev), dev


def finetune_all(model, x, y, *, epochs: int = 100, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, batch_size: int = 128, schedule: str = "cosine", augment: bool = True,
                 flip: bool = True, seed: int = 0, params=None, loss_fn=None, sam_rho: float = 0.0,
                 after_step=None, desc: str = "fine-tune", progress: bool = False) -> list[float]:
    """Train ``model`` in place on clean ``(x, y)`` (already on its device); returns the mean loss per epoch.

    ``params``: the parameters to train (default: all); ``loss_fn(model, xb, yb) -> loss`` replaces cross-entropy
    (NAD adds its attention terms this way). ``schedule``: ``"cosine"`` (per step, to 0) or ``"constant"``.
    ``sam_rho > 0``: sharpness-aware minimisation (Foret et al. 2021): the gradient is taken at
    ``w + rho g / ||g||`` (one extra forward/backward per step). ``after_step(model)``: called after every update
    (Fine-Pruning keeps its pruned weights at zero this way).
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    params = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    per_epoch = math.ceil(n / batch_size)
    total, step, hist = epochs * per_epoch, 0, []
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(n, generator=g).to(y.device)
        tot = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb = augment_images(x[idx], flip=flip, generator=g) if augment else x[idx]
            xb, yb = to_float(xb), y[idx]
            for group in opt.param_groups:
                group["lr"] = lr * (0.5 * (1 + math.cos(math.pi * step / total)) if schedule == "cosine" else 1.0)
            def closure():
                return loss_fn(model, xb, yb) if loss_fn is not None else F.cross_entropy(model(xb), yb)
            loss = closure()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc} diverged (loss {loss.item()}); lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sam_rho > 0:
                sam_gradient(params, closure, sam_rho)
            opt.step()
            if after_step is not None:
                after_step(model)
            step += 1
            tot += loss.item() * len(yb)
        hist.append(tot / n)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return hist


def sam_gradient(params, closure, rho: float) -> None:
    """Replace the ``.grad`` of ``params`` (at ``w``) by the gradient at ``w + rho g / ||g||`` (SAM's ascent step,
    the norm over all of ``params``), and put the weights back."""
    ps = [p for p in params if p.grad is not None]
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in ps))
    if norm == 0:
        return
    with torch.no_grad():
        eps = [rho * p.grad / norm for p in ps]
        for p, e in zip(ps, eps):
            p.add_(e)
    for p in ps:
        p.grad = None
    closure().backward()
    with torch.no_grad():
        for p, e in zip(ps, eps):
            p.sub_(e)


def finetune(model, x, y=None, *, epochs: int = 100, lr: float = 0.01, momentum: float = 0.9,
             weight_decay: float = 5e-4, batch_size: int = 128, augment: bool = True, flip: bool = True,
             sam_rho: float = 0.0, part: str = "all", device=None, seed: int = 0,
             progress: bool = False) -> torch.nn.Module:
    """FT: fine-tune every layer of a copy of ``model`` on the clean data (module docstring); ``model`` is untouched.

    ``flip=False`` for datasets whose images must not be mirrored (GTSRB). ``sam_rho > 0``: SAM on all layers
    (paper Table V; registered as ``sam-all`` with rho 0.05, the value of the authors' own SAM class).
    ``part="backbone"``: the classifier stays fixed and every other layer is fine-tuned (Table I's "CNN-Bbone." row;
    registered as ``ft-backbone``).
    """
    if part not in ("all", "backbone"):
        raise ValueError(f"part must be 'all' or 'backbone', got {part!r}")
    t0 = time.time()
    out, x, y, _ = clean_copy(model, x, y, device)
    params = None
    if part == "backbone":
        fc = classifier(out)
        for p in fc.parameters():
            p.requires_grad_(False)
        params = [p for p in out.parameters() if p.requires_grad]
    hist = finetune_all(out, x, y, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                        batch_size=batch_size, augment=augment, flip=flip, seed=seed, sam_rho=sam_rho,
                        params=params, desc="SAM" if sam_rho else "FT", progress=progress)
    for p in out.parameters():
        p.requires_grad_(True)
    out.ngf_history = {"loss": hist, "time_s": time.time() - t0}
    return out
