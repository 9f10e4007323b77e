"""``ngf-release``: what the NGF authors' earlier anonymous release runs, written here from its description.

The paper's Algorithm 1 (:func:`~ngf_lib.defenses.ngf.purify`) fine-tunes only the classifier, full batch, with the
exact empirical Fisher and a Fisher-weighted regulariser, on a frozen backbone in eval mode. The earlier release (no
licence: it was read about, not copied) differs in every one of those ingredients:

* the classifier gets an **eigenvalue-corrected Kronecker-factored** natural gradient (EKFAC, George et al. 2018):
  damping 1e-3, KL-clip 0.01, statistics refreshed every 10 steps as running averages (decay 0.95) of the
  *empirical* Fisher (from the backward pass of the training loss); :class:`EKFAC`;
* **every other layer is trained too**, with plain SGD (momentum 0.9, weight decay 1e-4);
* the model is in **train mode** (BatchNorm uses batch statistics and updates its running ones);
* clean images are randomly **cropped and flipped**; **batches of 128 drawn with replacement** from the 1 % split,
  **500 steps**, lr 0.01 x0.1 at 35 % and 75 % of the steps; **no regulariser**.

:func:`purify_release` runs that recipe; ``backbone="frozen"`` and ``classifier_update="sgd"`` turn the two
ingredients :func:`~ngf_lib.defenses.ngf.purify` has no switch for (training the backbone, EKFAC) on and off, so
the chapter "One layer: SGD vs NGF" can walk from the paper's NGF to the release one ingredient at a time, and ask
whether "one-layer NGF works where one-layer SGD fails" is really "all layers vs one layer".

Two details the description leaves open, and our choice: the classifier's preconditioned step goes through the same
SGD momentum (0.9) and weight decay (1e-4) as the other layers (the usual way K-FAC is run on top of SGD); the
Kronecker factors and the eigenvalue correction start from the first batch's statistics (no identity prior).
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import augment as augment_images
from ..data import to_float
from ..models import classifier
from .ngf import LinearLayerOptimizer, _check_inputs, as_tensors


class EKFAC(LinearLayerOptimizer):
    """Eigenvalue-corrected K-FAC (George et al. 2018) for one ``nn.Linear`` layer, with momentum, weight decay and
    a KL clip: the release's classifier optimizer.

    With ``a = [h, 1]`` the layer's input and ``g = B * dL/dz`` the per-sample gradient at its output (the empirical
    Fisher: ``L`` is the training loss, a mean over the batch), every ``stat_every`` steps

    * ``A <- decay A + (1 - decay) E[a a^T]``, ``S <- decay S + (1 - decay) E[g g^T]``, eigenbases ``Q_A``, ``Q_S``;
    * the eigenvalue correction ``s <- decay s + (1 - decay) E[(Q_S^T g a^T Q_A)^2]`` (the Fisher's diagonal in the
      Kronecker eigenbasis, instead of K-FAC's products of eigenvalues).

    The step preconditions ``V = [dL/dW | dL/db]`` as ``Q_S ((Q_S^T V Q_A) / (s + damping)) Q_A^T``, scales it by
    ``nu = min(1, sqrt(kl_clip / (lr^2 <V_pre, V>)))`` (the KL clip) and applies SGD with momentum and weight decay.
    With one sample, ``decay = 0`` and ``stat_every = 1`` the Fisher is exactly Kronecker and the direction is the
    exact natural gradient (tested against the dense solve).

    >>> layer = torch.nn.Linear(8, 3)
    >>> opt = EKFAC(layer, lr=0.01)
    >>> h, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    >>> opt.zero_grad(); torch.nn.functional.cross_entropy(layer(h), y).backward(); opt.step()
    """

    def __init__(self, layer: torch.nn.Linear, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                 damping: float = 1e-3, kl_clip: float | None = 0.01, stat_decay: float = 0.95, stat_every: int = 10):
        if not 0 <= stat_decay < 1:
            raise ValueError(f"stat_decay must be in [0, 1), got {stat_decay}")
        if stat_every < 1:
            raise ValueError(f"stat_every must be at least 1, got {stat_every}")
        super().__init__(layer, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping,
                                     kl_clip=kl_clip))
        self.stat_decay, self.stat_every = float(stat_decay), int(stat_every)
        self.steps = 0
        self.A = self.S = self.QA = self.QS = self.scale = None

    def _running(self, old, new):
        return new if old is None else self.stat_decay * old + (1 - self.stat_decay) * new

    def update_statistics(self, a: torch.Tensor, g: torch.Tensor) -> None:
        """Refresh the factors, eigenbases and eigenvalue correction from a batch (``a``: (B, d+1), ``g``: (B, C))."""
        B = len(a)
        self.A = self._running(self.A, a.T @ a / B)
        self.S = self._running(self.S, g.T @ g / B)
        self.QA = torch.linalg.eigh(self.A).eigenvectors
        self.QS = torch.linalg.eigh(self.S).eigenvectors
        proj = ((g @ self.QS)[:, :, None] * (a @ self.QA)[:, None, :]) ** 2      # (B, C, d+1)
        self.scale = self._running(self.scale, proj.mean(0))

    def precondition(self, V: torch.Tensor, damping: float) -> torch.Tensor:
        """``Q_S ((Q_S^T V Q_A) / (s + damping)) Q_A^T``."""
        return self.QS @ ((self.QS.T @ V @ self.QA) / (self.scale + damping)) @ self.QA.T

    @torch.no_grad()
    def step(self, closure=None):
        loss, a, gout, V = self.captured(closure)
        group = self.param_groups[0]
        W, b = self.layer.weight, self.layer.bias
        if self.steps % self.stat_every == 0:
            self.update_statistics(a, gout * len(a))
        P = self.precondition(V, group["damping"])
        if group["kl_clip"]:
            vg = (P * V).sum() * group["lr"] ** 2
            P = P * min(1.0, float((group["kl_clip"] / vg).sqrt())) if vg > 0 else P
        if group["weight_decay"]:
            P[:, :-1] += group["weight_decay"] * W
            if b is not None:
                P[:, -1] += group["weight_decay"] * b
        buf = self.state.setdefault("momentum_buffer", torch.zeros_like(P))
        buf.mul_(group["momentum"]).add_(P)
        self.apply_update(buf, group["lr"])
        self.steps += 1
        return loss


def purify_release(model: torch.nn.Module, x, y: torch.Tensor | None = None, *, steps: int = 500,
                   batch_size: int = 128, lr: float = 0.01, milestones: tuple = (0.35, 0.75), gamma: float = 0.1,
                   momentum: float = 0.9, weight_decay: float = 1e-4, damping: float = 1e-3,
                   kl_clip: float | None = 0.01, stat_decay: float = 0.95, stat_every: int = 10,
                   classifier_update: str = "ekfac", backbone: str = "sgd", bn_mode: str = "train",
                   augment: bool = True, flip: bool = True, device=None, seed: int = 0,
                   progress: bool = False) -> torch.nn.Module:
    """The release's purification recipe (module docstring); returns a purified copy (``model`` is untouched).

    ``classifier_update``: ``"ekfac"`` (the release) or ``"sgd"`` (the same recipe with a first-order classifier);
    ``backbone``: ``"sgd"`` (the release: every other layer trained with SGD) or ``"frozen"`` (only the classifier);
    ``bn_mode``: ``"train"`` (the release) or ``"eval"``; ``augment``: random crop (+ flip if ``flip``).
    Nothing is chosen on test data; the defaults are the release's. The training loss of every 10th batch is kept
    in ``returned_model.ngf_history``.
    """
    if classifier_update not in ("ekfac", "sgd"):
        raise ValueError(f"classifier_update must be 'ekfac' or 'sgd', got {classifier_update!r}")
    if backbone not in ("sgd", "frozen"):
        raise ValueError(f"backbone must be 'sgd' or 'frozen', got {backbone!r}")
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    t0 = time.time()
    x, y = as_tensors(x, y)
    _, y = _check_inputs(model, x, y)
    out = copy.deepcopy(model)
    dev = torch.device(device) if device is not None else next(out.parameters()).device
    out.to(dev)
    fc = classifier(out)
    fc_params = {id(p) for p in fc.parameters()}
    others = [p for p in out.parameters() if id(p) not in fc_params]
    for p in others:
        p.requires_grad_(backbone == "sgd")
    opts = []
    if backbone == "sgd":
        opts.append(torch.optim.SGD(others, lr=lr, momentum=momentum, weight_decay=weight_decay))
    if classifier_update == "ekfac":
        fc_opt = EKFAC(fc, lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping, kl_clip=kl_clip,
                       stat_decay=stat_decay, stat_every=stat_every)
    else:
        fc_opt = torch.optim.SGD(fc.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    opts.append(fc_opt)
    xd, yd = x.to(dev), y.to(dev)
    g = torch.Generator().manual_seed(seed)
    hist = {"step": [], "loss": []}
    try:
        for s in tqdm(range(steps), desc="ngf-release", disable=not progress, leave=False):
            lr_s = lr * gamma ** sum(s >= m * steps for m in milestones)
            for opt in opts:
                for group in opt.param_groups:
                    group["lr"] = lr_s
            idx = torch.randint(0, len(yd), (batch_size,), generator=g).to(dev)
            xb = augment_images(xd[idx], flip=flip, generator=g) if augment else xd[idx]
            out.train(bn_mode == "train")
            loss = F.cross_entropy(out(to_float(xb)), yd[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"ngf-release diverged at step {s + 1} (loss {loss.item()})")
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            if (s + 1) % 10 == 0 or s + 1 == steps:
                hist["step"].append(s + 1)
                hist["loss"].append(loss.item())
    finally:
        if isinstance(fc_opt, EKFAC):
            fc_opt.remove_hooks()
        for p in out.parameters():
            p.requires_grad_(True)
            p.grad = None
        out.eval()
    out.ngf_history = {**hist, "time_s": time.time() - t0}
    return out


# The walk from the paper's NGF to the release, one ingredient at a time (chapter "One layer: SGD vs NGF"):
# (label, defense, configuration). Each step keeps everything of the step before and changes one thing.
_R = dict(augment=True, steps=500, batch_size=128)
ABLATION = [
    ("NGF as written (Alg. 1)", "ngf", {}),
    ("+ crop/flip", "ngf", {"augment": True}),
    ("+ 500 steps of 128, with replacement", "ngf", _R),
    ("+ BatchNorm in train mode", "ngf", {**_R, "bn_mode": "train"}),
    ("+ no regulariser (eta = 0)", "ngf", {**_R, "bn_mode": "train", "eta": 0.0}),
    ("+ damping 1e-3", "ngf", {**_R, "bn_mode": "train", "eta": 0.0, "damping": 1e-3}),
    ("+ momentum 0.9", "ngf", {**_R, "bn_mode": "train", "eta": 0.0, "damping": 1e-3, "momentum": 0.9}),
    ("+ EKFAC, KL-clip, wd (one layer)", "ngf-release", {"backbone": "frozen"}),
    ("+ backbone trained by SGD (= release)", "ngf-release", {}),
]
# The same recipes with a first-order classifier: is it the natural gradient, or training all layers?
FIRST_ORDER_CONTRASTS = [
    ("one-layer SGD (paper's Cls.(SGD))", "cls-sgd", {}),
    ("release recipe, SGD, one layer", "ngf-release", {"classifier_update": "sgd", "backbone": "frozen"}),
    ("release recipe, SGD, all layers", "ngf-release", {"classifier_update": "sgd"}),
]
