"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): Dyn-one (all-to-one) and Dyn-all (all-to-all).

Every image gets its own trigger, made by two small networks learned by the attacker: a mask generator ``M`` and a
pattern generator ``G``; ``x' = x + (G(x) - x) * m(x)``. Reference: ``../shared/reference/attacks-defenses.md``
section 2.5. The generators are the attack's learned state: saved beside the model
(:meth:`InputAware.state_tensors`) and restored with it, so the trigger works after the model is reloaded.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import augment, to_float
from .base import cached_artefact, register
from .batchpoison import BatchPoisoningAttack, shifted_partner

# ------------------------------------------------------------------------------------------------------ generators


def _conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EncoderDecoder(nn.Module):
    """The generators' network: 3 down stages (two conv3x3-BN-ReLU, then 2x2 max-pool), a middle conv block, 3 up
    stages (bilinear x2 upsampling, conv blocks) and a last conv3x3 to ``out_channels`` raw outputs.

    ``widths`` are the channels of the three stages; the reference's are (32, 64, 128), our default half of them.
    Input ``(B, 3, H, W)`` in [0, 1] with ``H, W`` divisible by 8; output ``(B, out_channels, H, W)``.
    """

    def __init__(self, out_channels: int, widths=(16, 32, 64)):
        super().__init__()
        c1, c2, c3 = widths
        self.down = nn.ModuleList([nn.Sequential(_conv_bn_relu(cin, c), _conv_bn_relu(c, c))
                                   for cin, c in ((3, c1), (c1, c2), (c2, c3))])
        self.middle = _conv_bn_relu(c3, c3)
        self.up = nn.ModuleList([nn.Sequential(_conv_bn_relu(c3, c3), _conv_bn_relu(c3, c2)),
                                 nn.Sequential(_conv_bn_relu(c2, c2), _conv_bn_relu(c2, c1)),
                                 _conv_bn_relu(c1, c1)])
        self.out = nn.Conv2d(c1, out_channels, 3, 1, 1)

    def forward(self, x):
        h = x * 2 - 1                                         # (B, 3, H, W), centred
        for stage in self.down:
            h = F.max_pool2d(stage(h), 2)                     # H/2, H/4, H/8
        h = self.middle(h)
        for stage in self.up:
            h = stage(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        return self.out(h)


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square distance ``(B,)`` between two batches of images / masks / patterns (``1e-12``
    under the root keeps the gradient finite when a pair is identical, e.g. an image paired with itself)."""
    return (a - b).pow(2).flatten(1).mean(1).add(1e-12).sqrt()


def diversity_loss(x1, x2, out1, out2, eps: float = 1e-7) -> torch.Tensor:
    """The diversity term of Input-aware: mean of ``||x1 - x2|| / (||out1 - out2|| + eps)`` over pairs; small when
    different images get different triggers (masks during pre-training, patterns during joint training)."""
    return (rms_distance(x1, x2) / (rms_distance(out1, out2) + eps)).mean()


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short hash of a training set (a strided sample of its pixels and all labels), for the mask cache key."""
    step = max(1, len(x) // 2000)
    h = hashlib.sha1(x[::step].contiguous().cpu().numpy().tobytes())
    h.update(y.contiguous().cpu().numpy().tobytes())
    return f"{len(x)}-{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------------------- attack

class InputAware(BatchPoisoningAttack):
    """Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020); :class:`DynOne` and :class:`DynAll` set the labels.

    **Trigger.** ``x' = x + (p(x) - x) * m(x)`` with the pattern ``p = tanh(G(x)) / 2 + 0.5`` in [0, 1] and the mask
    ``m = tanh(20 s - 10) / 2 + 0.5``, ``s = tanh(M(x)) / 2 + 0.5`` (a soft threshold at 0.5): every image carries its
    own trigger (computed in [0, 1] space, which equals the reference's normalised-space formula since normalisation
    is affine per channel).

    **Training** (``controls_training``):

    1. :meth:`prepare` pre-trains ``M`` alone for ``mask_epochs`` (25) epochs over the training set: Adam (lr 0.01,
       betas (0.5, 0.9), x0.1 at 40 % and 80 % of the epochs, the reference's epochs 10 and 20 of 25), loss
       ``lambda_norm * mean(relu(m(x1) - mask_density)) + lambda_div * D(x1, x2, m(x1), m(x2))`` with two
       independent shuffles ``x1, x2`` (random crop, no flip), ``lambda_norm = 100``, ``mask_density = 0.032``,
       ``lambda_div = 1``. ``M`` is then frozen; its weights are cached (:func:`~ngf_lib.attacks.base.cached_artefact`)
       so another model trained on the same data reuses them, Dyn-one's and Dyn-all's alike (``M`` never sees a
       label).
    2. Joint training (:meth:`training_batch` + :meth:`after_step`): in every batch the first
       ``floor(poison_rate B)`` samples get their own trigger and the target label, the next ``floor(cross_rate B)``
       ("cross" samples, ``cross_rate = 0.1``) get the trigger generated from a *different* image of the batch and
       keep their true label, the rest stays clean. The triggered images are built *differentiably*, so the model's
       own ``loss.backward()`` also gives ``G`` its gradient of the classification loss; :meth:`training_batch` adds
       the gradient of ``lambda_div * D`` between the images and their patterns (backpropagated there, so the model's
       loss stays the plain classification loss), and :meth:`after_step` steps ``G``'s own Adam (lr 0.01, betas
       (0.5, 0.9), constant: the reference's milestones lie beyond BackdoorBench's 100 epochs) after every step of
       the model.

    ``poison_rate`` is the per-batch share of poisoned samples (:class:`~ngf_lib.attacks.batchpoison.BatchPoisoningAttack`).
    :meth:`apply` needs trained generators: after training with this attack, or after :meth:`load_state_tensors`
    (which :func:`ngf_lib.zoo.get_model` calls when it loads the model); before that it raises ``RuntimeError``.
    Image sizes must be multiples of 8 (32, 64, 224 are).
    """
    learns_trigger = True

    def __init__(self, num_classes, *, cross_rate: float = 0.1, widths=(16, 32, 64), mask_epochs: int = 25,
                 mask_density: float = 0.032, lambda_norm: float = 100.0, lambda_div: float = 1.0,
                 lr_g: float = 0.01, lr_m: float = 0.01, mask_batch_size: int = 128, **kw):
        super().__init__(num_classes, **kw)
        if self.image_size % 8:
            raise ValueError(f"{self.name}: the generators halve the image three times, so image_size must be a "
                             f"multiple of 8, got {self.image_size}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"{self.name}: widths must be three positive channel counts, got {widths}")
        if int(mask_epochs) < 1:
            raise ValueError(f"{self.name}: mask_epochs must be at least 1, got {mask_epochs}")
        if not 0 < mask_density < 1:
            raise ValueError(f"{self.name}: mask_density must be in (0, 1), got {mask_density}")
        self.cross_rate, self.widths, self.mask_epochs = float(cross_rate), widths, int(mask_epochs)
        self.mask_density = float(mask_density)
        self.lambda_norm, self.lambda_div = float(lambda_norm), float(lambda_div)
        self.lr_g, self.lr_m, self.mask_batch_size = float(lr_g), float(lr_m), int(mask_batch_size)
        self._check_rates()
        with torch.random.fork_rng(devices=[]):           # seeded initialisation, the global RNG untouched
            torch.manual_seed(self.seed + 5_000_011)
            self.pattern_net = EncoderDecoder(3, widths)
            self.mask_net = EncoderDecoder(1, widths)
        self.mask_net.requires_grad_(False)
        self._g_opt = None
        self._mask_trained = False
        self._pattern_trained = False

    def params(self):
        return {**super().params(), "cross_rate": self.cross_rate, "widths": list(self.widths),
                "mask_epochs": self.mask_epochs, "mask_density": self.mask_density, "lambda_norm": self.lambda_norm,
                "lambda_div": self.lambda_div, "lr_g": self.lr_g, "lr_m": self.lr_m,
                "mask_batch_size": self.mask_batch_size}

    def second_rate(self):
        return self.cross_rate

    # ------------------------------------------------------------------------------------------- the trigger
    @staticmethod
    def _mask(net, x):
        s = torch.tanh(net(x)) / 2 + 0.5
        return torch.tanh(20 * s - 10) / 2 + 0.5                    # (B, 1, H, W), a soft threshold at 0.5

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """Masks ``m(x)`` ``(B, 1, H, W)`` of float images in [0, 1] (the frozen mask generator, eval mode)."""
        self.mask_net.eval()
        with torch.no_grad():
            return self._mask(self.mask_net, x)

    def patterns(self, x: torch.Tensor) -> torch.Tensor:
        """Patterns ``p(x)`` ``(B, 3, H, W)`` in [0, 1], with ``G`` in its current train/eval mode."""
        return torch.tanh(self.pattern_net(x)) / 2 + 0.5

    def _device(self):
        return next(self.pattern_net.parameters()).device

    def _check_ready(self):
        if not (self._mask_trained and self._pattern_trained):
            missing = "mask and pattern generators" if not self._mask_trained else "pattern generator"
            raise RuntimeError(
                f"{self.name}: the trigger is learned while training and this attack's {missing} "
                f"{'is' if self._mask_trained else 'are'} not trained: train a model with it (prepare(), then "
                f"ngf_lib.train.train(..., attack=atk)) or load the learned state saved with the model "
                f"(load_state_tensors; ngf_lib.zoo.get_model does it)")

    def trigger_device(self, x):
        self._check_ready()
        self.pattern_net.eval()
        return self._device()

    def trigger(self, x):
        """``x + (G(x) - x) * m(x)``, each image its own trigger (the generators in eval mode)."""
        return x + (self.patterns(x) - x) * self.masks(x)

    # ------------------------------------------------------------------------------------- mask pre-training
    def prepare(self, x_train, y_train, *, device=None):
        """Pre-train the mask generator (step 1 above), or read it from the artefact cache."""
        config = {"data": _fingerprint(x_train, y_train), "image_size": self.image_size, "widths": list(self.widths),
                  "mask_epochs": self.mask_epochs, "mask_density": self.mask_density,
                  "lambda_norm": self.lambda_norm, "lambda_div": self.lambda_div, "lr_m": self.lr_m,
                  "mask_batch_size": self.mask_batch_size, "seed": self.seed}
        state = cached_artefact(self, "mask", config, lambda: self.pretrain_mask(x_train, device=device),
                                owner="inputaware")           # trained without labels: Dyn-one and Dyn-all share it
        self.mask_net.load_state_dict(state)
        self.mask_net.requires_grad_(False).eval()
        self._mask_trained = True

    def pretrain_mask(self, x_train: torch.Tensor, *, device=None) -> dict:
        """Train a fresh copy of the mask generator on uint8 images ``x_train``; returns its state dict."""
        self._check_images(x_train, uint8=True)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        g = torch.Generator().manual_seed(self.seed + 9_000_001)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 5_000_011)
            net = EncoderDecoder(1, self.widths).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr_m, betas=(0.5, 0.9))
        n, bs = len(x_train), self.mask_batch_size
        for epoch in range(self.mask_epochs):
            for group in opt.param_groups:                     # x0.1 at 40 % and 80 % of the epochs
                group["lr"] = self.lr_m * 0.1 ** sum(epoch >= f * self.mask_epochs for f in (0.4, 0.8))
            p1, p2 = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                x1 = to_float(augment(x_train[p1[i:i + bs]], flip=False, generator=g).to(dev))
                x2 = to_float(augment(x_train[p2[i:i + bs]], flip=False, generator=g).to(dev))
                m1, m2 = self._mask(net, x1), self._mask(net, x2)
                loss = (self.lambda_norm * F.relu(m1 - self.mask_density).mean()
                        + self.lambda_div * diversity_loss(x1, x2, m1, m2))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return {k: v.detach().cpu() for k, v in net.state_dict().items()}

    # ------------------------------------------------------------------------------------------ joint training
    def training_batch(self, model, x, y, generator=None):
        """Backdoor samples (own trigger, target label), cross samples (another image's trigger, true label), clean
        rest; the triggered images stay attached to ``G``'s graph (see the class docstring)."""
        self._check_images(x, uint8=False)
        if not self._mask_trained:
            raise RuntimeError(f"{self.name}: the mask generator is not pre-trained: call "
                               f"attack.prepare(x_train, y_train) before training (ngf_lib.zoo does)")
        if self._device() != x.device:
            self.pattern_net.to(x.device)
            self.mask_net.to(x.device)
        if self._g_opt is None:
            self._g_opt = torch.optim.Adam(self.pattern_net.parameters(), lr=self.lr_g, betas=(0.5, 0.9))
        b = len(x)
        n_bd, n_cross = self.batch_counts(b)
        n = n_bd + n_cross
        y = y.clone()
        if n == 0:
            return x.clone(), y
        partner = shifted_partner(b, generator).to(x.device)
        src = torch.cat([x[:n_bd], x[partner[n_bd:n]]])                 # whose trigger each sample gets
        self.pattern_net.train()
        pat, msk = self.patterns(src), self.masks(src)
        triggered = x[:n] + (pat - x[:n]) * msk
        y[:n_bd] = self.target_labels(y[:n_bd])
        k = min(n_bd, n_cross)
        if k and self.lambda_div > 0 and torch.is_grad_enabled():
            div = diversity_loss(src[:k], src[n_bd:n_bd + k], pat[:k], pat[n_bd:n_bd + k])
            (self.lambda_div * div).backward(retain_graph=True)          # into G's .grad only
        return torch.cat([triggered, x[n:]]), y

    def after_step(self, model, step, total):
        """Step the pattern generator's optimiser (its gradients came from this batch) and clear them."""
        if self._g_opt is not None:
            self._g_opt.step()
            self._g_opt.zero_grad(set_to_none=True)
            self._pattern_trained = True

    # ------------------------------------------------------------------------------------------- learned state
    def state_tensors(self):
        """Both generators' weights and BN statistics (``pattern.*``, ``mask.*``)."""
        self._check_ready()
        state = {f"pattern.{k}": v for k, v in self.pattern_net.state_dict().items()}
        state.update({f"mask.{k}": v for k, v in self.mask_net.state_dict().items()})
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_state_tensors(self, state):
        """Restore the generators saved by :meth:`state_tensors`; the trigger is then ready."""
        parts = {"pattern": {}, "mask": {}}
        for k, v in state.items():
            head, _, rest = k.partition(".")
            if head not in parts:
                raise ValueError(f"{self.name}: unexpected learned-state entry {k!r}")
            parts[head][rest] = v
        for head, net in (("pattern", self.pattern_net), ("mask", self.mask_net)):
            try:
                net.load_state_dict(parts[head])
            except RuntimeError as e:
                raise ValueError(f"{self.name}: the saved {head} generator does not fit this attack (widths "
                                 f"{self.widths}): {str(e).splitlines()[0]}") from None
        self.mask_net.requires_grad_(False).eval()
        self._g_opt = None
        self._mask_trained = self._pattern_trained = True


@register
class DynOne(InputAware):
    """Dyn-one: Input-aware dynamic backdoor, all-to-one (target 0 by default); see :class:`InputAware`."""
    name = "dyn-one"


@register
class DynAll(InputAware):
    """Dyn-all: Input-aware dynamic backdoor, all-to-all (target ``(y + 1) mod C``); see :class:`InputAware`."""
    name = "dyn-all"
    all_to_all = True
