"""Datasets as uint8 tensors, the attacker/defender split, and batched augmentation on tensors.

Images stay ``uint8`` with shape ``(N, 3, H, W)`` until they reach the model (which normalises them itself), so a
whole CIFAR-10 training set is 150 MB and lives on the GPU when there is one.

Sources, tried in this order for every folder of :func:`ngf_lib.paths.data_dir_candidates`:

* the offline files of this project (``cifar10_jpeg.npz``: JPEG bytes + offsets; ``gtsrb.npz``: decoded 32x32 arrays);
* torchvision's own layout (``cifar-10-batches-py/``, ``gtsrb/``), downloaded by torchvision when ``download=True``.

The decoded arrays are cached under ``$NGF_CACHE_DIR/datasets`` so a second run does not decode the JPEGs again.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths


class DataError(RuntimeError):
    """A dataset could not be found or is malformed; the message says where we looked and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    flip: bool          # horizontal flip is a label-preserving augmentation (not for traffic signs)
    files: tuple        # offline file names we understand


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, 32, True, ("cifar10_jpeg.npz", "cifar-10-batches-py")),
    "gtsrb": DatasetInfo("gtsrb", 43, 32, False, ("gtsrb.npz", "gtsrb")),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", 200, 64, True, ("tiny-imagenet-200",)),
    "imagenet": DatasetInfo("imagenet", 1000, 224, True, ("imagenet",)),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


@dataclass
class Dataset:
    """A labelled image dataset: ``x_*`` uint8 ``(N, 3, H, W)``, ``y_*`` int64 ``(N,)``."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def info(self) -> DatasetInfo:
        return dataset_info(self.name)

    def subset(self, split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images of ``split`` (``"train"`` or ``"test"``) and their labels, drawn at random with ``seed`` and
        kept in stored order. The stored splits are sorted by class, so their first ``n`` images are one or two
        classes: take a subset with this, never with ``x[:n]``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        if not 0 < int(n) <= len(y):
            raise ValueError(f"n must be in 1..{len(y)} (the {split} split of {self.name}), got {n}")
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))[:int(n)].sort().values
        return x[idx], y[idx]

    def __repr__(self) -> str:
        return (f"Dataset({self.name}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, "
                f"{self.num_classes} classes, from {self.source})")


# ----------------------------------------------------------------------------------------------------------- loading

def _decode_cifar_jpeg(path: Path) -> dict:
    from PIL import Image
    d = np.load(path)
    out = {"classes": [str(c) for c in d["classes"]]}
    for split in ("train", "test"):
        buf, off = d["jpeg_" + split], d["offsets_" + split]
        out["x_" + split] = np.stack([
            np.asarray(Image.open(io.BytesIO(buf[off[i]:off[i + 1]].tobytes())).convert("RGB"))
            for i in range(len(off) - 1)])
        out["y_" + split] = d["y_" + split].astype(np.int64)
    return out


def _load_gtsrb_npz(path: Path) -> dict:
    d = np.load(path)
    return {"x_train": d["x_train"], "y_train": d["y_train"].astype(np.int64), "x_test": d["x_test"],
            "y_test": d["y_test"].astype(np.int64), "classes": [str(c) for c in d["classes"]]}


def _load_torchvision(name: str, root: Path, download: bool) -> dict:
    import torchvision
    if name == "cifar10":
        tr = torchvision.datasets.CIFAR10(str(root), train=True, download=download)
        te = torchvision.datasets.CIFAR10(str(root), train=False, download=download)
        return {"x_train": np.asarray(tr.data), "y_train": np.asarray(tr.targets, dtype=np.int64),
                "x_test": np.asarray(te.data), "y_test": np.asarray(te.targets, dtype=np.int64),
                "classes": list(tr.classes)}
    if name == "gtsrb":
        out = {}
        for split in ("train", "test"):
            ds = torchvision.datasets.GTSRB(str(root), split=split, download=download)
            xs, ys = [], []
            for img, label in ds:  # variable-size PIL images: resize the whole image, as BackdoorBench does
                xs.append(np.asarray(img.convert("RGB").resize((32, 32), resample=2)))  # 2 = bilinear
                ys.append(label)
            out["x_" + split], out["y_" + split] = np.stack(xs), np.asarray(ys, dtype=np.int64)
        out["classes"] = [str(i) for i in range(43)]
        return out
    raise DataError(f"no torchvision loader for {name!r}")


def _load_tiny_imagenet(root: Path) -> dict:
    """Tiny-ImageNet's own layout (``tiny-imagenet-200/``: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
    ``val/images/*.JPEG`` with ``val/val_annotations.txt``) as uint8 arrays; its labelled ``val`` split serves as
    the test set (the official test split has no labels), as in BackdoorBench."""
    from PIL import Image
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}

    def read(path):
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape != (64, 64, 3):
            raise DataError(f"{path}: expected a 64x64 image, got {arr.shape}")
        return arr

    xs, ys = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"{root}/train/{w}/images holds no .JPEG files")
        xs += [read(f) for f in files]
        ys += [index[w]] * len(files)
    ann = [line.split("\t") for line in (root / "val" / "val_annotations.txt").read_text().splitlines() if line]
    xt = [read(root / "val" / "images" / a[0]) for a in ann]
    yt = [index[a[1]] for a in ann]
    return {"x_train": np.stack(xs), "y_train": np.asarray(ys, dtype=np.int64), "x_test": np.stack(xt),
            "y_test": np.asarray(yt, dtype=np.int64), "classes": wnids}


def _check(arrs: dict, name: str, where: str) -> None:
    info = dataset_info(name)
    for split in ("train", "test"):
        x, y = arrs.get("x_" + split), arrs.get("y_" + split)
        if x is None or y is None:
            raise DataError(f"{where}: missing x_{split} / y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != info.image_size:
            raise DataError(f"{where}: x_{split} should be uint8 (N, {info.image_size}, {info.image_size}, 3), "
                            f"got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise DataError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
            raise DataError(f"{where}: labels of {split} outside 0..{info.num_classes - 1}")


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _find_source(name: str, data_dir, download: bool):
    """Return (kind, path) of the first usable source, or raise DataError listing what was tried."""
    tried = []
    for folder in paths.data_dir_candidates(data_dir):
        if name == "cifar10":
            if (folder / "cifar10_jpeg.npz").is_file():
                return "jpeg-npz", folder / "cifar10_jpeg.npz"
            if (folder / "cifar-10-batches-py").is_dir():
                return "torchvision", folder
        elif name == "gtsrb":
            if (folder / "gtsrb.npz").is_file():
                return "npz", folder / "gtsrb.npz"
            if (folder / "gtsrb").is_dir():
                return "torchvision", folder
        elif name == "tiny-imagenet":
            if (folder / "tiny-imagenet-200" / "wnids.txt").is_file():
                return "folder", folder / "tiny-imagenet-200"
        tried.append(str(folder))
    if download and name == "tiny-imagenet":
        raise DataError("tiny-imagenet has no torchvision downloader: download tiny-imagenet-200.zip from "
                        "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it into a folder and set NGF_DATA_DIR "
                        f"to that folder (looked in: {', '.join(tried)})")
    if download:
        folders = paths.data_dir_candidates(data_dir)
        return "download", folders[0]
    files = " or ".join(dataset_info(name).files)
    raise DataError(
        f"dataset {name!r} not found. Looked for {files} in: {', '.join(tried)}. "
        f"Set NGF_DATA_DIR (or pass data_dir=) to the folder that holds it, or pass download=True to let torchvision "
        f"download it (needs internet).")


def load_dataset(name: str = "cifar10", data_dir=None, *, download: bool = False, cache: bool = True) -> Dataset:
    """Load ``cifar10`` or ``gtsrb`` (``(N, 3, 32, 32)``) or ``tiny-imagenet`` (``(N, 3, 64, 64)``, from its own
    folder layout) as uint8 tensors with int64 labels, in the stored order. The project's copies of CIFAR-10 (train
    and test) and GTSRB (train) are **sorted by class**: draw seeded random subsets (:meth:`Dataset.subset`, or as
    :func:`ngf_lib.zoo.experiment_data` does), never the first ``n`` images.

    >>> ds = load_dataset("cifar10")            # doctest: +SKIP
    >>> ds.x_train.shape, ds.x_train.dtype      # doctest: +SKIP
    (torch.Size([50000, 3, 32, 32]), torch.uint8)
    """
    info = dataset_info(name)
    if name == "imagenet":
        raise DataError("imagenet is too large to hold in memory as one tensor: use ngf_lib.stream, which streams from "
                        "disk (train_stream, evaluate_stream); this function handles cifar10, gtsrb and tiny-imagenet")
    kind, src = _find_source(name, data_dir, download)
    if kind == "download":
        src.mkdir(parents=True, exist_ok=True)
    tag = f"{name}-{kind if kind != 'download' else 'torchvision'}"
    if kind in ("jpeg-npz", "npz"):
        tag += f"-{src.stat().st_size}"
    if kind == "folder":
        tag += f"-{(src / 'wnids.txt').stat().st_mtime_ns}"
    cached = paths.dataset_cache_dir() / f"{tag}.npz"
    if cache and cached.is_file():
        try:
            with np.load(cached) as d:
                arrs = {k: d[k] for k in d.files}
            arrs["classes"] = [str(c) for c in arrs["classes"]]
        except Exception:  # a truncated cache is rebuilt, not trusted
            arrs = None
    else:
        arrs = None
    if arrs is None:
        try:
            if kind == "jpeg-npz":
                arrs = _decode_cifar_jpeg(src)
            elif kind == "npz":
                arrs = _load_gtsrb_npz(src)
            elif kind == "folder":
                arrs = _load_tiny_imagenet(src)
            else:
                arrs = _load_torchvision(name, src, download=(kind == "download"))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"could not read {name!r} from {src}: {type(e).__name__}: {e}") from e
        _check(arrs, name, str(src))
        if cache:
            _atomic_savez(cached, **{k: np.asarray(v) for k, v in arrs.items()})
    _check(arrs, name, str(cached if cached.exists() else src))

    def t(x):  # (N, H, W, 3) -> (N, 3, H, W), contiguous uint8
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()

    return Dataset(name, t(arrs["x_train"]), torch.from_numpy(arrs["y_train"]), t(arrs["x_test"]),
                   torch.from_numpy(arrs["y_test"]), list(arrs["classes"]), source=f"{kind}:{src}")


# ------------------------------------------------------------------------------------------------------------- split

@dataclass(frozen=True)
class Split:
    """Fixed, seeded split of a training set into the attacker's part and the defender's held-out pool.

    The pool is ordered class by class in round-robin, so :meth:`val` of any size is (nearly) class-balanced and
    smaller validation sets are subsets of larger ones (Table VIII: 50 ... 500 images). The attacker never sees the
    pool, so the defender's clean data is disjoint from the poisoned training set whatever its size.
    """
    train_idx: torch.Tensor   # attacker's training images
    pool_idx: torch.Tensor    # defender's held-out pool, balanced order
    n_total: int

    def val(self, size=0.01) -> torch.Tensor:
        """Indices of the defender's clean validation set: ``size`` images (int) or a fraction of the training set."""
        n = int(round(size * self.n_total)) if isinstance(size, float) else int(size)
        if n < 1:
            raise ValueError(f"validation size {size!r} gives no images")
        if n > len(self.pool_idx):
            raise ValueError(f"validation size {n} exceeds the held-out pool of {len(self.pool_idx)} images; "
                             f"raise holdout when making the split")
        return self.pool_idx[:n]


def make_split(y_train: torch.Tensor, holdout=0.05, seed: int = 0) -> Split:
    """Hold out ``holdout`` (fraction or count) of the training set for the defender; the rest is the attacker's.

    The held-out pool is drawn class-stratified (each class contributes in proportion), then ordered round-robin
    over classes (see :class:`Split`). Deterministic for a given ``seed`` and labels.
    """
    y = torch.as_tensor(y_train)
    n = len(y)
    k = int(round(holdout * n)) if isinstance(holdout, float) else int(holdout)
    if not 0 < k < n:
        raise ValueError(f"holdout {holdout!r} must leave both parts non-empty (n = {n})")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    ys = y[perm]
    # rank of every image within its class in the permuted order -> round-robin order over classes
    rank = torch.empty(n, dtype=torch.long)
    for c in torch.unique(ys):
        where = (ys == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    counts = torch.bincount(ys)
    frac = rank.double() / counts[ys].double()       # position inside the class, in [0, 1): proportional draw
    order = torch.argsort(frac, stable=True)              # ties keep the random order
    pool = perm[order[:k]]
    keep = torch.ones(n, dtype=torch.bool)
    keep[pool] = False
    return Split(train_idx=torch.nonzero(keep).flatten(), pool_idx=pool, n_total=n)


# ------------------------------------------------------------------------------------------------------ augmentation

def augment(x: torch.Tensor, *, flip: bool, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and (optionally) horizontal flip, batched on ``x``'s device.

    ``x``: ``(B, C, H, W)``, any dtype. Every image gets its own shift in ``[-pad, pad]`` and its own coin for the flip,
    like ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()`` applied per image.
    """
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None])          # (B, H)
        cols = (dx[:, None] + torch.arange(w, device=dev)[None])          # (B, W)
        x = xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        coin = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(coin[:, None, None, None], x.flip(3), x)
    return x


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (the interface every model takes)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
