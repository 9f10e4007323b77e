"""Models. Every model takes images in [0, 1], ``(B, 3, H, W)``; normalisation is its first layer.

* ``preactresnet18``: the paper's CIFAR-10 model (He et al. 2016, identity mappings), BackdoorBench's variant
  (no final BN-ReLU before pooling), classifier 512 -> C.
* ``wrn16_1``: WideResNet-16-1 (Zagoruyko & Komodakis), the paper's GTSRB model, classifier 64 -> C.
* ``resnet34`` / ``resnet50``: torchvision ResNets for Tiny-ImageNet / ImageNet (paper Table II), random init.
* ``cpu_net``: a small residual net for the ``cpu`` profile (see :mod:`ngf_lib.profiles` for its measured figures).

:func:`classifier` returns the last ``nn.Linear`` of any model (ours or a user's) and :func:`features` the input it
receives: the quantities NGF works on (paper Section VI, theta_L = W_{L-1,L}).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MEANS = {"cifar10": (0.4914, 0.4822, 0.4465), "gtsrb": (0.3398, 0.3117, 0.3210),
         "tiny-imagenet": (0.4802, 0.4481, 0.3975), "imagenet": (0.485, 0.456, 0.406)}
STDS = {"cifar10": (0.2470, 0.2435, 0.2616), "gtsrb": (0.2755, 0.2647, 0.2712),
        "tiny-imagenet": (0.2770, 0.2691, 0.2821), "imagenet": (0.229, 0.224, 0.225)}


class Normalize(nn.Module):
    """Per-channel standardisation, part of the model so that every interface sees images in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Net(nn.Module):
    """``fc(body(normalize(x)))``: a backbone that ends in a flat feature vector, and a linear classifier."""

    def __init__(self, normalize: nn.Module, body: nn.Module, fc: nn.Linear):
        super().__init__()
        self.normalize, self.body, self.fc = normalize, body, fc

    def features(self, x):            # (B, 3, H, W) in [0, 1] -> (B, d)
        return self.body(self.normalize(x))

    def forward(self, x):             # -> (B, C) logits
        return self.fc(self.features(x))


# ---------------------------------------------------------------------------------------------------- PreActResNet18

class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


def _preact_body(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)):
    layers, cin = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)], widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(PreActBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


# -------------------------------------------------------------------------------------------------- WideResNet-16-1

class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + sc


def _wrn_body(depth=16, widen=1):
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers, cin = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)], widths[0]
    for g, w in enumerate(widths[1:]):
        for j in range(n):
            layers.append(WideBlock(cin, w, 2 if (j == 0 and g > 0) else 1))
            cin = w
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


# ---------------------------------------------------------------------------------------------------------- cpu_net

class ConvBlock(nn.Module):
    """conv3x3 -> BN -> GELU -> maxpool(2), then a residual conv3x3 -> BN -> GELU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.max_pool2d(F.gelu(self.bn1(self.conv1(x))), 2)
        return x + F.gelu(self.bn2(self.conv2(x)))


def _cpu_body(widths=(16, 32, 64, 128)):
    """A small residual CNN in the spirit of airbench's network: 32x32 -> 16 -> 8 -> 4, global pooling."""
    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.GELU()]
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers.append(ConvBlock(cin, cout))
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), widths[-1]


# ------------------------------------------------------------------------------------------------------------ build

def _torchvision_body(name):
    import torchvision
    m = getattr(torchvision.models, name)(weights=None)
    d = m.fc.in_features
    m.fc = nn.Identity()
    return m, d


ARCHS = {
    "preactresnet18": _preact_body,
    "wrn16_1": _wrn_body,
    "cpu_net": _cpu_body,
    "resnet34": lambda: _torchvision_body("resnet34"),
    "resnet50": lambda: _torchvision_body("resnet50"),
}


def build_model(arch: str, num_classes: int, dataset: str = "cifar10") -> Net:
    """A freshly initialised model; ``dataset`` chooses the normalisation constants.

    >>> m = build_model("cpu_net", 10)
    >>> m(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    if dataset not in MEANS:
        raise ValueError(f"unknown dataset {dataset!r} for normalisation; known: {', '.join(MEANS)}")
    body, d = ARCHS[arch]()
    return Net(Normalize(MEANS[dataset], STDS[dataset]), body, nn.Linear(d, num_classes))


def classifier(model: nn.Module) -> nn.Linear:
    """The classification layer: the last ``nn.Linear`` registered in ``model`` (theta_L of the paper)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: NGF needs a linear classifier")
    return last


@torch.no_grad()
@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, batch_size: int = 512, train: bool = False) -> torch.Tensor:
    """The inputs of :func:`classifier` for images ``x`` (float in [0, 1] or uint8), computed in eval mode
    (``train=True``: in train mode, so BatchNorm uses batch statistics and updates its running ones).

    Works for any model: a forward hook on the classifier records its input. Returns ``(N, d)`` float32 on ``x``'s
    device; the model's train/eval mode is restored afterwards.
    """
    from .data import to_float
    fc = classifier(model)
    dev = next(model.parameters()).device
    got = []
    hook = fc.register_forward_hook(lambda mod, inp, out: got.append(inp[0].detach().flatten(1).float()))
    was_training = model.training
    model.train(train)
    try:
        for i in range(0, len(x), batch_size):
            model(to_float(x[i:i + batch_size].to(dev)))
    finally:
        hook.remove()
        model.train(was_training)
    if not got:
        return torch.empty(0, fc.in_features)
    return torch.cat(got).to(x.device)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
