"""ImageNet-scale data, streamed from disk: Table II's ImageNet row (ResNet50) on a user's GPU.

CIFAR-10, GTSRB and Tiny-ImageNet fit in memory as one uint8 tensor (:mod:`ngf_lib.data`); ImageNet's 1.28 M training
images (about 190 GB as 224x224 uint8) do not. Here the attacker's training set is read from an ImageNet-style folder
tree (``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*.JPEG``; classes are the sorted folder names, as
torchvision's ``ImageFolder``) one batch at a time by a ``DataLoader``:

* :class:`ImageFolderStream`: uint8 ``(3, S, S)`` images (shorter side resized to ``S * 8/7``, then a random crop and
  flip for training or the centre crop for evaluation), labels int64;
* :class:`PoisonedStream`: the attacker's poisoning of a data-poisoning attack applied on the fly to the samples its
  :meth:`~ngf_lib.attacks.Attack.poison_indices` choose (the same rule and seed as the in-memory path);
* :func:`train_stream`: the training loop of :func:`ngf_lib.train.train` over a loader (same optimiser, schedule,
  bf16 autocast and channels_last on a GPU);
* :func:`evaluate_stream`: ACC and ASR over a loader of test images.

The defender's clean validation set is small (3 % of ImageNet in the paper) and is loaded into memory with
:func:`load_images`, so every defense of :mod:`ngf_lib.defenses` runs unchanged; NGF uses its Kronecker-factored path
for ResNet50's 2048 x 1000 classifier (chosen by size).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import DataError, to_float
from .train import TrainConfig, default_device, lr_factor

EXTENSIONS = (".jpeg", ".jpg", ".png")


class ImageFolderStream(torch.utils.data.Dataset):
    """The images of ``<root>/<split>/<class>/*`` as uint8 ``(3, size, size)`` tensors with int64 labels.

    ``train=True``: random crop and horizontal flip (seeded per item and epoch through ``set_epoch``); else the centre
    crop. Classes are the sorted sub-folder names of ``<root>/<split>`` (empty folders included, so the label space is
    fixed by the folder tree); ``classes=`` imposes another list (e.g. the training split's on the validation split).
    """

    def __init__(self, root, split: str = "train", *, size: int = 224, train: bool | None = None, classes=None,
                 seed: int = 0):
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"no folder {folder}: an ImageNet-style tree has <root>/{split}/<class>/<image>")
        self.classes = list(classes) if classes is not None else sorted(p.name for p in folder.iterdir()
                                                                           if p.is_dir())
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index[p.parent.name]) for p in sorted(folder.glob("*/*"))
                        if p.suffix.lower() in EXTENSIONS and p.parent.name in index]
        if not self.samples:
            raise DataError(f"{folder} holds no images ({', '.join(EXTENSIONS)}) in class folders")
        self.size, self.train, self.seed, self.epoch = size, (split == "train") if train is None else train, seed, 0
        self.targets = torch.tensor([t for _, t in self.samples], dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, target = self.samples[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            short = round(self.size * 8 / 7)
            scale = short / min(w, h)
            im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)                   # (3, H, W) uint8
        _, h, w = x.shape
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + i)
            top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
            left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
            x = x[:, top:top + self.size, left:left + self.size]
            if torch.rand(1, generator=g).item() < 0.5:
                x = x.flip(2)
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
            x = x[:, top:top + self.size, left:left + self.size]
        return x.contiguous(), target


class PoisonedStream(torch.utils.data.Dataset):
    """``base`` with a data-poisoning ``attack`` applied on the fly to the samples it chooses (fixed at creation by
    :meth:`~ngf_lib.attacks.Attack.poison_indices` over the whole label list, so the poisoned subset does not change
    between epochs); their labels become the attack's target unless it is clean-label."""

    def __init__(self, base: ImageFolderStream, attack):
        if attack.controls_training:
            raise ValueError(f"{attack.name} controls training; stream training supports data-poisoning attacks")
        self.base, self.attack = base, attack
        self.poison_idx = attack.poison_indices(base.targets)
        self._poisoned = set(self.poison_idx.tolist())

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        if i in self._poisoned:
            x = self.attack.apply(x[None], torch.tensor([y]))[0]
            if not self.attack.clean_label:
                y = int(self.attack.target_labels(torch.tensor([y]))[0])
        return x, y


def load_images(dataset: torch.utils.data.Dataset, indices=None, batch_size: int = 256, num_workers: int = 0):
    """``(x, y)`` in memory (uint8, int64) for ``indices`` of ``dataset`` (all by default): the defender's small
    clean set, for the defenses that take tensors."""
    sub = dataset if indices is None else torch.utils.data.Subset(dataset, [int(i) for i in indices])
    xs, ys = [], []
    for xb, yb in torch.utils.data.DataLoader(sub, batch_size=batch_size, num_workers=num_workers):
        xs.append(xb)
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys)


def train_stream(model: torch.nn.Module, loader, cfg: TrainConfig, *, seed: int = 0, device=None,
                 progress: bool = True, desc: str = "train (stream)") -> dict:
    """:func:`ngf_lib.train.train` over a ``DataLoader`` of uint8 images (augmentation is the dataset's)."""
    dev = torch.device(device) if device is not None else default_device()
    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    model.to(dev).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    total, step = cfg.epochs * len(loader), 0
    hist = {"epoch": [], "loss": [], "train_acc": [], "time_s": []}
    t0 = time.time()
    model.train()
    for epoch in range(cfg.epochs):
        ds = loader.dataset.base if isinstance(loader.dataset, PoisonedStream) else loader.dataset
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        tot, correct, seen = 0.0, 0, 0
        for xb, yb in tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
            xb = to_float(xb.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last)
            yb = yb.to(dev, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, total)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: training diverged at epoch {epoch + 1} (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(yb)
        hist["epoch"].append(epoch + 1)
        hist["loss"].append(tot / max(seen, 1))
        hist["train_acc"].append(100.0 * correct / max(seen, 1))
        hist["time_s"].append(time.time() - t0)
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return hist


@torch.no_grad()
def evaluate_stream(model: torch.nn.Module, loader, attack=None, *, device=None) -> dict:
    """``{"acc", "asr"}`` (percent) over a loader of clean test images; ASR as :func:`ngf_lib.metrics.
    attack_success_rate` (all-to-one: non-target images only), ``None`` without an attack."""
    dev = torch.device(device) if device is not None else default_device()
    model.to(dev).eval()
    n = correct = n_asr = hits = 0
    for xb, yb in loader:
        pred = model(to_float(xb.to(dev))).argmax(1).cpu()
        correct += int((pred == yb).sum())
        n += len(yb)
        if attack is not None:
            xt, yt = attack.asr_set(xb, yb)
            if len(yt):
                hits += int((model(to_float(xt.to(dev))).argmax(1).cpu() == yt).sum())
                n_asr += len(yt)
    return {"acc": 100.0 * correct / max(n, 1), "asr": None if attack is None else 100.0 * hits / max(n_asr, 1)}
