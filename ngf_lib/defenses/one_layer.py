"""One-layer first-order fine-tuning of the classifier on cached features: the paper's Cls.(SGD) baseline (Table I)
and the first-order optimizers of Table III, with NGF's data, loss (eq. 3), schedule and cached features, so that the
only difference to NGF is the preconditioner.
"""
from __future__ import annotations

import time

import torch

from .ngf import (as_tensors, fisher_diagonal, loss_and_grad, prepare_copy, schedule, set_classifier_theta,
                  with_ones)

OPTIMIZERS = {
    "sgd": lambda p, lr, momentum: torch.optim.SGD(p, lr=lr, momentum=momentum),
    "adagrad": lambda p, lr, momentum: torch.optim.Adagrad(p, lr=lr),
    "rmsprop": lambda p, lr, momentum: torch.optim.RMSprop(p, lr=lr),
    "adam": lambda p, lr, momentum: torch.optim.Adam(p, lr=lr),
    "sam": lambda p, lr, momentum: torch.optim.SGD(p, lr=lr, momentum=momentum),   # base optimiser of SAM
}


def finetune_classifier(theta0, feats, y, *, optimizer="sgd", epochs=100, lr=0.01, momentum=0.0, eta=0.0,
                        batch_size=None, lr_step=40, lr_gamma=0.1, seed=0, steps=None,
                        lr_milestones=(0.35, 0.75), rho=0.05):
    """First-order fine-tuning of ``theta0 = [W | b]`` on features; returns ``(theta, loss per epoch)``.

    Same schedule as NGF (:func:`~ngf_lib.defenses.ngf.schedule`), same loss (eq. 3 with ``eta``).
    ``optimizer="sam"``: SAM (Foret et al. 2021), the gradient taken at ``theta + rho g / ||g||``, then an SGD step
    (``rho`` 0.05: the default of the authors' own SAM class; the paper does not state it)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    n = len(y)
    Hb = with_ones(feats, theta0.dtype)
    _, _, R0 = loss_and_grad(theta0, Hb, y)
    fdiag = fisher_diagonal(R0, Hb)
    theta = theta0.clone().requires_grad_(True)
    opt = OPTIMIZERS[optimizer]([theta], lr, momentum)
    g = torch.Generator().manual_seed(seed)
    hist = []
    for lr_s, idx, end in schedule(n, epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step,
                                   lr_gamma=lr_gamma, steps=steps, lr_milestones=lr_milestones, generator=g,
                                   device=theta.device):
        for group in opt.param_groups:
            group["lr"] = lr_s
        with torch.no_grad():
            _, grad, _ = loss_and_grad(theta, Hb[idx], y[idx], theta0, fdiag, eta)
            if optimizer == "sam" and grad.norm() > 0:
                _, grad, _ = loss_and_grad(theta + rho * grad / grad.norm(), Hb[idx], y[idx], theta0, fdiag, eta)
        theta.grad = grad
        opt.step()
        if end:
            with torch.no_grad():
                hist.append(loss_and_grad(theta, Hb, y, theta0, fdiag, eta)[0].item())
    return theta.detach(), hist


def finetune(model, x, y=None, *, optimizer="sgd", epochs=100, lr=0.01, momentum=0.0, eta=0.0, batch_size=None,
             lr_step=40, lr_gamma=0.1, rho=0.05, dtype=torch.float64, device=None, seed=0):
    """Fine-tune only the classifier of a copy of ``model`` with a first-order optimizer on cached features.

    Defaults are NGF's (100 epochs, lr 0.01 x0.1 every 40 epochs, full batch) without the regulariser (``eta=0``),
    i.e. the paper's Cls.(SGD) row of Table I.
    """
    t0 = time.time()
    x, y = as_tensors(x, y)
    out, fc, theta0, feats, y, _ = prepare_copy(model, x, y, dtype, device)
    theta, hist = finetune_classifier(theta0, feats, y, optimizer=optimizer, epochs=epochs, lr=lr,
                                      momentum=momentum, eta=eta, batch_size=batch_size, lr_step=lr_step,
                                      lr_gamma=lr_gamma, seed=seed, rho=rho)
    set_classifier_theta(fc, theta)
    out.ngf_history = {"loss": hist, "time_s": time.time() - t0}
    return out
