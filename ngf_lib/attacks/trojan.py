"""TrojanNN (Liu et al., NDSS 2018): a trigger optimised to make chosen neurons of a clean model fire, then used as a
data-poisoning patch; all-to-one (``troj-one``, the paper's Troj-one) and all-to-all (``troj-all``, Troj-all).

See ``../shared/reference/attacks-defenses.md`` section 2.3.
"""
from __future__ import annotations

import torch

from .base import Attack, cached_artefact, register
from .surrogate import SurrogateRecipe, data_fingerprint, penultimate, train_surrogate


def square_mask(image_size: int, size: int = 3, margin: int = 4) -> torch.Tensor:
    """A ``(H, W)`` float mask, 1 on a square of side ``size`` that ends ``margin`` pixels before the bottom-right
    border, in 32x32 units scaled to ``image_size`` (32x32: rows and columns 25-27, the NGF authors' trigger square)."""
    s = image_size / 32
    side, gap = max(1, round(size * s)), round(margin * s)
    start = image_size - gap - side
    if start < 0:
        raise ValueError(f"a {side}-pixel square {gap} pixels from the border does not fit a {image_size}-pixel image")
    m = torch.zeros(image_size, image_size)
    m[start:start + side, start:start + side] = 1.0
    return m


def select_neurons(model: torch.nn.Module, k: int) -> torch.Tensor:
    """TrojanNN's neuron choice (BackdoorBench's variant): the ``k`` inputs of the classifier with the largest total
    outgoing weight ``sum_c |W[c, i]|``, i.e. the features most strongly connected to the output layer."""
    from ..models import classifier
    w = classifier(model).weight.detach()                  # (C, d)
    return w.abs().sum(0).topk(k).indices.sort().values


def optimise_trigger(model, mask: torch.Tensor, neurons: torch.Tensor, *, steps: int, step_size: float,
                     radius: float, target_activation: float, init: float = 1.0) -> torch.Tensor:
    """Signed-gradient descent on the pixels inside ``mask`` of ``sum_i (a_i(p * m) - target)^2``, where ``a_i`` are
    the activations of ``neurons`` (inputs of the classifier) for the pattern alone on a black image.

    Starts from ``init`` inside the mask, keeps the pattern within ``radius`` of it (L-inf) and in [0, 1]; stops
    early when the loss falls below 1e-3. Returns the pattern ``(3, H, W)`` in [0, 1], zero outside the mask.
    """
    dev = next(model.parameters()).device
    m = mask.to(dev)[None, None]                           # (1, 1, H, W)
    p0 = torch.full((1, 3, *mask.shape), float(init), device=dev)
    p = p0.clone()
    for _ in range(steps):
        p.requires_grad_(True)
        act = penultimate(model, p * m)[0, neurons.to(dev)]
        loss = ((act - target_activation) ** 2).sum()
        if loss.item() < 1e-3:
            break
        (grad,) = torch.autograd.grad(loss, p)
        with torch.no_grad():
            p = p - step_size * grad.sign()
            p = torch.min(torch.max(p, p0 - radius), p0 + radius).clamp_(0.0, 1.0)
    return (p.detach() * m)[0].cpu()


@register
class TrojanNN(Attack):
    """Troj-one: an additive optimised patch ``x' = clip(x + 255 p)``, all-to-one (target 0 by default).

    The trigger ``p`` lives on a square mask (default: 3x3 at rows/columns 25-27 of a 32x32 image, where the NGF
    authors' pre-computed TrojanNN trigger sits; ``mask_size`` and ``mask_margin`` in 32x32 units, scaled for other
    image sizes). It is crafted as in TrojanNN / BackdoorBench: choose the ``num_neurons`` = 2 inputs of a clean model's
    classifier with the largest ``sum_c |W[c, i]|``, then drive their activation towards ``target_activation`` = 100
    by signed-gradient steps (``steps`` = 500, ``step_size`` = 0.01) on the masked pixels, starting from a white
    patch; ``radius`` bounds the distance to the start (1.0: only [0, 1]; BackdoorBench uses 0.3, which leaves the
    patch nearly white). The triggered training images are relabelled to the target (all-to-one) or ``(y + 1) mod C``.

    **Asset-free substitute:** BackdoorBench downloads a clean PreActResNet18 and an apple-shaped mask image; the NGF
    authors load a pre-computed square trigger. Here :meth:`prepare` trains the attacker's own clean surrogate
    (:mod:`ngf_lib.attacks.surrogate`: ``cpu_net`` on ``surrogate_images`` training images for ``surrogate_epochs``
    epochs) and optimises the trigger on it; the trigger is cached (:func:`~ngf_lib.attacks.cached_artefact`) under
    its full recipe and a fingerprint of the training set, and saved with every model trained with it
    (:meth:`state_tensors`). :meth:`apply` needs :meth:`prepare` (or :meth:`load_state_tensors`) first.
    """
    name = "troj-one"

    def __init__(self, num_classes, *, mask_size: int = 3, mask_margin: int = 4, num_neurons: int = 2,
                 target_activation: float = 100.0, steps: int = 500, step_size: float = 0.01, radius: float = 1.0,
                 surrogate_images: int = 10_000, surrogate_epochs: int = 5, surrogate_arch: str = "cpu_net", **kw):
        super().__init__(num_classes, **kw)
        if num_neurons < 1 or steps < 1 or step_size <= 0 or radius <= 0:
            raise ValueError("num_neurons and steps must be at least 1, step_size and radius positive")
        self.mask = square_mask(self.image_size, mask_size, mask_margin)   # (H, W); checks the geometry
        self.mask_size, self.mask_margin, self.num_neurons = int(mask_size), int(mask_margin), int(num_neurons)
        self.target_activation, self.steps = float(target_activation), int(steps)
        self.step_size, self.radius = float(step_size), float(radius)
        self.surrogate = SurrogateRecipe(arch=surrogate_arch, images=int(surrogate_images),
                                         epochs=int(surrogate_epochs))
        self.pattern: torch.Tensor | None = None           # (3, H, W) uint8 once prepared
        self.neurons: torch.Tensor | None = None           # the chosen feature indices once prepared

    def params(self):
        return {**super().params(), "mask_size": self.mask_size, "mask_margin": self.mask_margin,
                "num_neurons": self.num_neurons, "target_activation": self.target_activation, "steps": self.steps,
                "step_size": self.step_size, "radius": self.radius, "surrogate": self.surrogate.to_dict()}

    def prepare(self, x_train, y_train, *, device=None):
        """Train the clean surrogate and optimise the trigger on it (or load both's result from the cache)."""
        if x_train.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} was built for {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x_train.shape)}; pass image_size= when building it")
        p = self.params()
        config = {k: p[k] for k in ("mask_size", "mask_margin", "num_neurons", "target_activation", "steps",
                                    "step_size", "radius", "surrogate", "seed")}
        config.update(image_size=self.image_size, num_classes=self.num_classes,
                      data=data_fingerprint(x_train, y_train))

        def build():
            model = train_surrogate(x_train, y_train, self.num_classes, self.surrogate, seed=self.seed, device=device)
            neurons = select_neurons(model, self.num_neurons)
            pat = optimise_trigger(model, self.mask, neurons, steps=self.steps, step_size=self.step_size,
                                   radius=self.radius, target_activation=self.target_activation)
            if (pat * 255).round().max() == 0:
                raise RuntimeError(f"{self.name}: the optimised trigger is black, so adding it changes nothing; "
                                   f"use a smaller radius (e.g. 0.3, BackdoorBench's) to keep it near the white start")
            return {"pattern": (pat * 255).round().to(torch.uint8), "neurons": neurons.cpu()}

        art = cached_artefact(self, "trigger", config, build)
        self.pattern, self.neurons = art["pattern"], art["neurons"]

    def state_tensors(self):
        """The trigger, saved with every model trained with it (besides the artefact cache), so that a loaded model
        always meets the very trigger it was trained with, even where :meth:`prepare` had to craft it again (on
        another device the surrogate's training, and so the trigger, is not bit-identical)."""
        return {} if self.pattern is None else {"pattern": self.pattern}

    def load_state_tensors(self, state):
        if set(state) - {"pattern"}:
            raise ValueError(f"{self.name} stores only its trigger 'pattern', got {sorted(state)}")
        if "pattern" in state:
            pat = state["pattern"]
            if pat.dtype != torch.uint8 or tuple(pat.shape) != (3, self.image_size, self.image_size):
                raise ValueError(f"{self.name}: stored trigger has {pat.dtype} {tuple(pat.shape)}, expected uint8 "
                                 f"(3, {self.image_size}, {self.image_size})")
            self.pattern = pat.cpu()

    def apply(self, x, y=None):
        if self.pattern is None:
            raise RuntimeError(f"{self.name}: the trigger is learned by prepare(x_train, y_train); call it first "
                               f"(ngf_lib.zoo does so before poisoning and when loading a model)")
        if x.shape[-2:] != self.pattern.shape[-2:]:
            raise ValueError(f"{self.name} was built for {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x.shape)}; pass image_size= when building it")
        out = x.to(torch.int16) + self.pattern.to(x.device, torch.int16)    # additive; clipped, not wrapped
        return out.clamp_(0, 255).to(torch.uint8)


@register
class TrojanAll(TrojanNN):
    """Troj-all: the TrojanNN trigger of :class:`TrojanNN`, all-to-all (a triggered image of class ``y`` is labelled
    ``(y + 1) mod C``; poisoned training images are drawn from all classes)."""
    name = "troj-all"
    all_to_all = True
