"""Clean accuracy (ACC) and attack success rate (ASR), in percent (paper Section VII-A)."""
from __future__ import annotations

import torch

from .data import to_float


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000, device=None) -> torch.Tensor:
    """Predicted labels for uint8 (or [0, 1] float) images, in eval mode; the model's mode is restored."""
    dev = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            xb = to_float(x[i:i + batch_size].to(dev))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(torch.device(dev).type == "cuda")):
                out.append(model(xb).argmax(1).cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model, x, y, **kw) -> float:
    """Percentage of ``x`` classified as ``y``."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    return 100.0 * (predict(model, x, **kw) == y.cpu()).float().mean().item()


def attack_success_rate(model, attack, x_test, y_test, **kw) -> float:
    """ASR: triggered test images classified as the attack's target label.

    All-to-one: only test images whose true label is not the target are triggered (a target-class image classified
    as the target is not a success of the attack); all-to-all: every test image, target ``(y + 1) mod C``.
    """
    xt, yt = attack.asr_set(x_test, y_test)
    return accuracy(model, xt, yt, **kw)


def per_class_accuracy(model, x, y, num_classes: int | None = None, **kw) -> torch.Tensor:
    """Accuracy (percent) on the images of each true class: entry ``c`` is ACC over ``x[y == c]``, NaN where a
    class has no image. Shows where a backdoor costs clean accuracy, e.g. a clean-label attack whose poison covers
    the whole target class (the gallery chapter's diagnostics)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    y = y.cpu()
    c = int(num_classes if num_classes is not None else int(y.max()) + 1)
    return _percent_by_class(predict(model, x, **kw) == y, y, c)


def asr_by_source_class(model, attack, x_test, y_test, num_classes: int | None = None, **kw) -> torch.Tensor:
    """ASR (percent) split by the true (source) class of the triggered test image; NaN for classes the ASR set
    leaves out (the target class of an all-to-one attack). Its mean weighted by class size is
    :func:`attack_success_rate`."""
    xt, yt = attack.asr_set(x_test, y_test)
    src = y_test[attack.asr_sources(y_test)].cpu()
    if len(yt) != len(src):
        raise ValueError(f"{attack.name}: its ASR set ({len(yt)} images) is not one triggered image per test image "
                         f"({len(src)}), so it has no source class (CBA composes pairs of images)")
    c = int(num_classes if num_classes is not None else int(y_test.max()) + 1)
    return _percent_by_class(predict(model, xt, **kw) == yt.cpu(), src, c)


def _percent_by_class(hit: torch.Tensor, cls: torch.Tensor, c: int) -> torch.Tensor:
    """Percentage of ``hit`` within each class of ``cls`` (``c`` entries, NaN for a class without samples)."""
    n = torch.bincount(cls, minlength=c).double()
    s = torch.bincount(cls, weights=hit.double(), minlength=c)
    return torch.where(n > 0, 100.0 * s / n.clamp(min=1), torch.full_like(n, float("nan")))
