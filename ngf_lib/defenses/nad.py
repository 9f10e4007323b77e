"""NAD: Neural Attention Distillation (Li et al., ICLR 2021), the supplement's NAD column of Table II.

1. **Teacher**: the backdoored model fine-tuned on the clean data (``teacher_epochs``, FT's recipe).
2. **Student**: the backdoored model trained on the clean data with cross-entropy plus, for three feature maps ``l``,
   ``beta_l * MSE(A(F_student_l), A(F_teacher_l))``, where the attention map of ``F`` (B x C x H x W) is
   ``A(F) = sum_c |F_c|^p`` (p = 2) flattened and L2-normalised per image.

Which feature maps (:func:`attention_modules`): the output of the last building block at each of the three deepest
spatial resolutions above 1 x 1 (for PreActResNet18: the ends of layer2, layer3 and layer4, the "cleaner choice" of
``../shared/reference/attacks-defenses.md`` 4.7; for WRN-16-1 its three groups; for ``cpu_net`` its three blocks).
Defaults from BackdoorBench at the paper's data budget: teacher and student 10 epochs each, SGD lr 0.01 (cosine),
momentum 0.9, weight decay 5e-4, batch 128, beta = (500, 1000, 1000). Nothing is selected on data.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from ..data import to_float
from .ft import clean_copy, finetune_all


@torch.no_grad()
def attention_modules(model, x, k: int = 3) -> list[torch.nn.Module]:
    """The modules whose outputs NAD distils: for each of the ``k`` deepest spatial resolutions above 1 x 1, the
    last building block (a child of an ``nn.Sequential``, in execution order) that outputs a 4-D tensor of that
    resolution."""
    seen = []

    def record(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            seen.append((mod, tuple(out.shape[-2:])))
    blocks = [c for m in model.modules() if isinstance(m, torch.nn.Sequential) for c in m.children()]
    hooks = [m.register_forward_hook(record) for m in (blocks or list(model.modules())[1:])]
    was = model.training
    model.eval()
    try:
        model(to_float(x[:2]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    last = {}
    for mod, hw in seen:
        if hw[0] > 1 or hw[1] > 1:
            last.pop(hw, None)
            last[hw] = mod                        # insertion order = order of the last occurrence
    mods = list(last.values())
    if len(mods) < k:
        raise ValueError(f"NAD needs {k} feature maps at different resolutions; the model has {len(mods)}")
    return mods[-k:]


def attention_map(fm: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``A(F) = sum_c |F_c|^p``, flattened and L2-normalised per image: (B, C, H, W) -> (B, H*W)."""
    return F.normalize(fm.abs().pow(p).mean(1).flatten(1), dim=1)


class _Capture:
    def __init__(self, modules):
        self.out = [None] * len(modules)
        self.hooks = [m.register_forward_hook(self._saver(i)) for i, m in enumerate(modules)]

    def _saver(self, i):
        def save(mod, inp, out):
            self.out[i] = out
        return save

    def remove(self):
        for h in self.hooks:
            h.remove()


def nad(model, x, y=None, *, teacher_epochs: int = 10, epochs: int = 10, lr: float = 0.01,
        betas: tuple = (500.0, 1000.0, 1000.0), p: float = 2.0, batch_size: int = 128, augment: bool = True,
        flip: bool = True, device=None, seed: int = 0, progress: bool = False) -> torch.nn.Module:
    """NAD on a copy of ``model`` (module docstring); ``model`` is untouched."""
    t0 = time.time()
    student, x, y, _ = clean_copy(model, x, y, device)
    teacher = copy.deepcopy(student)
    finetune_all(teacher, x, y, epochs=teacher_epochs, lr=lr, batch_size=batch_size, augment=augment, flip=flip,
                 seed=seed, desc="NAD teacher", progress=progress)
    teacher.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    s_mods = attention_modules(student, x, len(betas))
    names = {m: n for n, m in student.named_modules()}
    t_by_name = dict(teacher.named_modules())
    t_mods = [t_by_name[names[m]] for m in s_mods]
    s_cap, t_cap = _Capture(s_mods), _Capture(t_mods)

    def loss_fn(m, xb, yb):
        loss = F.cross_entropy(m(xb), yb)
        with torch.no_grad():
            teacher(xb)
        for b, fs, ft in zip(betas, s_cap.out, t_cap.out):
            loss = loss + b * F.mse_loss(attention_map(fs, p), attention_map(ft, p))
        return loss

    try:
        hist = finetune_all(student, x, y, epochs=epochs, lr=lr, batch_size=batch_size, augment=augment, flip=flip,
                            seed=seed + 1, loss_fn=loss_fn, desc="NAD student", progress=progress)
    finally:
        s_cap.remove()
        t_cap.remove()
    student.ngf_history = {"loss": hist, "attention_modules": [names[m] for m in s_mods],
                           "time_s": time.time() - t0}
    return student
