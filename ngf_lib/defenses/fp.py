"""FP: Fine-Pruning (Liu et al., RAID 2018), the supplement's FP column of Table II.

1. Mean activation of every channel of the classifier's input (the last feature layer, after global pooling: the
   variant of BackdoorBench, ``../shared/reference/attacks-defenses.md`` 4.5) over the clean validation images.
2. Prune channels in increasing order of activation (dormant channels first: the backdoor hides in neurons clean
   data leaves silent), ``step`` at a time (1 % of the channels), by zeroing the classifier's weight columns; stop
   before the **clean validation** accuracy falls more than ``max_acc_drop`` (relative, 10 %) below the unpruned
   model's. BackdoorBench stops on *test* accuracy (an oracle); here only the defender's validation data decide.
3. Fine-tune all layers on the clean data (FT's recipe, ``epochs``) with the pruned columns held at zero.

The pruned channel indices are stored in ``returned_model.ngf_history["pruned"]``.
"""
from __future__ import annotations

import math
import time

import torch

from ..metrics import accuracy
from ..models import classifier, features
from .ft import clean_copy, finetune_all


def prune_order(model, x) -> torch.Tensor:
    """Channels of the classifier's input sorted by mean activation on ``x``, lowest first."""
    return features(model, x).mean(0).argsort()


def fine_prune(model, x, y=None, *, max_acc_drop: float = 0.10, step_frac: float = 0.01, epochs: int = 100,
               lr: float = 0.01, batch_size: int = 128, augment: bool = True, flip: bool = True, device=None,
               seed: int = 0, progress: bool = False) -> torch.nn.Module:
    """Fine-Pruning on a copy of ``model`` (module docstring); ``model`` is untouched."""
    t0 = time.time()
    out, x, y, _ = clean_copy(model, x, y, device)
    out.eval()
    fc = classifier(out)
    d = fc.in_features
    order = prune_order(out, x)
    base = accuracy(out, x, y)
    floor = base * (1 - max_acc_drop)
    step = max(1, math.ceil(step_frac * d))
    w0 = fc.weight.detach().clone()
    n_pruned = 0
    for k in range(step, d, step):                 # never prune every channel
        with torch.no_grad():
            fc.weight.copy_(w0)
            fc.weight[:, order[:k]] = 0
        if accuracy(out, x, y) < floor:
            break
        n_pruned = k
    pruned = order[:n_pruned]
    with torch.no_grad():
        fc.weight.copy_(w0)
        fc.weight[:, pruned] = 0

    def keep_pruned(m):
        with torch.no_grad():
            fc.weight[:, pruned] = 0

    acc_pruned = accuracy(out, x, y)
    hist = finetune_all(out, x, y, epochs=epochs, lr=lr, batch_size=batch_size, augment=augment, flip=flip,
                        seed=seed, after_step=keep_pruned, desc="FP", progress=progress) if epochs else []
    out.ngf_history = {"loss": hist, "pruned": pruned.tolist(), "val_acc_before": base,
                       "val_acc_pruned": acc_pruned, "time_s": time.time() - t0}
    return out
