"""The attacker's own clean surrogate model, for attacks that craft their poison against a trained network.

TrojanNN optimises its trigger to excite neurons of a clean model, and CLB perturbs its poisoned images adversarially
against a clean (BackdoorBench: adversarially trained) model (``../shared/reference/attacks-defenses.md`` sections 2.3
and 2.6). The reference implementations download a pre-trained checkpoint; ours is asset-free: the attacker trains a
small clean model (``cpu_net`` by default) on a seeded subset of its own training set, in seconds to a minute on a CPU.
The artefacts crafted with it are cached (:func:`ngf_lib.attacks.cached_artefact`), keyed by the
:class:`SurrogateRecipe` and a :func:`data_fingerprint` of the training set, so the surrogate is trained only once.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from ..models import build_model, classifier
from ..train import TrainConfig, train


@dataclass(frozen=True)
class SurrogateRecipe:
    """How the clean surrogate is trained: ``arch`` on ``images`` training images (a seeded random subset, all of
    them if fewer) for ``epochs`` epochs of one-cycle SGD (peak ``lr``, batch ``batch_size``, crop augmentation, no
    flip so that the same recipe fits GTSRB)."""
    arch: str = "cpu_net"
    images: int = 10_000
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05

    def __post_init__(self):
        if self.images < 1 or self.epochs < 1:
            raise ValueError(f"surrogate needs at least one image and one epoch, got {self.images} and {self.epochs}")

    def to_dict(self) -> dict:
        return asdict(self)


def data_fingerprint(x: torch.Tensor, y: torch.Tensor, n_images: int = 64) -> str:
    """A short hash of a training set: its shape, all its labels and ``n_images`` evenly spaced images.

    Cheap on a whole CIFAR-10 training set; it tells apart the subsets and splits the experiments use (so an artefact
    cached for one training set is never reused for another).
    """
    h = hashlib.sha256()
    h.update(repr((tuple(x.shape), str(x.dtype), tuple(y.shape))).encode())
    h.update(y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    if len(x):
        pick = torch.linspace(0, len(x) - 1, min(n_images, len(x))).round().long()
        h.update(x[pick.to(x.device)].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def train_surrogate(x: torch.Tensor, y: torch.Tensor, num_classes: int, recipe: SurrogateRecipe, *, seed: int = 0,
                    device=None) -> torch.nn.Module:
    """A clean model trained on (a seeded subset of) uint8 images ``x`` ``(N, 3, H, W)``; returned in eval mode.

    The normalisation layer uses the per-channel mean and std of the subset itself, so any dataset works.
    """
    g = torch.Generator().manual_seed(seed + 7919)
    idx = torch.randperm(len(x), generator=g)[:recipe.images].sort().values
    xs, ys = x[idx.to(x.device)], y[idx.to(y.device)]
    torch.manual_seed(seed)
    model = build_model(recipe.arch, num_classes, "cifar10")
    xf = xs.float().div(255.0)
    model.normalize.mean.copy_(xf.mean(dim=(0, 2, 3)).view(1, -1, 1, 1).cpu())
    model.normalize.std.copy_(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1).cpu())
    cfg = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, momentum=0.9,
                      weight_decay=5e-4, nesterov=True, schedule="onecycle", warmup=0.15)
    train(model, xs, ys, cfg, flip=False, seed=seed, device=device, progress=False, desc="surrogate")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def penultimate(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the model's classifier (:func:`ngf_lib.models.classifier`) for float images ``x`` in [0, 1],
    differentiable with respect to ``x`` (unlike :func:`ngf_lib.models.features`, which runs without gradients)."""
    got = []
    hook = classifier(model).register_forward_hook(lambda mod, inp, out: got.append(inp[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return got[0].flatten(1)
