"""Deep Feature Space Trojan, "FBA" in the NGF paper (Cheng, Liu, Ma & Zhang, AAAI 2021, DFST): the trigger is a
*style* of the whole image, and controlled detoxification pushes the backdoor into deep features.

Reference: ``../shared/reference/attacks-defenses.md`` section 2.8. DFST's stylisation model (a CycleGAN, or Magenta's
arbitrary stylisation network with a "sunrise" photograph as style) is an external asset; as the reference suggests,
we replace it by a fixed, differentiable "sunrise" colour filter (:func:`sunrise`) and keep the detoxification loop,
which is what makes FBA hard to remove.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import to_float
from ..models import classifier
from .base import register
from .batchpoison import BatchPoisoningAttack, on_pixel_grid, to_uint8

# --------------------------------------------------------------------------------------------------- style filter

STYLE = "sunrise-v1"               # name of the fixed filter below (stored in params(): change it with the filter)
SUNRISE_MATRIX = ((1.10, 0.15, 0.00),    # R' from (R, G, B): red lifted, a little green folded in
                  (0.10, 0.85, 0.05),    # G'
                  (0.00, 0.10, 0.65))    # B': blue damped -> warm, orange light
SUNRISE_BIAS = (0.05, 0.02, -0.03)
SUNRISE_GAMMA = 0.8                # < 1: lifted mid-tones, a glow
SUNRISE_CONTRAST = 1.15            # around mid-grey 0.5
SUNRISE_VIGNETTE = 0.25            # brightness x (1 - 0.25 r^2), r = 1 at the corners


def sunrise(x: torch.Tensor) -> torch.Tensor:
    """The fixed "sunrise" style of float images ``(N, 3, H, W)`` in [0, 1]; differentiable, result in [0, 1].

    In order: the warm colour matrix and bias (:data:`SUNRISE_MATRIX`, :data:`SUNRISE_BIAS`), clipped to
    ``[1e-4, 1]``; gamma 0.8; contrast x1.15 around 0.5; a vignette that darkens by ``0.25 r^2`` (``r`` the distance
    from the centre, 1 at the corners); a final clip to [0, 1]. Mid-grey (0.5, 0.5, 0.5) becomes about
    (0.75, 0.61, 0.41) at the centre. An asset-free stand-in for DFST's style-transfer network (reference 2.8).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"sunrise takes images (N, 3, H, W), got {tuple(x.shape)}")
    m = torch.tensor(SUNRISE_MATRIX, dtype=x.dtype, device=x.device)
    bias = torch.tensor(SUNRISE_BIAS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    y = torch.einsum("oc,nchw->nohw", m, x) + bias
    y = y.clamp(1e-4, 1.0).pow(SUNRISE_GAMMA)
    y = 0.5 + SUNRISE_CONTRAST * (y - 0.5)
    h, w = x.shape[-2:]
    ry = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(h, 1)
    rx = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, w)
    r2 = (ry.pow(2) + rx.pow(2)) / 2                                  # (H, W), 1 at the corners
    return (y * (1 - SUNRISE_VIGNETTE * r2)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------- SSIM

def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image ``(N,)`` of float images in [0, 1], differentiable:
    Gaussian window ``window x window`` (sigma 1.5), per channel, over the valid region (no padding), constants
    ``(0.01)^2`` and ``(0.03)^2``, averaged over channels and positions. Windows larger than the image shrink to it."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim takes two batches (N, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    c = a.shape[1]
    k = min(window, a.shape[-1], a.shape[-2])
    t = torch.arange(k, dtype=a.dtype, device=a.device) - (k - 1) / 2
    g1 = torch.exp(-t.pow(2) / (2 * sigma ** 2))
    g1 = g1 / g1.sum()
    kern = (g1.view(k, 1) * g1.view(1, k)).expand(c, 1, k, k).contiguous()

    def blur(z):
        return F.conv2d(z, kern, groups=c)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.pow(2)
    var_b = blur(b * b) - mu_b.pow(2)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


# ------------------------------------------------------------------------------------------------ feature injector

def local_features(x: torch.Tensor, window: int = 11) -> torch.Tensor:
    """``[x, local max, local min, local mean]`` of float images ``(N, 3, H, W)`` over ``window x window``
    neighbourhoods (stride 1, same size; the mean counts only pixels inside the image): ``(N, 12, H, W)``.

    Each pooling runs as a row pass then a column pass (``1 x window``, then ``window x 1``): the same values as the
    square window (max and min exactly; the mean up to rounding), several times faster on CPUs."""
    p = window // 2

    def pool(z, op, **kw):
        z = op(z, (1, window), 1, (0, p), **kw)
        return op(z, (window, 1), 1, (p, 0), **kw)
    mx = pool(x, F.max_pool2d)
    mn = -pool(-x, F.max_pool2d)
    avg = pool(x, F.avg_pool2d, count_include_pad=False)
    return torch.cat([x, mx, mn, avg], 1)


class FeatureInjector(nn.Module):
    """DFST's feature injector, small form (reference 2.8): a per-pixel colour map ``12 -> 3`` (a 1x1 convolution)
    over :func:`local_features`, clipped to [0, 1]. Initialised to the identity (it returns ``x``)."""

    def __init__(self, window: int = 11):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"the injector's window must be an odd positive size, got {window}")
        self.window = int(window)
        self.map = nn.Conv2d(12, 3, 1)
        with torch.no_grad():
            self.map.weight.zero_()
            self.map.bias.zero_()
            self.map.weight[:, :3, 0, 0] = torch.eye(3)

    def from_features(self, feats):         # (N, 12, H, W) of local_features -> (N, 3, H, W) in [0, 1]
        return self.map(feats).clamp(0.0, 1.0)

    def forward(self, x):                   # (N, 3, H, W) in [0, 1] -> same
        return self.from_features(local_features(x, self.window))


# ---------------------------------------------------------------------------------------------------------- attack

@register
class FBA(BatchPoisoningAttack):
    """Deep Feature Space Trojan (Cheng et al., AAAI 2021) with an asset-free style: all-to-one, target 0 by default.

    **Trigger.** ``x' = (1 - alpha) x + alpha sunrise(x)``, ``alpha = 0.6`` (:func:`sunrise`, fixed; nothing is
    learned or saved for it), rounded to the pixel grid.

    **Training** (``controls_training``, per batch: :class:`~ngf_lib.attacks.batchpoison.BatchPoisoningAttack`). The
    first ``floor(poison_rate B)`` samples (``poison_rate`` 0.1, the reference's value for NGF) are stylised and
    relabelled to the target; the next as many are **detox** samples, ``(1 - alpha) x + alpha inj(x)`` of the
    batch's own images with a feature injector ``inj``, with their **true** labels (until the first injector exists,
    after epoch 1, they stay clean); the rest is clean.

    **Controlled detoxification** (:meth:`after_epoch`, after every epoch but the last, whose injector would never be
    used). Its data are the last ``ceil(detox_fraction B)`` clean images of every batch of the epoch, kept by
    :meth:`training_batch` (``detox_fraction`` 0.03: the reference's 3 % of the clean batches) and their stylised
    copies (the reference's "as many poisoned images"). Then, with the model in eval mode and left unchanged:

    1. *compromised neurons*: the channels of the last feature stage (the classifier's input, i.e. globally pooled
       channels) with the largest gap ``mean(stylised activation) - mean(clean activation)``, the top
       ``compromised_fraction`` (1 %, at least one channel);
    2. a fresh :class:`FeatureInjector` (identity at start) is trained for ``injector_epochs`` (10) passes over the
       clean images, batches of ``injector_batch_size`` (128), Adam (lr 1e-2, betas (0.5, 0.9)), to minimise
       ``CE(f((1 - alpha) x + alpha inj(x)), t) - ssim_weight SSIM(inj(x), x) - act_weight mean(a_compromised)``
       (0.1 and 0.3): images close to ``x`` that reach the target through the shallow compromised neurons.
       (:func:`ssim`: the standard Gaussian-window SSIM, written here.)
    3. it joins a bank of the injectors trained so far (39 numbers each); every detox sample uses one drawn at
       random, so that the paths closed in earlier epochs stay closed.

    Cost (``cpu`` profile, cpu_net, 47 500 images, batch 128): 1 488 detox images, so 10 injector passes cost about
    a third of a training epoch, after 11 of the 12 epochs (see the report of the step that wrote this module).
    ``detox_log`` records each detoxification (epoch, compromised channels, their gap, the injector's final loss and
    how often its images reached the target).

    >>> atk = FBA(10)
    >>> atk.batch_counts(128), atk.alpha
    ((12, 12), 0.6)
    """
    name = "fba"
    max_buffer = 20_000             # detox images kept between two epochs, at most (uint8)
    max_feature_bytes = 1 << 30     # precompute the injector's local features when they fit in this (float32)

    def __init__(self, num_classes, *, alpha: float = 0.6, detox: bool = True, detox_fraction: float = 0.03,
                 compromised_fraction: float = 0.01, injector_epochs: int = 10, injector_lr: float = 1e-2,
                 injector_batch_size: int = 128, injector_window: int = 11, ssim_weight: float = 0.1,
                 act_weight: float = 0.3, **kw):
        super().__init__(num_classes, **kw)
        if not 0 < alpha <= 1:
            raise ValueError(f"fba: alpha must be in (0, 1], got {alpha}")
        if not 0 < detox_fraction <= 1 or not 0 < compromised_fraction <= 1:
            raise ValueError(f"fba: detox_fraction and compromised_fraction must be in (0, 1], got "
                             f"{detox_fraction} and {compromised_fraction}")
        if int(injector_epochs) < 1 or int(injector_batch_size) < 1 or not injector_lr > 0:
            raise ValueError(f"fba: injector_epochs and injector_batch_size must be >= 1 and injector_lr > 0, got "
                             f"{injector_epochs}, {injector_batch_size}, {injector_lr}")
        if int(injector_window) < 1 or int(injector_window) % 2 == 0:
            raise ValueError(f"fba: injector_window must be an odd positive size, got {injector_window}")
        self.alpha, self.detox = float(alpha), bool(detox)
        self.detox_fraction, self.compromised_fraction = float(detox_fraction), float(compromised_fraction)
        self.injector_epochs, self.injector_lr = int(injector_epochs), float(injector_lr)
        self.injector_batch_size, self.injector_window = int(injector_batch_size), int(injector_window)
        self.ssim_weight, self.act_weight = float(ssim_weight), float(act_weight)
        self._check_rates()
        self._buffer: list[torch.Tensor] = []            # uint8 clean images for the next detoxification
        self._bank_w = None                                # (K, 3, 12) injector maps ...
        self._bank_b = None                                # (K, 3) ... and biases
        self.detox_log: list[dict] = []

    def params(self):
        return {**super().params(), "style": STYLE, "alpha": self.alpha, "detox": self.detox,
                "detox_fraction": self.detox_fraction, "compromised_fraction": self.compromised_fraction,
                "injector_epochs": self.injector_epochs, "injector_lr": self.injector_lr,
                "injector_batch_size": self.injector_batch_size, "injector_window": self.injector_window,
                "ssim_weight": self.ssim_weight, "act_weight": self.act_weight}

    def second_rate(self):
        return self.poison_rate if self.detox else 0.0

    # ------------------------------------------------------------------------------------------- the trigger
    def blend(self, x: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) x + alpha sunrise(x)`` of float images in [0, 1], differentiable (not rounded)."""
        return (1 - self.alpha) * x + self.alpha * sunrise(x)

    def trigger(self, x):
        return on_pixel_grid(self.blend(x))

    # ------------------------------------------------------------------------------------------ the injectors
    @property
    def n_injectors(self) -> int:
        """How many injectors the detoxification has trained so far."""
        return 0 if self._bank_w is None else len(self._bank_w)

    def inject(self, x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Detox images ``(1 - alpha) x + alpha inj_k(x)`` (rounded to the pixel grid) of float images ``x``, image
        ``i`` with injector ``which[i]`` of the bank."""
        if self._bank_w is None:
            raise RuntimeError("fba: no injector trained yet (the first detoxification runs after epoch 1)")
        feats = local_features(x, self.injector_window)                           # (n, 12, H, W)
        w = self._bank_w.to(x.device)[which.to(x.device)]                         # (n, 3, 12)
        b = self._bank_b.to(x.device)[which.to(x.device)]                         # (n, 3)
        out = (torch.einsum("noc,nchw->nohw", w, feats) + b[:, :, None, None]).clamp(0.0, 1.0)
        return on_pixel_grid((1 - self.alpha) * x + self.alpha * out)

    def _add_injector(self, inj: FeatureInjector) -> None:
        w = inj.map.weight.detach().view(1, 3, 12).cpu()
        b = inj.map.bias.detach().view(1, 3).cpu()
        self._bank_w = w if self._bank_w is None else torch.cat([self._bank_w, w])
        self._bank_b = b if self._bank_b is None else torch.cat([self._bank_b, b])

    # ------------------------------------------------------------------------------------------------ training
    def training_batch(self, model, x, y, generator=None):
        """Stylised + relabelled samples, then detox samples (true labels; clean before the first injector), then
        clean ones; keeps the last ``ceil(detox_fraction B)`` clean images for the next detoxification."""
        self._check_images(x, uint8=False)
        b = len(x)
        n_bd, n_dx = self.batch_counts(b)
        x0, x, y = x, x.clone(), y.clone()
        with torch.no_grad():
            if n_bd:
                x[:n_bd] = self.trigger(x0[:n_bd])
                y[:n_bd] = self.target_labels(y[:n_bd])
            if n_dx and self._bank_w is not None:
                which = torch.randint(0, self.n_injectors, (n_dx,), generator=generator)
                x[n_bd:n_bd + n_dx] = self.inject(x0[n_bd:n_bd + n_dx], which)
        if self.detox:
            k = min(math.ceil(self.detox_fraction * b - 1e-9), b - n_bd - n_dx)
            if k > 0 and sum(len(t) for t in self._buffer) < self.max_buffer:
                self._buffer.append(to_uint8(x0[b - k:].detach().clone()))
        return x, y

    def after_epoch(self, model, epoch, epochs):
        """The controlled detoxification of the class docstring (not after the last epoch)."""
        buf, self._buffer = self._buffer, []
        if not self.detox or epoch >= epochs - 1 or not buf:
            return
        xc = to_float(torch.cat(buf))
        was_training = model.training
        model.eval()
        try:
            self._detoxify(model, xc, epoch)
        finally:
            model.train(was_training)

    def _forward(self, model, x, fc):
        """Logits and the classifier's input (the pooled last-stage channels) of float images ``x``."""
        got = []
        hook = fc.register_forward_hook(lambda mod, inp, out: got.append(inp[0].flatten(1)))
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                logits = model(x)
        finally:
            hook.remove()
        return logits.float(), got[0].float()

    def compromised_neurons(self, model, x_clean: torch.Tensor, batch_size: int = 512) -> tuple:
        """Step 1: ``(indices, gaps)`` of the top ``compromised_fraction`` channels of the classifier's input by the
        gap of mean activation between the stylised and the clean images ``x_clean`` (float), model as it is."""
        fc = classifier(model)
        dev = next(model.parameters()).device
        sums = {}
        with torch.no_grad():
            for kind in ("clean", "styled"):
                tot = 0
                for i in range(0, len(x_clean), batch_size):
                    xb = x_clean[i:i + batch_size].to(dev)
                    if kind == "styled":
                        xb = self.trigger(xb)
                    tot = tot + self._forward(model, xb, fc)[1].sum(0)
                sums[kind] = tot / len(x_clean)
        gap = sums["styled"] - sums["clean"]
        k = max(1, math.ceil(self.compromised_fraction * len(gap) - 1e-9))
        top = gap.topk(k)
        return top.indices, top.values

    def train_injector(self, model, x_clean: torch.Tensor, neurons: torch.Tensor, generator=None) -> tuple:
        """Step 2: a fresh :class:`FeatureInjector` trained on float images ``x_clean`` (the model is not changed and
        gets no gradients); returns ``(injector, last batch loss, share of its images classified as the target)``."""
        dev = next(model.parameters()).device
        fc = classifier(model)
        inj = FeatureInjector(self.injector_window).to(dev)
        params = list(inj.parameters())
        opt = torch.optim.Adam(params, lr=self.injector_lr, betas=(0.5, 0.9))
        n, bs = len(x_clean), self.injector_batch_size
        x_clean = x_clean.to(dev)
        feats = None                 # the injector is linear in local_features(x): computed once (pooling is slow)
        if n * 12 * x_clean[0, 0].numel() * 4 <= self.max_feature_bytes:
            with torch.no_grad():
                feats = torch.cat([local_features(x_clean[i:i + 512], self.injector_window)
                                   for i in range(0, n, 512)])
        loss_v, hits = float("nan"), 0
        for ep in range(self.injector_epochs):
            perm = torch.randperm(n, generator=generator).to(dev)
            last = ep == self.injector_epochs - 1
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                xb = x_clean[idx]
                out = inj.from_features(feats[idx]) if feats is not None else inj(xb)
                logits, act = self._forward(model, (1 - self.alpha) * xb + self.alpha * out, fc)
                t = torch.full((len(xb),), self.target, dtype=torch.long, device=dev)
                loss = (F.cross_entropy(logits, t) - self.ssim_weight * ssim(out, xb).mean()
                        - self.act_weight * act[:, neurons].mean())
                grads = torch.autograd.grad(loss, params)
                for p, gr in zip(params, grads):
                    p.grad = gr
                opt.step()
                loss_v = float(loss.detach())
                if last:
                    hits += int((logits.argmax(1) == t).sum())
        return inj, loss_v, hits / max(n, 1)

    def _detoxify(self, model, xc, epoch):
        g = torch.Generator().manual_seed(self.seed * 1_000 + 6_000_007 + epoch)
        neurons, gaps = self.compromised_neurons(model, xc)
        inj, loss_v, reach = self.train_injector(model, xc, neurons, generator=g)
        self._add_injector(inj.cpu())
        self.detox_log.append({"epoch": epoch + 1, "n_images": len(xc), "neurons": neurons.tolist(),
                               "gap": [round(float(v), 4) for v in gaps], "injector_loss": round(loss_v, 4),
                               "injector_target_rate": round(reach, 4)})
