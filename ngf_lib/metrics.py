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
