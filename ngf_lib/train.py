"""Training loop for (backdoored) models: data on the device as uint8, batched augmentation, bf16 on GPUs.

The same code runs on CPU and GPU; the device decides (channels_last and bf16 autocast on CUDA, fp32 on CPU).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import augment, to_float


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule for training a model from scratch (the attacker's recipe).

    ``schedule``: ``"onecycle"`` (linear warm-up over ``warmup`` of the steps, then linear decay to 0: the fast
    recipe of the short profiles), ``"cosine"`` (BackdoorBench's CosineAnnealingLR) or ``"multistep"`` (x0.1 at
    ``milestones``, fractions of training).
    """
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    warmup: float = 0.0
    milestones: tuple = (0.5, 0.75)
    label_smoothing: float = 0.0
    augment: bool = True

    def to_dict(self):
        return asdict(self)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` of ``total``."""
    frac = step / max(total, 1)
    if cfg.schedule == "onecycle":
        w = cfg.warmup
        return frac / w if (w > 0 and frac < w) else max(0.0, (1 - frac) / (1 - w))
    if cfg.schedule == "cosine":
        warm = frac / cfg.warmup if (cfg.warmup > 0 and frac < cfg.warmup) else 1.0
        return warm * 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "multistep":
        return 0.1 ** sum(frac >= m for m in cfg.milestones)
    if cfg.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use onecycle, cosine, multistep or constant")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, attack=None,
          flip: bool = True, seed: int = 0, device=None, progress: bool = True, desc: str = "train",
          on_epoch=None) -> dict:
    """Train ``model`` in place on uint8 images ``x`` ``(N, 3, H, W)`` and labels ``y``; returns a history dict.

    ``attack``: for attacks that control training, its ``training_batch`` poisons every batch and its
    ``extra_loss`` adds to the loss, ``after_step`` / ``after_epoch`` run after every optimiser step / epoch;
    data-poisoning attacks are applied to ``x, y`` before calling this. ``on_epoch(model, epoch)`` (epochs counted
    from 1) runs after every epoch, e.g. to measure the curvature along training (paper Fig. 2a-b); whatever mode
    it leaves the model in, training goes on in train mode, and it must not touch the global random state if the
    run is to stay identical to one without it.
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"x must be uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    dev = torch.device(device) if device is not None else default_device()
    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.to(dev).to(memory_format=torch.channels_last)  # faster convolutions on GPUs and on CPUs (25 % here)
    x, y = x.to(dev), y.to(dev)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total, step = cfg.epochs * steps_per_epoch, 0
    hist = {"epoch": [], "loss": [], "train_acc": [], "lr": [], "time_s": []}
    t0 = time.time()
    model.train()
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        perm = torch.randperm(len(x), generator=g).to(dev)
        tot_loss, correct, seen = 0.0, 0, 0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if cfg.augment:
                xb = augment(xb, flip=flip, generator=g)
            xb = to_float(xb)
            if attack is not None and attack.controls_training:
                xb, yb = attack.training_batch(model, xb, yb, generator=g)
            xb = xb.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, total)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing)
                if attack is not None and attack.controls_training:
                    extra = attack.extra_loss(model, xb, yb)
                    if extra is not None:
                        loss = loss + extra
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                                         f"lower the learning rate (now {cfg.lr} at its peak)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if attack is not None and attack.controls_training:
                attack.after_step(model, step, total)
            step += 1
            tot_loss += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(yb)
        if attack is not None and attack.controls_training:
            attack.after_epoch(model, epoch, cfg.epochs)    # FBA's detoxification; a no-op for the others
            model.train()
        if on_epoch is not None:
            on_epoch(model, epoch + 1)
            model.train()
        hist["epoch"].append(epoch + 1)
        hist["loss"].append(tot_loss / seen)
        hist["train_acc"].append(100.0 * correct / seen)
        hist["lr"].append(opt.param_groups[0]["lr"])
        hist["time_s"].append(time.time() - t0)
        bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return hist
