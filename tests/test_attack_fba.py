"""FBA (DFST with an asset-free "sunrise" filter, reference section 2.8): the style filter, the exact alpha blend, the
per-batch shares, the controlled detoxification (injector, compromised neurons, true-label detox samples) and the
training loop's ``after_epoch`` hook."""
import math

import pytest
import torch
import torch.nn as nn

from ngf_lib import attacks
from ngf_lib.attacks.base import Attack
from ngf_lib.attacks.fba import FeatureInjector, local_features, ssim, sunrise
from ngf_lib.data import to_float
from ngf_lib.models import Net, Normalize, build_model
from ngf_lib.train import TrainConfig, train


def _images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


# ---------------------------------------------------------------------------------------------------- the style

def test_sunrise_range_determinism_and_warmth():
    x = torch.cat([to_float(_images(8)[0]), torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)])
    out = sunrise(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, sunrise(x.clone()))
    grey = sunrise(torch.full((1, 3, 32, 32), 0.5))
    r, g, b = grey[0, :, 14:18, 14:18].mean((1, 2)).tolist()
    assert r > g > b and r > 0.7 and b < 0.45                  # warm, orange light
    assert grey[0, :, 0, 0].sum() < grey[0, :, 16, 16].sum()   # vignette: darker corners
    with pytest.raises(ValueError, match="N, 3, H, W"):
        sunrise(torch.rand(3, 32, 32))


def test_sunrise_is_differentiable():
    x = (0.3 + 0.3 * torch.rand(1, 3, 5, 5, dtype=torch.float64)).requires_grad_(True)   # away from the clips
    assert torch.autograd.gradcheck(sunrise, (x,))
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    sunrise(y).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_trigger_is_the_exact_alpha_blend():
    x8, _ = _images(6)
    x = to_float(x8)
    for alpha in (0.6, 0.3):
        atk = attacks.get("fba", 10, alpha=alpha)
        want = ((1 - alpha) * x + alpha * sunrise(x)).mul(255).round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(atk.apply(x8), want)
    assert attacks.get("fba", 10).alpha == 0.6
    assert attacks.get("fba", 10).state_tensors() == {}        # a fixed filter: nothing learned to save


def test_params_and_validation():
    p = attacks.get("fba", 10).params()
    for k in ("style", "alpha", "detox", "detox_fraction", "compromised_fraction", "injector_epochs", "injector_lr",
              "injector_batch_size", "injector_window", "ssim_weight", "act_weight", "poison_rate", "target"):
        assert k in p
    assert (p["poison_rate"], p["detox_fraction"], p["compromised_fraction"]) == (0.1, 0.03, 0.01)
    for kw, msg in (({"alpha": 0}, "alpha"), ({"injector_window": 4}, "odd"), ({"detox_fraction": 0}, "detox"),
                    ({"poison_rate": 0.6}, "within one batch")):
        with pytest.raises(ValueError, match=msg):
            attacks.get("fba", 10, **kw)


# ------------------------------------------------------------------------------------------- pieces of the detox

def test_ssim():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(3))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    s = ssim(noisy, x)
    assert (s < 0.95).all() and torch.allclose(s, ssim(x, noisy))
    z = noisy.clone().requires_grad_(True)
    ssim(z, x).mean().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_local_features_are_window_max_min_mean():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    f = local_features(x, 11)
    assert f.shape == (2, 12, 16, 16) and torch.equal(f[:, :3], x)
    i, j = 3, 12                                               # window rows 0..8, columns 7..15 (clipped)
    win = x[:, :, 0:9, 7:16]
    assert torch.equal(f[:, 3:6, i, j], win.amax((2, 3)))
    assert torch.equal(f[:, 6:9, i, j], win.amin((2, 3)))
    assert torch.allclose(f[:, 9:12, i, j], win.mean((2, 3)), atol=1e-6)


def test_the_injector_starts_as_the_identity():
    x = to_float(_images(4)[0])
    assert torch.equal(FeatureInjector()(x), x)
    atk = attacks.get("fba", 10)
    atk._add_injector(FeatureInjector())
    assert atk.n_injectors == 1
    assert torch.equal(atk.inject(x, torch.zeros(4, dtype=torch.long)), x)   # (1 - a) x + a x, on the pixel grid


class _MeanRGB(nn.Module):
    """Features = per-channel means (R, G, B): the channel the sunrise filter lifts most is red."""

    def forward(self, x):
        return x.mean((2, 3))


def test_compromised_neurons_are_the_largest_activation_gap():
    model = Net(Normalize((0, 0, 0), (1, 1, 1)), _MeanRGB(), nn.Linear(3, 10)).eval()
    x = to_float(_images(64)[0])
    atk = attacks.get("fba", 10, compromised_fraction=0.3)     # ceil(0.3 * 3) = 1 channel
    idx, gap = atk.compromised_neurons(model, x, batch_size=24)
    styled = atk.trigger(x).mean((0, 2, 3)) - x.mean((0, 2, 3))
    assert idx.tolist() == [int(styled.argmax())] == [0] and gap.item() == pytest.approx(styled.max().item(), abs=1e-5)
    assert len(attacks.get("fba", 10).compromised_neurons(model, x)[0]) == 1       # at least one channel


# --------------------------------------------------------------------------------------------- per-batch shares

def test_batch_shares_before_and_after_the_first_injector():
    x8, y = _images(128, 1)
    x = to_float(x8)
    atk = attacks.get("fba", 10, target=3)
    n = math.floor(0.1 * 128)
    assert atk.batch_counts(128) == (n, n)
    xb, yb = atk.training_batch(None, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(yb[:n], torch.full((n,), 3)) and torch.equal(yb[n:], y[n:])
    assert torch.equal((xb[:n] * 255).round().to(torch.uint8), atk.apply(x8[:n]))   # train trigger == test trigger
    assert torch.equal(xb[n:], x[n:])                          # no injector yet: the detox share stays clean
    k = math.ceil(0.03 * 128)                                  # kept for the detoxification: the last clean images
    assert len(atk._buffer) == 1 and torch.equal(atk._buffer[0], x8[-k:])
    inj = FeatureInjector()
    with torch.no_grad():
        inj.map.weight[:, 3:6, 0, 0] = 0.5 * torch.eye(3)      # a visible change: half the local max added
    atk._add_injector(inj)
    xb, yb = atk.training_batch(None, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(yb[n:], y[n:])                          # detox samples keep their true labels
    changed = (xb != x).flatten(1).any(1)
    assert changed[:2 * n].all() and not changed[2 * n:].any()
    want = atk.inject(x[n:2 * n], torch.zeros(n, dtype=torch.long))
    assert torch.equal(xb[n:2 * n], want)


def test_detoxification_trains_an_injector_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("cpu_net", 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    atk = attacks.get("fba", 10, injector_epochs=2, injector_batch_size=32)
    x8, y = _images(64, 2)
    for i in range(0, 64, 16):
        atk.training_batch(model, to_float(x8[i:i + 16]), y[i:i + 16], generator=torch.Generator().manual_seed(i))
    assert sum(len(t) for t in atk._buffer) == 4               # ceil(0.03 * 16) = 1 per batch
    atk.after_epoch(model, 1, 2)                               # after the last epoch: nothing
    assert atk.n_injectors == 0 and atk._buffer == []
    atk._buffer = [x8]
    atk.after_epoch(model, 0, 3)
    assert atk.n_injectors == 1 and atk._buffer == [] and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # weights and BN stats kept
    assert all(p.grad is None for p in model.parameters())
    log = atk.detox_log[0]
    assert log["epoch"] == 1 and log["n_images"] == 64 and len(log["neurons"]) == math.ceil(0.01 * 128)
    assert not torch.equal(atk._bank_w[0], FeatureInjector().map.weight.view(3, 12))   # it learned something
    xb, yb = atk.training_batch(model, to_float(x8), y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(yb[6:], y[6:]) and not torch.equal(xb[6:12], to_float(x8[6:12]))


# ------------------------------------------------------------------------------------------ the training loop

class _Spy(Attack):
    name = "test-spy"
    controls_training = True

    def __init__(self):
        super().__init__(10)
        self.calls, self.modes = [], []

    def apply(self, x, y=None):
        return x.clone()

    def training_batch(self, model, x, y, generator=None):
        self.modes.append(model.training)
        return x, y

    def after_epoch(self, model, epoch, epochs):
        self.calls.append((epoch, epochs))
        model.eval()                                           # the loop must put it back in train mode


def test_train_calls_after_epoch_once_per_epoch():
    x, y = _images(64, 3)
    spy = _Spy()
    torch.manual_seed(0)
    train(build_model("cpu_net", 10), x, y, TrainConfig(epochs=2, batch_size=32, lr=0.05), attack=spy,
          progress=False, device="cpu")
    assert spy.calls == [(0, 2), (1, 2)]
    assert spy.modes == [True] * 4


def test_a_tiny_training_run_detoxifies_after_the_first_epoch():
    x, y = _images(64, 4)
    atk = attacks.get("fba", 10, injector_epochs=1, injector_batch_size=32)
    torch.manual_seed(0)
    train(build_model("cpu_net", 10), x, y, TrainConfig(epochs=2, batch_size=32, lr=0.05), attack=atk,
          progress=False, device="cpu")
    assert atk.n_injectors == 1 and [d["epoch"] for d in atk.detox_log] == [1] and atk._buffer == []
    off = attacks.get("fba", 10, detox=False)
    assert off.batch_counts(128) == (12, 0)
