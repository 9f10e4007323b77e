"""Natural Gradient Fine-tuning (NGF): the paper's purifier, exact, on the classifier only (Section VI, Algorithm 1).

Notation (paper Section VI). The classifier is ``z = W h + b`` with ``W`` (C x d), ``b`` (C); we keep both in one
matrix ``Theta = [W | b]`` (C x (d+1)) acting on ``hb = [h, 1]``, and flatten it row-major into theta_L (P = C(d+1)).

* per-sample gradient of ``log p(y|x)`` (eq. 6): ``g_j = (e_{y_j} - p_j) (x) hb_j``, i.e. ``G = rows of R (x) Hb`` with
  ``R = E - P`` (n x C) and ``Hb`` (n x (d+1));
* empirical Fisher (eq. 2, 6): ``F = G^T G / n`` (P x P);
* purification loss (eq. 3): ``L_p = CE + eta/2 * sum_i diag(F(theta_bar))_i (theta_i - theta_bar_i)^2``;
* update (eq. 5): ``theta <- theta - lr * (F(theta) + damping I)^{-1} grad L_p``.

The paper gives no damping; ``F`` has rank at most n < P, so some damping is needed. :func:`select_damping` chooses
it by cross-validation on the clean validation split (the chapter "One layer: SGD vs NGF" shows the sweep).

**Exact solve without the P x P matrix (Woodbury).** ``(G^T G / n + lam I)^{-1} v = (v - G^T (n lam I + G G^T)^{-1} G v)
/ lam``: an n x n symmetric positive definite system (Cholesky). ``G G^T = (R R^T) * (Hb Hb^T)`` elementwise, and with
cached features ``Hb Hb^T`` never changes, so an epoch costs two n x n products, one Cholesky and a few n x P
products; ``G v`` and ``G^T u`` are one matrix product each. :func:`dense_direction` forms ``F`` explicitly: the test
reference.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import augment as augment_images
from ..data import dataset_info
from ..models import classifier, features


# ------------------------------------------------------------------------------------------- the natural direction

def per_sample_grads(R: torch.Tensor, Hb: torch.Tensor) -> torch.Tensor:
    """``G`` (n x P): row j is ``vec(R_j (x) Hb_j)``, the gradient of log p(y_j|x_j) w.r.t. flattened ``[W | b]``."""
    return (R[:, :, None] * Hb[:, None, :]).reshape(len(R), -1)


def dense_direction(R, Hb, V, damping: float) -> torch.Tensor:
    """``(F + damping I)^{-1} V`` with ``F = G^T G / n`` formed as a dense P x P matrix (reference for tests).

    ``R`` (n x C), ``Hb`` (n x (d+1)), ``V`` (C x (d+1)); returns C x (d+1).
    """
    G = per_sample_grads(R, Hb)
    n, P = G.shape
    Fm = G.T @ G / n + damping * torch.eye(P, dtype=G.dtype, device=G.device)
    return torch.linalg.solve(Fm, V.reshape(-1)).reshape(V.shape)


def woodbury_direction(R, Hb, V, damping: float, gram: torch.Tensor | None = None) -> torch.Tensor:
    """``(F + damping I)^{-1} V`` exactly, through an n x n solve (see the module docstring).

    ``gram``: ``Hb Hb^T`` (n x n) if already known (cached features: computed once per run).
    """
    if damping <= 0:
        raise ValueError(f"damping must be positive, got {damping}")
    n = len(R)
    K = gram if gram is not None else Hb @ Hb.T                    # (n, n)
    GGt = (R @ R.T) * K                                            # (n, n) = G G^T
    Gv = ((Hb @ V.T) * R).sum(1)                                   # (n,)   = G vec(V)
    A = GGt + n * damping * torch.eye(n, dtype=R.dtype, device=R.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        u = torch.cholesky_solve(Gv[:, None], L)[:, 0]
    else:                                                          # numerically indefinite: fall back to LU
        u = torch.linalg.solve(A, Gv)
    GtU = (R * u[:, None]).T @ Hb                                  # (C, d+1) = G^T u
    return (V - GtU) / damping


def kfac_direction(R, Hb, V, damping: float) -> torch.Tensor:
    """``(S (x) A + damping I)^{-1} V`` with the Kronecker-factored Fisher of a linear layer (Martens & Grosse 2015).

    ``F = E[(r r^T) (x) (hb hb^T)]`` is approximated by ``S (x) A`` with ``S = E[r r^T]`` (C x C) and
    ``A = E[hb hb^T]`` ((d+1) x (d+1)); the damped inverse is applied exactly through the eigendecompositions of
    ``S`` and ``A`` (no factored-damping approximation). Memory O(C^2 + d^2) instead of O(P^2) or O(n^2): the path
    for layers and validation sets too large for the exact solves (ImageNet: P = 2.05 M, n in the tens of
    thousands). Exact when the Fisher is itself a Kronecker product (one sample).
    """
    if damping <= 0:
        raise ValueError(f"damping must be positive, got {damping}")
    n = len(R)
    S = R.T @ R / n                                                # (C, C)
    A = Hb.T @ Hb / n                                              # (d+1, d+1)
    return kfac_solve(S, A, V, damping)


def kfac_solve(S, A, V, damping: float) -> torch.Tensor:
    """``(S (x) A + damping I)^{-1} vec(V)`` for symmetric PSD factors, returned as a matrix like ``V``."""
    return kfac_apply(kfac_eig(S, A), V, damping)


def kfac_eig(S, A) -> tuple:
    """The eigendecompositions ``(ds, Us, da, Ua)`` of both Kronecker factors, for :func:`kfac_apply`.

    The expensive half of :func:`kfac_solve` (O(C^3 + k^3)); an optimizer whose factors change only every few steps
    computes it once per refresh and reuses it (:mod:`~ngf_lib.defenses.ngf_all`).
    """
    ds, Us = torch.linalg.eigh(S)
    da, Ua = torch.linalg.eigh(A)
    return ds, Us, da, Ua


def kfac_apply(eig: tuple, V, damping: float) -> torch.Tensor:
    """``(S (x) A + damping I)^{-1} vec(V)`` from the factors' eigendecompositions (:func:`kfac_eig`)."""
    ds, Us, da, Ua = eig
    W = Us.T @ V @ Ua                                              # V in the eigenbasis
    W = W / (ds.clamp_min(0)[:, None] * da.clamp_min(0)[None, :] + damping)
    return Us @ W @ Ua.T


SOLVERS = {"woodbury": woodbury_direction, "dense": dense_direction, "kfac": kfac_direction}


def choose_solver(n: int, P: int, solver: str = "auto") -> str:
    """``"auto"``: the exact Woodbury solve while its n x n system is affordable (n <= 8192), else K-FAC."""
    if solver == "auto":
        return "woodbury" if n <= 8192 else "kfac"
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; use auto, {', '.join(SOLVERS)}")
    return solver


# ------------------------------------------------------------------------------------------------ the schedule

def epoch_lr(lr: float, epoch: int, lr_step: int, lr_gamma: float) -> float:
    """The paper's schedule: ``lr`` times ``lr_gamma`` every ``lr_step`` epochs (``lr_step=0``: constant)."""
    return lr * lr_gamma ** (epoch // lr_step) if lr_step else lr


def schedule(n: int, *, epochs: int = 100, batch_size=None, lr: float = 0.01, lr_step: int = 40,
             lr_gamma: float = 0.1, steps=None, lr_milestones=(0.35, 0.75), generator=None, device=None):
    """The update schedule of the classifier-only defenses: yields ``(lr, batch indices, end_of_epoch)``.

    * ``steps=None`` (the paper, Algorithm 1): ``epochs`` passes over the ``n`` samples, the whole set per update
      (``batch_size=None``) or a fresh permutation cut into ``batch_size`` pieces; ``lr`` x ``lr_gamma`` every
      ``lr_step`` epochs.
    * ``steps=N`` (the authors' earlier release): ``N`` updates, each on ``batch_size`` samples drawn *with
      replacement*; ``lr`` x ``lr_gamma`` at each fraction of ``N`` in ``lr_milestones``. ``end_of_epoch`` marks
      every ``ceil(n / batch_size)``-th step (and the last), where the loss history is recorded.
    """
    if steps is None:
        for epoch in range(epochs):
            lr_e = epoch_lr(lr, epoch, lr_step, lr_gamma)
            if batch_size is None:
                yield lr_e, torch.arange(n, device=device), True
                continue
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, batch_size):
                yield lr_e, order[i:i + batch_size].to(device), i + batch_size >= n
        return
    if batch_size is None:
        raise ValueError("steps= draws batches with replacement: give batch_size too")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    per_epoch = math.ceil(n / batch_size)
    for s in range(steps):
        lr_s = lr * lr_gamma ** sum(s >= m * steps for m in lr_milestones)
        idx = torch.randint(0, n, (batch_size,), generator=generator).to(device)
        yield lr_s, idx, (s + 1) % per_epoch == 0 or s + 1 == steps


# --------------------------------------------------------------------------------------------------- the problem

def fisher_diagonal(R: torch.Tensor, Hb: torch.Tensor) -> torch.Tensor:
    """``diag(F)`` reshaped to C x (d+1): ``mean_j R_jc^2 Hb_jk^2`` (eq. 3's importance weights)."""
    return (R ** 2).T @ (Hb ** 2) / len(R)


def loss_and_grad(theta, Hb, y, theta_bar=None, fdiag=None, eta: float = 0.0):
    """``L_p`` (eq. 3) and its gradient w.r.t. ``theta`` = [W | b]; also the residuals ``R = E - P``."""
    z = Hb @ theta.T                                               # (n, C) logits
    logp = torch.log_softmax(z, 1)
    ce = F.nll_loss(logp, y)
    R = F.one_hot(y, theta.shape[0]).to(theta.dtype) - logp.exp()  # (n, C) = E - P
    grad = -(R.T @ Hb) / len(y)                                    # (C, d+1)
    loss = ce
    if eta and fdiag is not None:
        diff = theta - theta_bar
        loss = loss + 0.5 * eta * (fdiag * diff ** 2).sum()
        grad = grad + eta * fdiag * diff
    return loss, grad, R


@dataclass
class PurifyResult:
    """What :func:`purify_classifier` returns besides the new weights: the loss per epoch and the wall time."""
    theta: torch.Tensor
    loss: list = field(default_factory=list)
    time_s: float = 0.0


def with_ones(feats: torch.Tensor, dtype) -> torch.Tensor:
    """``Hb = [h, 1]`` (n x (d+1)) in ``dtype``: features with the bias coordinate."""
    return torch.cat([feats.to(dtype), torch.ones(len(feats), 1, dtype=dtype, device=feats.device)], 1)


def purify_classifier(theta0, feats, y, *, epochs=100, lr=0.01, eta=0.1, damping=1e-3, batch_size=None,
                      lr_step=40, lr_gamma=0.1, solver="auto", seed=0, feature_fn=None, steps=None,
                      lr_milestones=(0.35, 0.75), momentum=0.0) -> PurifyResult:
    """NGF on a linear classifier ``theta0 = [W | b]`` (C x (d+1)) given features ``feats`` (n x d) and labels.

    Algorithm 1 of the paper with full batch (``batch_size=None``); mini-batches of ``batch_size`` otherwise; the
    schedule (epochs or ``steps`` with replacement) is :func:`schedule`'s. ``feature_fn(idx)``, if given, returns
    fresh features of samples ``idx`` for every update (augmentation, BatchNorm in train mode); otherwise ``feats`` is
    fixed and its Gram matrix is computed once. ``solver``: ``"woodbury"`` (exact, n x n), ``"dense"`` (exact,
    P x P), ``"kfac"`` (Kronecker-factored, for huge layers) or ``"auto"`` (:func:`choose_solver`).
    The regulariser's weights (eq. 3) and the recorded loss use ``feats``. ``momentum`` (not in the paper; the
    release's optimizer has it): heavy-ball momentum on the natural-gradient direction.
    """
    t0 = time.time()
    theta = theta0.clone()
    n = len(y)
    solver = choose_solver(n if batch_size is None else min(n, batch_size), theta.numel(), solver)
    Hb = with_ones(feats, theta.dtype)
    # eq. 3: importance weights from the Fisher of the *initial* classifier on the clean validation set
    _, _, R0 = loss_and_grad(theta0, Hb, y)
    fdiag = fisher_diagonal(R0, Hb)
    gram = Hb @ Hb.T if (feature_fn is None and solver == "woodbury") else None   # fixed: cached features
    g = torch.Generator().manual_seed(seed)
    hist = []
    buf = torch.zeros_like(theta)
    for lr_s, idx, end in schedule(n, epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step,
                                   lr_gamma=lr_gamma, steps=steps, lr_milestones=lr_milestones, generator=g,
                                   device=theta.device):
        full = batch_size is None and steps is None
        if feature_fn is not None:
            Hbb = with_ones(feature_fn(idx), theta.dtype)
        else:
            Hbb = Hb if full else Hb[idx]
        yb = y if full else y[idx]
        _, grad, R = loss_and_grad(theta, Hbb, yb, theta0, fdiag, eta)
        if solver == "woodbury":
            K = (gram if full else gram[idx][:, idx]) if gram is not None else None
            step = woodbury_direction(R, Hbb, grad, damping, K)
        else:
            step = SOLVERS[solver](R, Hbb, grad, damping)
        if momentum:
            step = buf.mul_(momentum).add_(step)
        theta = theta - lr_s * step
        if end:
            loss, _, _ = loss_and_grad(theta, Hb, y, theta0, fdiag, eta)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"NGF diverged after {len(hist) + 1} epochs (loss {loss.item()}); "
                                         f"raise damping or lower lr")
            hist.append(loss.item())
    return PurifyResult(theta, hist, time.time() - t0)


# ------------------------------------------------------------------------------------------------- model interface

def as_tensors(x, y=None):
    """``(x, y)`` as tensors: passes tensors through, concatenates a ``DataLoader`` (or any iterable of
    ``(images, labels)`` batches) given as ``x`` with ``y=None``."""
    if y is not None:
        return x, y
    if isinstance(x, torch.Tensor):
        raise ValueError("labels y are missing (give x, y tensors or a DataLoader of (images, labels) as x)")
    xs, ys = [], []
    for batch in x:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("a data loader must yield (images, labels) batches")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise ValueError("no clean validation data: the data loader is empty")
    return torch.cat(xs), torch.cat(ys)


def _check_inputs(model, x, y):
    fc = classifier(model)
    if len(x) == 0:
        raise ValueError("no clean validation data: NGF needs at least one labelled image")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    y = torch.as_tensor(y)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= fc.out_features:
        raise ValueError(f"labels must be in 0..{fc.out_features - 1} (the classifier has {fc.out_features} "
                         f"outputs), got {int(y.min())}..{int(y.max())}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("the clean images contain NaN or inf")
    return fc, y.long()


def classifier_theta(fc: torch.nn.Linear, dtype=torch.float64) -> torch.Tensor:
    """``[W | b]`` (C x (d+1)) of a linear layer, detached, in ``dtype`` (zero bias column if it has none)."""
    b = fc.bias.detach() if fc.bias is not None else torch.zeros(fc.out_features, device=fc.weight.device)
    return torch.cat([fc.weight.detach(), b[:, None]], 1).to(dtype)


@torch.no_grad()
def set_classifier_theta(fc: torch.nn.Linear, theta: torch.Tensor) -> None:
    """Write ``[W | b]`` back into a linear layer (in place)."""
    fc.weight.copy_(theta[:, :-1].to(fc.weight.dtype))
    if fc.bias is not None:
        fc.bias.copy_(theta[:, -1].to(fc.bias.dtype))


def prepare_copy(model, x, y, dtype=torch.float64, device=None):
    """Shared set-up of the classifier-only defenses: validate the inputs, copy the model (eval mode, on ``device``),
    and return ``(copy, its classifier, [W | b] in dtype, cached features of x, labels, device)``."""
    _, y = _check_inputs(model, x, y)
    out = copy.deepcopy(model)
    dev = torch.device(device) if device is not None else next(out.parameters()).device
    out.to(dev).eval()
    fc = classifier(out)
    feats = features(out, x.to(dev))
    if not torch.isfinite(feats).all():
        raise ValueError("the model's features of the clean images contain NaN or inf")
    return out, fc, classifier_theta(fc, dtype), feats, y.to(dev), dev


def purify(model: torch.nn.Module, x, y: torch.Tensor | None = None, *, epochs: int = 100, lr: float = 0.01,
           eta: float = 0.1, damping: float = 0.1, batch_size: int | None = None, augment: bool = False,
           flip: bool = True, lr_step: int = 40, lr_gamma: float = 0.1, steps: int | None = None,
           lr_milestones: tuple = (0.35, 0.75), bn_mode: str = "eval", momentum: float = 0.0, solver: str = "auto",
           dtype=torch.float64, device=None, seed: int = 0) -> torch.nn.Module:
    """Purify ``model`` with NGF (paper eq. 3-6, Algorithm 1); returns a purified copy (``model`` is untouched).

    Only the classifier (the last ``nn.Linear``, weight and bias) is trained. ``x, y``: the defender's clean
    validation images (uint8 or [0, 1] floats, ``(n, 3, H, W)``) and labels (a ``DataLoader`` of such pairs is
    also accepted). The defaults are the paper's Algorithm 1: full batch, 100 epochs, lr 0.01 x0.1 every 40 epochs,
    eta 0.1, the backbone in eval mode, once, on cached features.

    Switches towards the authors' earlier release (chapter "One layer: SGD vs NGF", the ablation), one at a time:

    * ``augment=True``: features of randomly cropped (and, if ``flip``, flipped) images, recomputed for every update;
    * ``steps=N, batch_size=B``: ``N`` updates on batches of ``B`` drawn with replacement, lr x ``lr_gamma`` at the
      fractions ``lr_milestones`` of ``N`` (instead of epochs);
    * ``bn_mode="train"``: the frozen backbone's BatchNorm layers use each batch's statistics and update their
      running statistics (so the returned model's BatchNorm buffers change too; its weights do not);
    * ``eta=0``: no regulariser; ``damping``: see below; ``momentum``: heavy-ball momentum on the NGF direction.

    ``damping`` (the paper gives none): 0.1 is what 5-fold cross-validation on the clean validation split chose for
    both ``cpu``-profile models of chapter 2 (BadNets and Blend, Table 2.1; grid 1e-5 ... 1). For your own model, run
    :func:`select_damping` on your clean data; never choose it by ASR.

    >>> purified = purify(model, x_val, y_val)          # doctest: +SKIP
    """
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    x, y = as_tensors(x, y)
    out, fc, theta0, feats, y, dev = prepare_copy(model, x, y, dtype, device)
    feature_fn = None
    if augment or bn_mode == "train":
        g = torch.Generator().manual_seed(seed + 1)
        xd = x.to(dev)

        def feature_fn(idx):
            xb = augment_images(xd[idx], flip=flip, generator=g) if augment else xd[idx]
            return features(out, xb, train=bn_mode == "train")
    res = purify_classifier(theta0, feats, y, epochs=epochs, lr=lr, eta=eta, damping=damping,
                            batch_size=batch_size, lr_step=lr_step, lr_gamma=lr_gamma, solver=solver, seed=seed,
                            feature_fn=feature_fn, steps=steps, lr_milestones=lr_milestones, momentum=momentum)
    set_classifier_theta(fc, res.theta)
    out.eval()
    out.ngf_history = {"loss": res.loss, "time_s": res.time_s}
    return out


# ------------------------------------------------------------------------------------------- as a torch optimizer

class LinearLayerOptimizer(torch.optim.Optimizer):
    """Base of the one-layer natural-gradient optimizers (:class:`NGF`, :class:`~ngf_lib.defenses.release.EKFAC`).

    Validates the layer, and hooks it: the forward pass records its inputs ``h``, the backward pass the gradient of
    the loss w.r.t. its outputs, from which the per-sample gradients of eq. 6 follow. :meth:`captured` hands both
    to ``step`` (as ``Hb = [h, 1]``, ``dL/dz`` and ``V = [dL/dW | dL/db]``) and clears them.
    """

    def __init__(self, layer: torch.nn.Linear, defaults: dict):
        if not isinstance(layer, torch.nn.Linear):
            raise TypeError(f"{type(self).__name__} works on an nn.Linear layer (the classifier), "
                            f"got {type(layer).__name__}")
        for name in ("lr", "damping"):
            if defaults[name] <= 0:
                raise ValueError(f"{name} must be positive, got {defaults[name]}")
        params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        super().__init__(params, defaults)
        self.layer = layer
        self._h = self._gout = None
        self._hooks = [layer.register_forward_hook(self._save_input)]

    def _save_input(self, mod, inp, out):
        if torch.is_grad_enabled() and out.requires_grad:
            self._h = inp[0].detach().flatten(1)
            out.register_hook(self._save_grad_output)   # dL/dz of this forward pass

    def _save_grad_output(self, grad):
        self._gout = grad.detach().flatten(1)

    def remove_hooks(self):
        for h in self._hooks:
            h.remove()

    def captured(self, closure=None):
        """``(loss, Hb, dL/dz, V)`` of the last forward/backward pass (running ``closure`` first if given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._h is None or self._gout is None:
            raise RuntimeError(f"{type(self).__name__}.step() needs a forward and backward pass through the layer "
                               f"first")
        h, gout = self._h, self._gout
        self._h = self._gout = None
        W, b = self.layer.weight, self.layer.bias
        Hb = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], 1)
        gb = b.grad if (b is not None and b.grad is not None) else torch.zeros(W.shape[0], device=W.device)
        return loss, Hb, gout, torch.cat([W.grad, gb[:, None]], 1)

    def apply_update(self, D: torch.Tensor, lr: float) -> None:
        """``[W | b] -= lr * D``."""
        self.layer.weight.add_(D[:, :-1], alpha=-lr)
        if self.layer.bias is not None:
            self.layer.bias.add_(D[:, -1], alpha=-lr)


class NGF(LinearLayerOptimizer):
    """The NGF update (eq. 5) as a ``torch.optim.Optimizer`` for one ``nn.Linear`` layer, for your own training loop.

    The optimizer hooks the layer: the forward pass records its inputs ``h`` and the backward pass the gradient of the
    loss w.r.t. its outputs. For a loss that is the *mean* cross-entropy over the batch (plus any penalty on the
    layer's parameters, such as eq. 3's regulariser), ``-B * dL/dz_j = e_{y_j} - p_j``, so the per-sample gradients of
    eq. 6 come for free, and ``step`` applies ``theta <- theta - lr (F + damping I)^{-1} theta.grad`` exactly (Woodbury).

    >>> layer = torch.nn.Linear(8, 3)
    >>> opt = NGF(layer, lr=0.01, damping=1e-3)
    >>> h, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    >>> opt.zero_grad(); torch.nn.functional.cross_entropy(layer(h), y).backward(); opt.step()
    """

    def __init__(self, layer: torch.nn.Linear, lr: float = 0.01, damping: float = 1e-3):
        super().__init__(layer, dict(lr=lr, damping=damping))

    @torch.no_grad()
    def step(self, closure=None):
        loss, Hb, gout, V = self.captured(closure)
        group = self.param_groups[0]
        R = -gout * len(Hb)                                           # (B, C) = E - P for mean CE
        self.apply_update(woodbury_direction(R.to(V.dtype), Hb.to(V.dtype), V, group["damping"]), group["lr"])
        return loss


# ------------------------------------------------------------------------------------------ choosing the damping

DAMPING_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def select_damping(model, x, y, *, grid=DAMPING_GRID, folds: int = 5, seed: int = 0, dtype=torch.float64,
                   **purify_kw):
    """Choose NGF's damping on the clean validation data only, by ``folds``-fold cross-validation.

    For every damping in ``grid``, NGF runs on (folds - 1)/folds of the validation images (cached features) and
    is scored on the held-out fold: mean accuracy, ties broken by the lower mean cross-entropy. Returns
    ``(best_damping, table)`` where ``table`` lists ``{"damping", "cv_acc", "cv_ce"}`` per grid value. The test set
    is never used: this is the choice a defender can make.
    """
    fc, y = _check_inputs(model, x, y)
    dev = next(model.parameters()).device
    feats = features(model, x.to(dev)).to(dtype)
    theta0 = classifier_theta(fc, dtype)
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = perm.chunk(folds)
    y = y.to(dev)
    table = []
    for lam in grid:
        accs, ces = [], []
        for k in range(folds):
            te = parts[k].to(dev)
            tr = torch.cat([parts[j] for j in range(folds) if j != k]).to(dev)
            try:
                res = purify_classifier(theta0, feats[tr], y[tr], damping=lam, **purify_kw)
            except FloatingPointError:                     # a diverged run scores worst
                accs.append(0.0)
                ces.append(math.inf)
                continue
            hb = torch.cat([feats[te], torch.ones(len(te), 1, dtype=dtype, device=dev)], 1)
            z = hb @ res.theta.T
            accs.append((z.argmax(1) == y[te]).double().mean().item() * 100)
            ces.append(F.cross_entropy(z, y[te]).item())
        table.append({"damping": lam, "cv_acc": sum(accs) / folds, "cv_ce": sum(ces) / folds})
    best = max(table, key=lambda r: (round(r["cv_acc"], 6), -r["cv_ce"]))
    return best["damping"], table
