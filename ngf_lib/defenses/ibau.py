"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng et al., ICLR 2022), a column of the paper's Table II.

The minimax problem ``min_theta max_delta mean CE(f_theta(x + delta), y)`` over one **universal** perturbation
``delta`` (the shape of one image), solved in ``rounds`` rounds (``../shared/reference/attacks-defenses.md`` 4.3):

1. **Inner (the trigger a backdoor would use)**: ``delta = 0``; one pass over the clean data in batches, SGD (lr
   ``inner_lr = 10``) on ``-CE(f(x + delta), y_hat) + 0.001 ||delta||^2`` with ``y_hat`` the model's own predictions;
   then ``delta`` is rescaled to L2 norm at most ``max_norm`` (10; a 32x32 RGB image in [0, 1] has norm up to 55).
2. **Outer (unlearn it)**: for every batch, the loss is CE with true labels on the batch where ``portion`` of the
   images carry ``delta`` (at least one image). Its gradient with respect to the weights is the **implicit
   hypergradient** through the inner fixed point ``delta* = Phi(delta*, theta)``, ``Phi = delta - 0.1 grad_delta
   L_inner`` on the first batch: ``v`` solves ``(I - d Phi / d delta)^T v = d L_outer / d delta`` by ``K = 5``
   fixed-point iterations and ``g_theta = d L_outer / d theta + (d Phi / d theta)^T v``; Adam (lr 1e-3) steps on it.

Defaults are the original repository's (batch 100, 5 rounds, K 5, Adam 1e-3); the paper's budget is 5 % clean data
(``val_size=0.05`` in :func:`ngf_lib.experiments.defended_record`). Nothing is selected: the model after the last round
is returned. BatchNorm stays in eval mode throughout (the backdoored model's running statistics, learned on the whole
training set, are better estimates than those of a batch of 100; this is our choice, the description leaves it open).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import to_float
from .ft import clean_copy


def universal_perturbation(model, x, *, lr: float = 10.0, reg: float = 1e-3, batch_size: int = 100,
                           max_norm: float = 10.0, p: int = 2) -> torch.Tensor:
    """One universal ``delta`` (1, C, H, W) that pushes the predictions of ``model`` (any callable on float images)
    on ``x`` away from themselves: one SGD pass on ``-CE(model(x + delta), y_hat) + reg ||delta||^2``, then ``delta``
    rescaled to ``L_p`` norm at most ``max_norm``. I-BAU's inner maximisation (step 1 of the module docstring; L2 <= 10)
    and AWM's trigger recovery (``reg = 0``, L1 <= 1 000)."""
    delta = torch.zeros_like(x[:1], requires_grad=True)
    opt = torch.optim.SGD([delta], lr=lr)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        with torch.no_grad():
            y_hat = model(xb).argmax(1)
        loss = -F.cross_entropy(model(xb + delta), y_hat) + reg * delta.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        norm = delta.norm(p=p)
        if norm > max_norm:
            delta.mul_(max_norm / norm)
    return delta.detach()


def implicit_hypergradient(params, delta, inner_loss, outer_loss, *, fp_lr: float = 0.1, k: int = 5):
    """``d L_outer(theta, delta*(theta)) / d theta`` through the fixed point ``delta* = delta* - fp_lr grad_delta
    L_inner(delta*, theta)`` by ``k`` fixed-point iterations on the adjoint (module docstring, step 2).

    ``inner_loss(delta)`` and ``outer_loss(delta)`` are closures over the model; ``params`` the weights; returns one
    gradient per parameter."""
    delta = delta.detach().requires_grad_(True)
    lo = outer_loss(delta)
    g_out = torch.autograd.grad(lo, params + [delta], allow_unused=True)
    g_theta = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_out[:-1])]
    g_delta = g_out[-1] if g_out[-1] is not None else torch.zeros_like(delta)
    li = inner_loss(delta)
    phi = delta - fp_lr * torch.autograd.grad(li, delta, create_graph=True)[0]
    v = torch.zeros_like(delta)
    for _ in range(k):                                  # v <- (dPhi/ddelta)^T v + dL_outer/ddelta
        v = torch.autograd.grad(phi, delta, grad_outputs=v, retain_graph=True)[0] + g_delta
    hg = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
    return [a if b is None else a + b for a, b in zip(g_theta, hg)]


def ibau(model, x, y=None, *, rounds: int = 5, lr: float = 1e-3, batch_size: int = 100, inner_lr: float = 10.0,
         max_norm: float = 10.0, portion: float = 0.01, fp_lr: float = 0.1, k: int = 5, device=None, seed: int = 0,
         progress: bool = False) -> torch.nn.Module:
    """I-BAU on a copy of ``model`` (module docstring); ``model`` is untouched."""
    if rounds < 1 or k < 1:
        raise ValueError(f"need rounds >= 1 and k >= 1, got rounds={rounds}, k={k}")
    if not 0 < portion <= 1:
        raise ValueError(f"portion (share of each batch carrying the perturbation) must be in (0, 1], got {portion}")
    t0 = time.time()
    out, x, y, dev = clean_copy(model, x, y, device)
    out.eval()
    xf = to_float(x)
    params = [p for p in out.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    x0, y0 = xf[:batch_size], y[:batch_size]             # the inner loss of the fixed-point map: the first batch
    hist = []
    for _ in tqdm(range(rounds), desc="I-BAU", disable=not progress, leave=False):
        delta = universal_perturbation(out, xf, lr=inner_lr, batch_size=batch_size, max_norm=max_norm)
        tot = 0.0
        for i in range(0, len(y), batch_size):
            xb, yb = xf[i:i + batch_size], y[i:i + batch_size]
            n_p = max(1, int(math.floor(portion * len(yb))))
            sel = torch.randperm(len(yb), generator=g)[:n_p].to(dev)
            on = torch.zeros(len(yb), 1, 1, 1, device=dev)
            on[sel] = 1.0

            def outer_loss(d, xb=xb, yb=yb, on=on):
                return F.cross_entropy(out(xb + on * d), yb)

            def inner_loss(d):
                return -F.cross_entropy(out(x0 + d), y0) + 1e-3 * d.pow(2).sum()

            grads = implicit_hypergradient(params, delta, inner_loss, outer_loss, fp_lr=fp_lr, k=k)
            opt.zero_grad(set_to_none=True)
            for p, gr in zip(params, grads):
                p.grad = gr
            opt.step()
            with torch.no_grad():
                loss = outer_loss(delta).item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"I-BAU diverged (loss {loss}); lower lr")
            tot += loss * len(yb)
        hist.append({"loss": tot / len(y), "delta_norm": float(delta.norm())})
    opt.zero_grad(set_to_none=True)
    out.ngf_history = {"rounds": hist, "time_s": time.time() - t0}
    return out
