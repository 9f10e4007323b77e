"""ISSBA: the learned steganographic trigger (ngf_lib/attacks/issba.py), on tiny encoder/decoder recipes."""
import math

import pytest
import torch

from ngf_lib import attacks
from ngf_lib.attacks import issba

TINY = dict(codec_images=256, codec_epochs=1, eval_images=32)


@pytest.fixture(autouse=True)
def one_thread_and_temp_cache(tmp_path, monkeypatch):
    """Artefacts go to a temporary cache; torch uses one thread (the machine's cores are shared)."""
    monkeypatch.setenv("NGF_CACHE_DIR", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_set(n, seed, num_classes=10, size=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, num_classes, (n,), generator=g))


def _ready(x, y, num_classes=10, **kw):
    atk = attacks.get("issba", num_classes, **{**TINY, **kw})
    atk.prepare(x, y, device="cpu")
    return atk


def test_registered():
    assert "issba" in attacks.available()
    atk = attacks.get("issba", 10)
    assert atk.target == 0 and atk.poison_rate == 0.1 and not atk.all_to_all and not atk.clean_label


def test_trigger_shape_range_determinism_and_quality_report():
    x, y = _random_set(256, seed=0)
    atk = _ready(x, y)
    xt, _ = _random_set(8, seed=1)
    before = xt.clone()
    a = atk.apply(xt)
    assert a.shape == xt.shape and a.dtype == torch.uint8
    assert torch.equal(xt, before)                                  # input untouched
    assert torch.equal(a, atk.apply(xt))                            # deterministic
    assert torch.equal(a, _ready(x, y).apply(xt))                   # same config -> same trigger (from the cache)
    assert (a != xt).flatten(1).any(1).all()                        # every image changes
    assert 0.0 <= atk.bit_accuracy <= 1.0 and atk.psnr > 0 and math.isfinite(atk.psnr)
    st = atk.state_tensors()
    assert torch.equal(st["secret"], atk.secret) and st["secret"].numel() == 20
    assert float(st["psnr"]) == pytest.approx(atk.psnr)
    # chunked application gives the same images
    atk.chunk = 3
    assert torch.equal(atk.apply(xt), a)


def test_residual_is_sample_specific():
    x, y = _random_set(256, seed=0)
    atk = _ready(x, y)
    xt = torch.stack([torch.full((3, 32, 32), 100, dtype=torch.uint8),
                      torch.arange(32 * 32 * 3).view(3, 32, 32).remainder(120).add(60).to(torch.uint8)])
    r = atk.apply(xt).to(torch.int16) - xt.to(torch.int16)          # no clipping: pixels in 60..180
    assert r.abs().sum() > 0
    assert not torch.equal(r[0], r[1])


def test_codec_is_cached_and_trained_once_per_config(monkeypatch, tmp_path):
    calls = []
    real = issba.train_codec

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(issba, "train_codec", counting)
    x, y = _random_set(256, seed=0)
    a = _ready(x, y)
    b = _ready(x, y)
    assert len(calls) == 1
    files = list((tmp_path / "cache" / "artefacts").glob("issba-codec-*.safetensors"))
    assert len(files) == 1
    xt, _ = _random_set(4, seed=3)
    assert torch.equal(a.apply(xt), b.apply(xt))
    _ready(x, y, l2_weight=5.0)                                      # another recipe: trained again
    assert len(calls) == 2
    _ready(x[:200], y[:200])                                         # another training set: trained again
    assert len(calls) == 3


def test_state_tensors_restore_the_trigger_without_prepare():
    x, y = _random_set(256, seed=0)
    atk = _ready(x, y)
    twin = attacks.get("issba", 10, **TINY)
    twin.load_state_tensors(atk.state_tensors())
    xt, _ = _random_set(4, seed=5)
    assert torch.equal(twin.apply(xt), atk.apply(xt))
    other = attacks.get("issba", 10, seed=1, **TINY)                 # another seed hides another secret
    with pytest.raises(ValueError, match="secret"):
        other.load_state_tensors(atk.state_tensors())


def test_training_learns_to_decode_real_images(cifar):
    """A short training on CIFAR-10 images (48 steps): the secret loss falls and the bits become decodable."""
    recipe = issba.CodecRecipe(images=1024, epochs=3, eval_images=128, width=8)
    state = issba.train_codec(cifar.x_train[:1200], recipe, secret=issba.random_secret(20, 0), seed=0)
    bce, acc = state["history_bce"], state["history_bit_acc"]
    assert len(bce) == 3 and bce[-1] < bce[0] - 0.05
    assert acc[-1] > acc[0] and acc[-1] > 0.6
    assert float(state["bit_accuracy"]) > 0.6                       # held-out images, the attack's own secret
    assert 0 < float(state["psnr"]) < 100


def test_l2_weight_schedule():
    r = issba.CodecRecipe(l2_weight=10.0, l2_delay=5, l2_ramp=10)
    assert issba.l2_weight_at(100, None, r) == 0.0                  # bit accuracy never passed 0.9
    assert issba.l2_weight_at(24, 20, r) == 0.0                     # within the delay
    assert issba.l2_weight_at(30, 20, r) == pytest.approx(5.0)      # half-way up the ramp
    assert issba.l2_weight_at(1000, 20, r) == 10.0
    assert issba.l2_weight_at(25, 20, issba.CodecRecipe(l2_delay=5, l2_ramp=0, l2_weight=3.0)) == 3.0


@pytest.mark.parametrize("size", [8, 13, 40])
def test_other_image_sizes_and_many_classes(size):
    x, y = _random_set(128, seed=0, num_classes=43, size=size)
    atk = _ready(x, y, num_classes=43, image_size=size, target=7)
    ps = atk.poison_training_set(x, y)
    assert ps.x.shape == x.shape and (ps.y[ps.poison_idx] == 7).all() and (y[ps.poison_idx] != 7).all()
    assert torch.equal(ps.x[ps.poison_idx], atk.apply(x[ps.poison_idx]))


def test_apply_before_prepare_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"prepare\(x_train, y_train\)"):
        attacks.get("issba", 10).apply(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_wrong_image_size_is_a_clear_error():
    x, y = _random_set(64, seed=0)
    atk = _ready(x, y)
    with pytest.raises(ValueError, match="image_size"):
        atk.apply(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_size"):
        attacks.get("issba", 10, **TINY).prepare(*_random_set(64, seed=0, size=16))


@pytest.mark.parametrize("kw, msg", [({"secret_bits": 0}, "bits"), ({"codec_images": 0}, "images"),
                                     ({"codec_epochs": 0}, "epochs"), ({"codec_batch_size": 0}, "batch_size"),
                                     ({"codec_lr": 0.0}, "lr"), ({"l2_weight": -1.0}, "l2_weight"),
                                     ({"l2_delay": -1}, "l2_delay"), ({"l2_ramp": -1}, "l2_ramp"),
                                     ({"codec_width": 0}, "width"), ({"eval_images": 0}, "eval_images"),
                                     ({"image_size": 4}, "image_size"), ({"poison_rate": 1.5}, "poison_rate")])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        attacks.get("issba", 10, **kw)


def test_params_hold_every_hyper_parameter():
    p = attacks.get("issba", 10, secret_bits=32, l2_weight=7.0).params()
    assert p["name"] == "issba" and p["codec"]["bits"] == 32 and p["codec"]["l2_weight"] == 7.0
    assert set(p["codec"]) == {"bits", "images", "epochs", "batch_size", "lr", "l2_weight", "l2_delay", "l2_ramp",
                               "width", "eval_images"}
