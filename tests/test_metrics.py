"""ACC/ASR broken down by class, on a model whose every prediction is known."""
import math

import pytest
import torch

from ngf_lib import attacks, metrics


class Lookup(torch.nn.Module):
    """Predicts the class written in pixel (0, 0, 0) of the image (its uint8 value, read from the [0, 1] input)."""

    def __init__(self, num_classes):
        super().__init__()
        self.c = num_classes
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        k = (x[:, 0, 0, 0] * 255).round().long().clamp(0, self.c - 1)
        return torch.nn.functional.one_hot(k, self.c).float() + 0 * self.dummy


def test_per_class_accuracy_counts_each_class_on_its_own():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])                 # class 0: 1/2, class 1: 2/3, class 2: 1/1, class 3: none
    x = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = pred.to(torch.uint8)
    acc = metrics.per_class_accuracy(Lookup(4), x, y, num_classes=4)
    assert acc[:3].tolist() == pytest.approx([50.0, 200 / 3, 100.0])
    assert math.isnan(acc[3].item())
    with pytest.raises(ValueError, match="labels"):
        metrics.per_class_accuracy(Lookup(4), x, y[:3])


def test_asr_by_source_class_leaves_out_the_target_and_averages_to_the_asr():
    torch.manual_seed(0)
    y = torch.arange(10).repeat(6)
    x = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8)
    atk = attacks.get("badnets", 10, poison_rate=0.1, target=0)

    class Fires(torch.nn.Module):                           # predicts the target only for odd source classes
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.src = None

        def forward(self, xb):
            out = torch.zeros(len(xb), 10)
            out[torch.arange(len(xb)), torch.where(self.src[:len(xb)] % 2 == 1, 0, 5)] = 1
            self.src = self.src[len(xb):]
            return out + 0 * self.dummy

    m = Fires()
    m.src = y[y != 0].clone()
    by = metrics.asr_by_source_class(m, atk, x, y)
    assert math.isnan(by[0].item())
    assert by[1:].tolist() == [100.0 if c % 2 else 0.0 for c in range(1, 10)]
    m.src = y[y != 0].clone()
    assert metrics.attack_success_rate(m, atk, x, y) == pytest.approx(by[1:].mean().item())


def test_asr_by_source_class_refuses_an_asr_set_without_source_classes():
    y = torch.arange(10).repeat(3)
    x = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="source class"):
        metrics.asr_by_source_class(Lookup(10), attacks.get("cba", 10, poison_rate=0.1), x, y)
