"""CLB, the label-consistent (clean-label) backdoor of Turner, Tsipras and Madry (2019): target-class training images
are made hard to learn from their content by an adversarial perturbation, then stamped with a four-corner
checkerboard trigger; their labels are kept.

See ``../shared/reference/attacks-defenses.md`` section 2.6 (and section 0.4 for the poison rate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import CleanLabelAttack, PoisonedSet, cached_artefact, register
from .surrogate import SurrogateRecipe, data_fingerprint, train_surrogate

# BackdoorBench's top-left motif (row, column offsets from the corner): +1 white, -1 black
_MOTIF = torch.tensor([[1, -1, -1],
                       [-1, 1, -1],
                       [1, -1, 1]], dtype=torch.float32)


def four_corner_trigger(image_size: int) -> torch.Tensor:
    """The ``(H, W)`` sign map of the four-corner trigger: the 3x3 motif in the top-left corner, its left-right mirror
    in the top-right, its up-down mirrors in the bottom corners (so a horizontal flip leaves the trigger unchanged);
    0 elsewhere. Each motif cell is ``image_size // 32`` pixels wide (3x3 pixels per corner on 32x32 images)."""
    cell = image_size // 32
    if cell < 1:
        raise ValueError(f"the four-corner trigger needs images of at least 32 pixels, got {image_size}")
    tl = _MOTIF.repeat_interleave(cell, 0).repeat_interleave(cell, 1)   # (3 cell, 3 cell)
    k = tl.shape[0]
    s = torch.zeros(image_size, image_size)
    s[:k, :k] = tl
    s[:k, -k:] = tl.flip(1)
    s[-k:, :k] = tl.flip(0)
    s[-k:, -k:] = tl.flip(0).flip(1)
    return s


def pgd_untargeted(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
                   batch_size: int = 256) -> torch.Tensor:
    """L-inf PGD without random start that maximises the cross-entropy of the true labels ``y`` (Turner et al.'s
    perturbation). ``x`` uint8 ``(N, 3, H, W)``; returns uint8 images within ``eps`` (in [0, 1] units) of ``x``."""
    dev = next(model.parameters()).device
    out = torch.empty_like(x, device="cpu")
    for i in range(0, len(x), batch_size):
        x0 = x[i:i + batch_size].to(dev).float().div(255.0)
        yb = y[i:i + batch_size].to(dev)
        xa = x0.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), yb)
            (grad,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = xa + step_size * grad.sign()
                xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp_(0.0, 1.0)
        out[i:i + batch_size] = (xa.detach() * 255).round().to(torch.uint8).cpu()
    return out


@register
class LabelConsistent(CleanLabelAttack):
    """CLB: poisoned images ``clip(PGD(x) + 255 a s)``, ``s`` the four-corner checkerboard, labels kept.

    * **Perturbation** (training only): untargeted L-inf PGD on each poisoned target-class image against a clean
      surrogate model, maximising the cross-entropy of its true label; BackdoorBench's ``eps`` = 8/255,
      ``step_size`` = 1.5/255, ``steps`` = 100, no random start.
    * **Trigger**: a 3x3 black-and-white motif in each of the four corners (BackdoorBench's motif, mirrored so it
      survives horizontal flips), ``amplitude`` = 1 (exact black and white). At test time the trigger alone is
      stamped on non-target test images (:meth:`apply` needs no preparation).
    * **Clean-label**: only target-class images are poisoned, labels unchanged; ``poison_rate`` as in
      :class:`~ngf_lib.attacks.sig.SIG` (``round(poison_rate * N)`` target-class images; the default 0.1 is every
      target-class image of CIFAR-10; on GTSRB the profiles read it per target class, ``rate_of="target"``).

    **Asset-free substitute:** BackdoorBench crafts the perturbations with a downloaded adversarially trained
    ResNet-18. Here the attacker trains its own *clean* surrogate (:mod:`ngf_lib.attacks.surrogate`: ``cpu_net`` on
    ``surrogate_images`` training images for ``surrogate_epochs`` epochs) and perturbs the images that
    :meth:`poison_indices` picks (:meth:`perturbed_images`, run by :meth:`poison_training_set`); they are cached
    (:func:`~ngf_lib.attacks.cached_artefact`) under the full recipe and a fingerprint of the training set.
    :meth:`poison_training_set` needs :meth:`prepare` first, on the same training set. Cost: ``steps`` forward and
    backward passes per poisoned image (on 2 CPU cores about 1 ms each for ``cpu_net``: some 8 minutes for the 4,750
    target-class images of the ``cpu`` profile; seconds on a GPU).
    """
    name = "clb"
    clean_label = True

    def __init__(self, num_classes, *, eps: float = 8 / 255, step_size: float = 1.5 / 255, steps: int = 100,
                 amplitude: float = 1.0, surrogate_images: int = 10_000, surrogate_epochs: int = 5,
                 surrogate_arch: str = "cpu_net", **kw):
        super().__init__(num_classes, **kw)
        if not 0.0 <= eps < 1.0 or step_size <= 0 or steps < 0:
            raise ValueError(f"need 0 <= eps < 1, step_size > 0, steps >= 0; got {eps}, {step_size}, {steps}")
        if not 0.0 < amplitude <= 1.0:
            raise ValueError(f"amplitude must be in (0, 1], got {amplitude}")
        self.eps, self.step_size, self.steps, self.amplitude = float(eps), float(step_size), int(steps), float(amplitude)
        self.surrogate = SurrogateRecipe(arch=surrogate_arch, images=int(surrogate_images),
                                         epochs=int(surrogate_epochs))
        self.trigger = four_corner_trigger(self.image_size) * (255.0 * self.amplitude)   # (H, W) in [-255, 255]
        self._data: str | None = None                      # fingerprint of the training set given to prepare()
        self._device = None

    def params(self):
        return {**super().params(), "eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "amplitude": self.amplitude, "surrogate": self.surrogate.to_dict()}

    def apply(self, x, y=None):
        if x.shape[-2:] != self.trigger.shape:
            raise ValueError(f"clb was built for {self.image_size}x{self.image_size} images, got {tuple(x.shape)}; "
                             f"pass image_size= when building it")
        out = x.float() + self.trigger.to(x.device)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def prepare(self, x_train, y_train, *, device=None):
        """Remember the training set (and device) whose images :meth:`poison_training_set` will perturb.

        The perturbations are crafted (or loaded from the cache) only when the training set is poisoned: a model
        loaded from the cache needs just the test trigger, so loading it never trains the surrogate again.
        """
        if x_train.shape[-2:] != self.trigger.shape:
            raise ValueError(f"clb was built for {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x_train.shape)}; pass image_size= when building it")
        self.poison_indices(y_train)                       # a clean-label rate the target class cannot meet fails here
        self._data = data_fingerprint(x_train, y_train)
        self._device = device

    def perturbed_images(self, x_train, y_train) -> dict:
        """``{"idx", "x_adv"}``: the images to poison (:meth:`poison_indices`) after the PGD perturbation, uint8,
        crafted against the clean surrogate and cached under the attack's recipe and the data's fingerprint."""
        idx = self.poison_indices(y_train)
        p = self.params()
        config = {k: p[k] for k in ("poison_rate", "target", "seed", "eps", "step_size", "steps", "surrogate")}
        config.update(image_size=self.image_size, num_classes=self.num_classes, data=self._data)
        if self.rate_of != "train":          # other images are poisoned (the default's key is kept as it was)
            config["rate_of"] = self.rate_of

        def build():
            model = train_surrogate(x_train, y_train, self.num_classes, self.surrogate, seed=self.seed,
                                    device=self._device)
            x_adv = pgd_untargeted(model, x_train[idx], y_train[idx], eps=self.eps, step_size=self.step_size,
                                   steps=self.steps)
            return {"idx": idx, "x_adv": x_adv}

        art = cached_artefact(self, "perturbed", config, build)
        if not torch.equal(art["idx"], idx):
            raise RuntimeError("clb: the cached perturbed images belong to other indices; clear the artefact cache")
        return art

    def poison_training_set(self, x, y):
        if self._data is None:
            raise RuntimeError("clb: the images to poison are perturbed against a surrogate trained on the training "
                               "set; call prepare(x_train, y_train) first (ngf_lib.zoo does so before poisoning)")
        if data_fingerprint(x, y) != self._data:
            raise ValueError("clb: poison_training_set got another training set than the one given to prepare()")
        art = self.perturbed_images(x, y)
        idx = art["idx"]
        x2 = x.clone()
        if len(idx):
            x2[idx.to(x.device)] = self.apply(art["x_adv"]).to(x.device)
        return PoisonedSet(x2, y.clone(), idx)
