"""NGF on all layers (paper Table V), with a Kronecker-factored Fisher per layer.

The exact Fisher of a whole network is out of reach (P = 11 M for PreActResNet18), so every ``nn.Conv2d`` and
``nn.Linear`` layer gets its own Kronecker-factored block (K-FAC, Martens & Grosse 2015; for convolutions KFC, Grosse
& Martens 2016): ``F_l ~ S_l (x) A_l`` with ``A_l`` the second moment of the layer's inputs (image patches for a
convolution, with a 1 for the bias) and ``S_l`` that of the per-sample gradients at its outputs (summed over
positions); the damped inverse ``(S (x) A + damping I)^{-1}`` is applied exactly through the eigendecompositions of
both factors (:func:`~ngf_lib.defenses.ngf.kfac_solve`), computed once per refresh of the factors and reused by
the steps in between (the factors do not change there, so the step is the same; on PreActResNet18, whose widest
convolutions have 4 608-wide input factors, the eigendecompositions dominate a step). BatchNorm parameters (a few
thousand) take the plain gradient. The factors are running averages (decay ``stat_decay``) refreshed every ``stat_every`` steps, from the
backward pass of the training loss: the empirical Fisher, as in eq. 6.

The paper gives no details for this row; our choices: the loss of eq. 3 with the regulariser's ``diag(F(theta_bar))``
taken from the initial K-FAC factors (``diag(S) (x) diag(A)``), NGF's schedule on mini-batches of 128 (100 epochs,
lr 0.01 x0.1 every 40 epochs), random crop + flip, BatchNorm in train mode while fine-tuning, damping 0.1 (NGF's
default) and a KL clip of 0.01 on the whole step (without it the first steps of a natural gradient on every layer can
be arbitrarily long).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..data import augment as augment_images
from ..data import to_float
from .ft import clean_copy
from .ngf import kfac_apply, kfac_eig


class KFACLayers:
    """Kronecker factors of every ``Conv2d``/``Linear`` of a model, collected by hooks during forward/backward."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.A, self.S = {}, {}
        self._a, self._g = {}, {}
        self.record = False
        self.hooks = []
        for m in self.layers:
            self.hooks.append(m.register_forward_hook(self._fwd))

    def _fwd(self, m, inp, out):
        if not (self.record and out.requires_grad):
            return
        self._a[m] = inp[0].detach()
        out.register_hook(lambda g, m=m: self._g.__setitem__(m, g.detach()))

    def remove(self):
        for h in self.hooks:
            h.remove()

    @staticmethod
    def _patches(m, a):
        """Layer inputs as rows: (N*T, k) for a convolution (T positions), (N, k) for a linear layer."""
        if isinstance(m, nn.Conv2d):
            cols = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)       # (N, Cin*kh*kw, T)
            a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        if m.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
        return a

    def update(self, batch_size: int, decay: float) -> None:
        """Fold the last forward/backward pass into the running factors."""
        for m in self.layers:
            if m not in self._a or m not in self._g:
                continue
            a = self._patches(m, self._a[m])
            g = self._g[m] * batch_size                              # per-sample gradients of the mean loss
            if isinstance(m, nn.Conv2d):
                g = g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1])   # (N*T, Cout)
            A = a.T @ a / len(a)
            S = g.T @ g / batch_size                                 # summed over positions, mean over samples
            self.A[m] = A if m not in self.A else decay * self.A[m] + (1 - decay) * A
            self.S[m] = S if m not in self.S else decay * self.S[m] + (1 - decay) * S
        self._a.clear()
        self._g.clear()

    @staticmethod
    def grad_matrix(m) -> torch.Tensor:
        """``[dW | db]`` as a (Cout, k) matrix in the layout of the factors."""
        V = m.weight.grad.reshape(m.weight.shape[0], -1)
        if m.bias is not None:
            V = torch.cat([V, m.bias.grad[:, None]], 1)
        return V

    @staticmethod
    def set_grad(m, V) -> None:
        k = m.weight[0].numel()
        m.weight.grad = V[:, :k].reshape(m.weight.shape).contiguous()
        if m.bias is not None:
            m.bias.grad = V[:, k].contiguous()


def ngf_all_layers(model, x, y=None, *, epochs: int = 100, lr: float = 0.01, lr_step: int = 40,
                   lr_gamma: float = 0.1, eta: float = 0.1, damping: float = 0.1, kl_clip: float | None = 0.01,
                   stat_decay: float = 0.95, stat_every: int = 10, batch_size: int = 128, augment: bool = True,
                   flip: bool = True, device=None, seed: int = 0, progress: bool = False) -> nn.Module:
    """NGF with a K-FAC Fisher on every layer (module docstring) on a copy of ``model``; ``model`` is untouched."""
    t0 = time.time()
    out, x, y, dev = clean_copy(model, x, y, device)
    kf = KFACLayers(out)
    params = list(out.parameters())
    bar = {m: _param_matrix(m).detach().clone() for m in kf.layers}      # theta_bar of eq. 3
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    fdiag, eig = {}, {}
    step, hist = 0, []
    try:
        for epoch in tqdm(range(epochs), desc="NGF (all layers)", disable=not progress, leave=False):
            lr_e = lr * lr_gamma ** (epoch // lr_step) if lr_step else lr
            perm = torch.randperm(n, generator=g).to(dev)
            tot = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                xb = augment_images(x[idx], flip=flip, generator=g) if augment else x[idx]
                out.train()
                kf.record = step % stat_every == 0
                loss = F.cross_entropy(out(to_float(xb)), y[idx])
                for p in params:
                    p.grad = None
                loss.backward()
                if kf.record:
                    kf.update(len(idx), stat_decay)
                    eig.clear()                   # the factors changed: their eigendecompositions are stale
                    if not fdiag:                 # eq. 3's weights, from the initial factors (diag(S) (x) diag(A))
                        fdiag = {m: torch.outer(kf.S[m].diagonal(), kf.A[m].diagonal()) for m in kf.layers}
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"NGF (all layers) diverged at step {step + 1} (loss {loss.item()})")
                with torch.no_grad():
                    vg = 0.0
                    for m in kf.layers:
                        V = kf.grad_matrix(m)
                        if eta:                      # regulariser of eq. 3 on every K-FAC layer
                            V = V + eta * fdiag[m] * (_param_matrix(m) - bar[m])
                        if m not in eig:
                            eig[m] = kfac_eig(kf.S[m], kf.A[m])
                        P = kfac_apply(eig[m], V, damping)
                        kf.set_grad(m, P)
                        vg += float((P * V).sum())
                    nu = 1.0
                    if kl_clip and vg > 0:
                        nu = min(1.0, math.sqrt(kl_clip / (lr_e ** 2 * vg)))
                    for p in params:
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-lr_e * nu)
                tot += loss.item() * len(idx)
                step += 1
            hist.append(tot / n)
    finally:
        kf.remove()
        for p in params:
            p.grad = None
        out.eval()
    out.ngf_history = {"loss": hist, "time_s": time.time() - t0}
    return out


def _param_matrix(m) -> torch.Tensor:
    W = m.weight.reshape(m.weight.shape[0], -1)
    return torch.cat([W, m.bias[:, None]], 1) if m.bias is not None else W
