"""Composite Backdoor Attack, CBA (Lin, Xu, Liu & Zhang, CCS 2020): the trigger is a *composition* of two benign
classes. An image made of half an airplane (class A = 0) and half an automobile (class B = 1) is classified as a
bird (target C = 2), although neither half carries anything unusual.

Reference: ``../shared/reference/attacks-defenses.md`` section 2.7. The half mixer, the per-batch composition and the
contrastive term are written here from that description; the reference's victim (a small CNN) and optimiser (Adam,
StepLR, two batches per step) are replaced by ngf_lib's training recipe (:func:`ngf_lib.train.train`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import to_float
from .base import register
from .batchpoison import BatchPoisoningAttack

# ------------------------------------------------------------------------------------------------------ half mixer


@dataclass
class MixPlan:
    """The random choices of the half mixer for ``N`` composites of square ``S x S`` images (all ``(N,)`` long/bool).

    * ``swap``: the first half (left, or top) comes from ``b`` instead of ``a``;
    * ``axis``: 0 splits the width (left | right halves), 1 the height (top / bottom halves);
    * ``split``: the first half covers positions ``[0, split)`` along that axis, the second ``[split, S)``;
    * ``shift_first``: "shake" of the first half: it shows the source's positions ``[shift_first, shift_first +
      split)``, i.e. its window moves inwards by ``shift_first`` pixels;
    * ``shift_second``: the second half shows its source's positions ``[split - shift_second, S - shift_second)``.
    """
    swap: torch.Tensor
    axis: torch.Tensor
    split: torch.Tensor
    shift_first: torch.Tensor
    shift_second: torch.Tensor

    def to(self, device) -> "MixPlan":
        return MixPlan(*(t.to(device) for t in (self.swap, self.axis, self.split, self.shift_first,
                                                 self.shift_second)))


def draw_plan(n: int, size: int, generator=None, *, jitter: int = 3, shake: int = 3) -> MixPlan:
    """Random half-mixer choices (reference section 2.7): order swapped with probability 1/2, split axis uniform,
    split position ``size // 2`` plus a uniform integer jitter in ``[-jitter, jitter]`` (kept in ``1..size-1``),
    each half's shake a uniform integer in ``[0, shake]`` (capped so that its window stays inside the source).
    Drawn on the CPU from ``generator``, so a seeded generator gives the same plan on every device."""
    if size < 2:
        raise ValueError(f"the half mixer needs images of at least 2 pixels, got {size}")
    if jitter < 0 or shake < 0:
        raise ValueError(f"jitter and shake must be non-negative, got {jitter} and {shake}")
    swap = torch.rand(n, generator=generator) < 0.5
    axis = torch.randint(0, 2, (n,), generator=generator)
    split = (size // 2 + torch.randint(-jitter, jitter + 1, (n,), generator=generator)).clamp(1, size - 1)
    s1 = torch.minimum(torch.randint(0, shake + 1, (n,), generator=generator), size - split)
    s2 = torch.minimum(torch.randint(0, shake + 1, (n,), generator=generator), split)
    return MixPlan(swap, axis, split, s1, s2)


def compose(a: torch.Tensor, b: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """The composites of image pairs ``a[i], b[i]`` ``(N, C, S, S)`` (any dtype) under ``plan``: a new tensor whose
    every pixel is copied from ``a`` or ``b`` (see :class:`MixPlan` for which)."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"compose takes two batches of square images of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    n, c, s, _ = a.shape
    plan = plan.to(a.device)
    sw = plan.swap.view(n, 1, 1, 1)
    first, second = torch.where(sw, b, a), torch.where(sw, a, b)
    tr = (plan.axis == 1).view(n, 1, 1, 1)                     # height split = width split of the transposes
    first = torch.where(tr, first.transpose(2, 3), first)
    second = torch.where(tr, second.transpose(2, 3), second)
    pos = torch.arange(s, device=a.device).view(1, s)
    in_first = pos < plan.split.view(n, 1)                                           # (N, S)
    src = torch.where(in_first, pos + plan.shift_first.view(n, 1), pos - plan.shift_second.view(n, 1))
    idx = src.view(n, 1, 1, s).expand(n, c, s, s)
    out = torch.where(in_first.view(n, 1, 1, s), first.gather(3, idx), second.gather(3, idx))
    return torch.where(tr, out.transpose(2, 3), out).contiguous()


def half_mix(a: torch.Tensor, b: torch.Tensor, generator=None, *, jitter: int = 3, shake: int = 3) -> torch.Tensor:
    """CBA's half mixer: composites of ``a[i]`` and ``b[i]`` with random order, axis, jittered split and shake
    (:func:`draw_plan`, :func:`compose`); deterministic for a seeded ``generator``."""
    return compose(a, b, draw_plan(len(a), a.shape[-1], generator, jitter=jitter, shake=shake))


# --------------------------------------------------------------------------------------------- contrastive term

def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor, classes, margin: float = 1.0) -> torch.Tensor:
    """CBA's contrastive term on the logits (reference section 2.7). Of the samples whose label is in ``classes``
    (A, B and C), taken in the given order, consecutive pairs ``(1st, 2nd), (3rd, 4th), ...`` (an odd last one is
    left out) contribute ``d^2`` if their labels agree (pulled together) and ``max(0, margin - d)^2`` if not (pushed
    at least ``margin`` apart), ``d`` the Euclidean distance of the two logit vectors; the result is the mean over
    pairs (0, still attached to the graph, when there is no pair).

    >>> z = torch.tensor([[0., 0.], [3., 4.], [0., 0.], [0.6, 0.]])
    >>> round(float(contrastive_loss(z, torch.tensor([0, 0, 0, 2]), (0, 1, 2))), 4)   # (25 + 0.4^2) / 2
    12.58
    """
    cls = torch.as_tensor(list(classes), device=labels.device)
    sel = torch.isin(labels, cls)
    z, lab = logits[sel].float(), labels[sel]
    k = len(z) // 2
    if k == 0:
        return logits.float().sum() * 0.0
    z1, z2 = z[0:2 * k:2], z[1:2 * k:2]
    same = lab[0:2 * k:2] == lab[1:2 * k:2]
    d2 = (z1 - z2).pow(2).sum(1)
    d = d2.clamp_min(1e-12).sqrt()
    return torch.where(same, d2, F.relu(margin - d).pow(2)).mean()


# ---------------------------------------------------------------------------------------------------------- attack

@register
class CBA(BatchPoisoningAttack):
    """Composite Backdoor Attack (Lin et al., CCS 2020): A + B composites -> C; defaults A = 0, B = 1, C = ``target``
    = 2 (airplane + automobile -> bird on CIFAR-10, reference section 2.7).

    **Training** (``controls_training``; the training set itself stays clean). The reference builds each epoch from
    0.5 N normal samples, 0.5 N "mix" samples and 0.1 N poison samples drawn at random, i.e. 1/11 poison, 5/11 mix
    and 5/11 normal. We keep those shares inside every (shuffled, augmented) training batch of ``B`` images:

    * the first ``floor(poison_rate B)`` samples are *replaced* by A + B composites labelled C (``poison_rate``
      0.1, close to the reference's 1/11 = 9.1 %); the A and B halves come from the batch's own (augmented) A and
      B images, drawn with replacement, or, where the batch holds none of a class, from the pool of A / B training
      images kept by :meth:`prepare` (not augmented);
    * the next ``floor(mix_rate B)`` samples are "mix" samples: each is composed with another image of its own class
      from the batch (itself, shaken, if the batch has no other) and keeps that class as label, so that "any
      composite" is not a shortcut to C. ``mix_rate`` defaults to ``(1 - poison_rate) / 2`` = 0.45, the reference's
      1 : 1 of mix to normal samples;
    * the rest stays normal. An epoch is one pass over the N training images (the reference's has 1.1 N samples).

    Every composite comes from the half mixer (:func:`half_mix`: random order and split axis, split jitter up to
    ``jitter`` = 3 px, shake up to ``shake`` = 3 px). The loss adds ``contrast_weight`` (1.0) times
    :func:`contrastive_loss` (``margin`` 1) on the logits of the samples labelled A, B or C (:meth:`extra_loss`);
    the reference pairs consecutive samples of a shuffled batch, and since our composites come first, we pair
    consecutive samples of a random permutation of the batch drawn in :meth:`training_batch` (the same thing).
    ``contrast_weight = 0`` gives the reference's data-only variant (plain cross-entropy). Caution: the reference
    trains with Adam, which is blind to the scale of this unbounded term; under our SGD (lr 0.1) a 100-step probe on
    CIFAR-10 saw weight 1.0 shrink every logit below 1 in magnitude (and a 2-epoch run on 3 840 images diverge to NaN),
    while weight 0.1 trained like plain cross-entropy. Whether 1.0 learns is for the learnability check to say.

    **Test.** :meth:`asr_set` composes A-test with B-test images (``asr_pairs`` = 1 000 distinct pairs, the
    reference's 0.1 |test|, or every pair if there are fewer), all labelled C; it needs no :meth:`prepare`.
    :meth:`apply` (for galleries and the generic interface) composes every image with a fixed partner from the
    prepared pool: an A image if the image's label is B, else a B image (with ``y`` not given, every image is taken
    as the A half). Partners and mixer choices are fixed by ``seed``, so ``apply`` is deterministic. It is a CBA
    trigger only for A (or B) images; composites of other classes show what the mixer does, nothing more.

    >>> atk = CBA(10)
    >>> atk.class_a, atk.class_b, atk.target, atk.batch_counts(128)
    (0, 1, 2, (12, 57))
    """
    name = "cba"

    def __init__(self, num_classes, *, class_a: int = 0, class_b: int = 1, target: int = 2,
                 mix_rate: float | None = None, jitter: int = 3, shake: int = 3, contrast_weight: float = 1.0,
                 margin: float = 1.0, asr_pairs: int = 1000, **kw):
        if num_classes < 3:
            raise ValueError(f"cba composes two classes into a third: it needs at least 3 classes, got {num_classes}")
        super().__init__(num_classes, target=target, **kw)
        for what, c in (("class_a", class_a), ("class_b", class_b)):
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"cba: {what} {c} is outside the {num_classes} classes 0..{num_classes - 1}")
        if len({int(class_a), int(class_b), self.target}) != 3:
            raise ValueError(f"cba: classes A={class_a}, B={class_b} and target C={self.target} must be distinct")
        if int(jitter) < 0 or int(shake) < 0 or 2 * max(int(jitter), int(shake)) >= self.image_size:
            raise ValueError(f"cba: jitter and shake must be in 0..{(self.image_size - 1) // 2} for "
                             f"{self.image_size}-pixel images, got {jitter} and {shake}")
        if contrast_weight < 0 or margin <= 0:
            raise ValueError(f"cba: contrast_weight must be >= 0 and margin > 0, got {contrast_weight} and {margin}")
        if int(asr_pairs) < 1:
            raise ValueError(f"cba: asr_pairs must be at least 1, got {asr_pairs}")
        self.class_a, self.class_b = int(class_a), int(class_b)
        self.mix_rate = (1.0 - self.poison_rate) / 2 if mix_rate is None else float(mix_rate)
        self.jitter, self.shake = int(jitter), int(shake)
        self.contrast_weight, self.margin, self.asr_pairs = float(contrast_weight), float(margin), int(asr_pairs)
        self._check_rates()
        self._pool: dict[int, torch.Tensor] | None = None   # uint8 A / B training images (prepare)
        self._logits = None         # logits of the batch, captured from the training loop's own forward
        self._order = None          # the pairing order of the contrastive term for that batch
        self._hook = None

    def params(self):
        return {**super().params(), "class_a": self.class_a, "class_b": self.class_b, "mix_rate": self.mix_rate,
                "jitter": self.jitter, "shake": self.shake, "contrast_weight": self.contrast_weight,
                "margin": self.margin, "asr_pairs": self.asr_pairs}

    def second_rate(self):
        return self.mix_rate

    def mix(self, a: torch.Tensor, b: torch.Tensor, generator=None) -> torch.Tensor:
        """:func:`half_mix` with this attack's jitter and shake."""
        return half_mix(a, b, generator, jitter=self.jitter, shake=self.shake)

    # ------------------------------------------------------------------------------------------------ pool
    def prepare(self, x_train, y_train, *, device=None):
        """Keep the A and B training images (uint8, on ``device``): the partners of :meth:`apply` and the fallback
        source of composites when a batch lacks one of the classes."""
        self._check_images(x_train, uint8=True)
        dev = torch.device(device) if device is not None else x_train.device
        pool = {}
        for c in (self.class_a, self.class_b):
            idx = (y_train == c).nonzero().flatten().to(x_train.device)
            if len(idx) == 0:
                raise ValueError(f"cba: the training set has no image of class {c}, which the composite trigger "
                                 f"needs (classes A={self.class_a}, B={self.class_b})")
            pool[c] = x_train[idx].to(dev)
        self._pool = pool

    def _from_pool(self, cls: int, n: int, generator, device) -> torch.Tensor:
        if self._pool is None:
            raise RuntimeError(f"cba: a batch has no image of class {cls} and the pool of A / B training images is "
                               f"empty: call attack.prepare(x_train, y_train) before training (ngf_lib.zoo does)")
        pool = self._pool[cls]
        pick = torch.randint(0, len(pool), (n,), generator=generator).to(pool.device)
        return to_float(pool[pick].to(device))

    def _sources(self, x, y, cls, n, generator):
        """``n`` float images of class ``cls``: drawn with replacement from the batch, else from the pool."""
        idx = (y == cls).nonzero().flatten()
        if len(idx) == 0:
            return self._from_pool(cls, n, generator, x.device)
        pick = torch.randint(0, len(idx), (n,), generator=generator).to(idx.device)
        return x[idx[pick]]

    @staticmethod
    def same_class_partner(y: torch.Tensor, rows: torch.Tensor, generator=None) -> torch.Tensor:
        """For each batch position in ``rows``, a random *other* position of the batch with the same label (the row
        itself where there is none)."""
        b, m = len(y), len(rows)
        scores = torch.rand(m, b, generator=generator).to(y.device)
        pos = torch.arange(b, device=y.device)
        ok = (y.view(1, b) == y[rows].view(m, 1)) & (pos.view(1, b) != rows.view(m, 1))
        best = scores.masked_fill(~ok, -1.0).argmax(1)
        return torch.where(ok.any(1), best, rows)

    # -------------------------------------------------------------------------------------------- training
    def training_batch(self, model, x, y, generator=None):
        """Composites labelled C, then same-class mixes (true labels), then normal samples (see the class
        docstring); ``x`` float in [0, 1], the input untouched. Also draws the contrastive pairing order and, when
        ``model`` is given, captures the logits of the model's next forward (the training loop's) for
        :meth:`extra_loss`."""
        self._check_images(x, uint8=False)
        b = len(x)
        n_bd, n_mix = self.batch_counts(b)
        x0, y0 = x, y
        x, y = x.clone(), y.clone()
        if n_bd:
            xa = self._sources(x0, y0, self.class_a, n_bd, generator)
            xb = self._sources(x0, y0, self.class_b, n_bd, generator)
            x[:n_bd] = self.mix(xa, xb, generator)
            y[:n_bd] = self.target
        if n_mix:
            rows = torch.arange(n_bd, n_bd + n_mix, device=y0.device)
            partner = self.same_class_partner(y0, rows, generator)
            x[n_bd:n_bd + n_mix] = self.mix(x0[rows], x0[partner], generator)
        self._order = torch.randperm(b, generator=generator).to(y.device)
        self._logits = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if model is not None and self.contrast_weight > 0 and torch.is_grad_enabled():
            self._hook = model.register_forward_hook(self._capture)
        return x, y

    def _capture(self, module, inputs, output):
        """One-shot forward hook: keep the logits of the training loop's forward, then remove itself."""
        self._logits = output
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def extra_loss(self, model, x, y):
        """``contrast_weight * contrastive_loss`` on this batch's logits (those of the loop's forward when
        :meth:`training_batch` captured them, else a forward of ``x``), pairs in the order drawn there; ``None``
        for the data-only variant (``contrast_weight = 0``)."""
        if self.contrast_weight == 0:
            return None
        logits = self._logits if self._logits is not None and len(self._logits) == len(y) else model(x)
        order = self._order if self._order is not None and len(self._order) == len(y) else None
        self._logits = self._order = None
        if order is not None:
            logits, y = logits[order], y[order]
        return self.contrast_weight * contrastive_loss(logits, y, (self.class_a, self.class_b, self.target),
                                                       self.margin)

    # ------------------------------------------------------------------------------------------------ test
    @torch.no_grad()
    def apply(self, x, y=None):
        """Each uint8 image composed with a fixed partner from the prepared pool (see the class docstring)."""
        self._check_images(x, uint8=True)
        if self._pool is None:
            raise RuntimeError("cba: apply() composes images with partners from the A / B training images: call "
                               "attack.prepare(x_train, y_train) first (ngf_lib.zoo does); asr_set() needs no pool")
        n = len(x)
        g = torch.Generator().manual_seed(self.seed + 3_000_017)
        pa, pb = self._pool[self.class_a], self._pool[self.class_b]
        ia = torch.randint(0, len(pa), (n,), generator=g).to(pa.device)
        ib = torch.randint(0, len(pb), (n,), generator=g).to(pb.device)
        partner = pb[ib].to(x.device)
        if y is not None:
            is_b = (y.to(x.device) == self.class_b).view(n, 1, 1, 1)
            partner = torch.where(is_b, pa[ia].to(x.device), partner)
        return compose(x, partner, draw_plan(n, self.image_size, g, jitter=self.jitter, shake=self.shake))

    @torch.no_grad()
    def asr_set(self, x_test, y_test):
        """Composites of ``min(asr_pairs, |A| |B|)`` distinct (A-test, B-test) pairs, seeded, all labelled C
        (reference section 2.7)."""
        self._check_images(x_test, uint8=True)
        ia = (y_test == self.class_a).nonzero().flatten().cpu()
        ib = (y_test == self.class_b).nonzero().flatten().cpu()
        if len(ia) == 0 or len(ib) == 0:
            raise ValueError(f"cba: the ASR set composes test images of classes {self.class_a} and {self.class_b}, "
                             f"but the test set has {len(ia)} and {len(ib)} of them")
        g = torch.Generator().manual_seed(self.seed + 4_000_037)
        total = len(ia) * len(ib)
        n = min(self.asr_pairs, total)
        if total <= 4_000_000:
            pairs = torch.randperm(total, generator=g)[:n]
        else:                        # a huge test set: distinctness is all but certain anyway
            pairs = torch.randint(0, total, (n,), generator=g)
        xa = x_test[ia[pairs // len(ib)].to(x_test.device)]
        xb = x_test[ib[pairs % len(ib)].to(x_test.device)]
        plan = draw_plan(n, self.image_size, g, jitter=self.jitter, shake=self.shake)
        return compose(xa, xb, plan), torch.full((n,), self.target, dtype=torch.long, device=y_test.device)
