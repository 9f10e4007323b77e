import pytest
import torch

from ngf_lib import attacks
from ngf_lib.attacks.base import Attack

# Attacks that learn artefacts in prepare() (a surrogate model, a trigger) get small settings here, so that the tests
# parametrised over the registry stay fast; every attack is built and prepared as ngf_lib.zoo does it.
FAST = {"troj-one": dict(surrogate_images=256, surrogate_epochs=1, steps=20),
        "troj-all": dict(surrogate_images=256, surrogate_epochs=1, steps=20),
        "clb": dict(surrogate_images=256, surrogate_epochs=1, steps=3),
        "dyn-one": dict(mask_epochs=1), "dyn-all": dict(mask_epochs=1),
        "cba": dict(asr_pairs=100), "fba": dict(injector_epochs=1, injector_batch_size=32),
        "issba": dict(codec_images=256, codec_epochs=1, eval_images=32)}
DATA_POISONING = [n for n in attacks.available()
                  if n != "none" and not getattr(attacks.REGISTRY[n], "poisons_per_batch", False)]


@pytest.fixture(autouse=True)
def artefact_cache(tmp_path, monkeypatch):
    """Artefacts learned by prepare() go to a temporary cache, never to the user's."""
    monkeypatch.setenv("NGF_CACHE_DIR", str(tmp_path / "cache"))


def _random_set(n, seed, num_classes=10, size=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, num_classes, (n,), generator=g))


def _ready(name, x, y, num_classes=10, **kw):
    """The attack ``name`` (with its FAST settings), prepared on the training set ``(x, y)``."""
    atk = attacks.get(name, num_classes, **{**FAST.get(name, {}), **kw})
    atk.prepare(x, y, device="cpu")
    if getattr(atk, "learns_trigger", False):       # the trigger is learned while training (Input-aware): a short one
        from ngf_lib.models import build_model
        from ngf_lib.train import TrainConfig, train
        torch.manual_seed(0)
        train(build_model("cpu_net", num_classes), x[:96], y[:96], TrainConfig(epochs=1, batch_size=32, lr=0.05),
              attack=atk, progress=False, device="cpu")
    return atk


def _twin(name, atk, x, y):
    """A second attack of the same configuration (and, for a learned trigger, the same learned state)."""
    if getattr(atk, "learns_trigger", False):
        twin = attacks.get(name, atk.num_classes, **FAST.get(name, {}))
        twin.load_state_tensors(atk.state_tensors())
        return twin
    return _ready(name, x, y)


def test_registry_lists_the_spine_attacks():
    assert {"none", "badnets", "blend"} <= set(attacks.available())


@pytest.mark.parametrize("name", [n for n in attacks.available() if n != "none"])
def test_trigger_shape_range_and_determinism(name):
    xp, yp = _random_set(256, seed=2)
    atk = _ready(name, xp, yp)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    a, b = atk.apply(x), _twin(name, atk, xp, yp).apply(x)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)                      # same config -> same trigger
    assert torch.equal(x, before)                 # input untouched
    assert not torch.equal(a, x)                  # the trigger changes the image


@pytest.mark.parametrize("name", [n for n in DATA_POISONING if not attacks.REGISTRY[n].clean_label])
def test_poisoning_changes_exactly_the_claimed_samples(name):
    n = 2000
    x, y = _random_set(n, seed=1)
    atk = _ready(name, x, y, poison_rate=0.1, target=3)
    ps = atk.poison_training_set(x, y)
    idx = ps.poison_idx
    assert len(idx) == round(0.1 * n) and len(set(idx.tolist())) == len(idx)
    if atk.all_to_all:
        assert torch.equal(ps.y[idx], (y[idx] + 1) % 10)              # all-to-all: y -> y + 1, sources of any class
    else:
        assert (y[idx] != 3).all()                                   # dirty-label all-to-one: non-target sources
        assert (ps.y[idx] == 3).all()
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(ps.x[rest], x[rest]) and torch.equal(ps.y[rest], y[rest])
    assert torch.equal(ps.x[idx], atk.apply(x[idx]))
    assert (ps.x[idx] != x[idx]).flatten(1).any(1).all()          # every poisoned image really changed


@pytest.mark.parametrize("name", [n for n in DATA_POISONING if attacks.REGISTRY[n].clean_label])
def test_clean_label_poisoning_touches_only_target_images_and_keeps_labels(name):
    n = 2000
    x, y = _random_set(n, seed=1)
    atk = _ready(name, x, y, poison_rate=0.05, target=3)          # below the target class's share (about 10 %)
    ps = atk.poison_training_set(x, y)
    idx = ps.poison_idx
    assert len(idx) == round(0.05 * n) and len(set(idx.tolist())) == len(idx)
    assert (y[idx] == 3).all() and torch.equal(ps.y, y)           # target-class sources, every label kept
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(ps.x[rest], x[rest])
    assert (ps.x[idx] != x[idx]).flatten(1).any(1).all()
    if type(atk).poison_training_set is Attack.poison_training_set:  # plain trigger (CLB adds a perturbation)
        assert torch.equal(ps.x[idx], atk.apply(x[idx]))
    with pytest.raises(ValueError, match="clean-label"):            # more than the target class holds
        _ready(name, x, y, poison_rate=0.2, target=3).poison_training_set(x, y)


@pytest.mark.parametrize("name", [n for n in attacks.available()
                                  if getattr(attacks.REGISTRY[n], "poisons_per_batch", False)])
def test_per_batch_poisoning_leaves_the_set_clean_and_relabels_a_share_of_every_batch(name):
    x, y = _random_set(256, seed=1)
    atk = _ready(name, x, y, poison_rate=0.1, target=3)
    ps = atk.poison_training_set(x, y)
    assert len(ps.poison_idx) == 0 and torch.equal(ps.x, x) and torch.equal(ps.y, y)
    xb, yb = atk.training_batch(None, x[:128].float() / 255, y[:128], generator=torch.Generator().manual_seed(0))
    n = 12                                                         # floor(0.1 * 128) poisoned samples, first
    want = (y[:n] + 1) % 10 if atk.all_to_all else torch.full((n,), 3)
    assert xb.shape == (128, 3, 32, 32) and torch.equal(yb[:n], want) and torch.equal(yb[n:], y[n:128])
    assert ((xb[:n] - x[:n] / 255).abs().flatten(1).amax(1) > 0).all()


def test_badnets_touches_only_the_corner():
    x = torch.randint(0, 200, (4, 3, 32, 32), dtype=torch.uint8)
    out = attacks.get("badnets", 10).apply(x)
    assert (out[..., 29:, 29:] == 255).all()
    diff = (out != x)
    diff[..., 29:, 29:] = False
    assert not diff.any()


def test_blend_is_the_alpha_mix_of_a_fixed_noise_image():
    atk = attacks.get("blend", 10, alpha=0.2)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    want = (0.8 * x.float() + 0.2 * atk.pattern.float()).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(atk.apply(x), want)
    p = atk.pattern.float()
    assert 110 < p.mean() < 140 and 65 < p.std() < 80              # uniform on 0..255: mean 127.5, std 73.9
    assert not torch.equal(atk.pattern, attacks.get("blend", 10, trigger_seed=1).pattern)


def test_asr_set_excludes_target_class():
    y = torch.tensor([0, 1, 2, 0, 5])
    x = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    xt, yt = attacks.get("badnets", 10, target=0).asr_set(x, y)
    assert len(xt) == 3 and (yt == 0).all()


class _AllToAll(Attack):
    name = "test-all2all"
    all_to_all = True

    def apply(self, x, y=None):
        return x ^ 1


class _CleanLabel(Attack):
    name = "test-clean-label"
    clean_label = True

    def apply(self, x, y=None):
        return x ^ 1


def test_all_to_all_labels_and_asr_set():
    atk = _AllToAll(10)
    y = torch.tensor([0, 9, 4])
    assert atk.target_labels(y).tolist() == [1, 0, 5]
    xt, yt = atk.asr_set(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), y)
    assert len(xt) == 3 and yt.tolist() == [1, 0, 5]


def test_clean_label_poisons_target_class_only_and_keeps_labels():
    y = torch.arange(1000) % 10
    x = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8)
    atk = _CleanLabel(10, poison_rate=0.05, target=2)
    ps = atk.poison_training_set(x, y)
    assert len(ps.poison_idx) == 50 and (y[ps.poison_idx] == 2).all()
    assert torch.equal(ps.y, y)
    with pytest.raises(ValueError, match="clean-label"):
        _CleanLabel(10, poison_rate=0.2, target=2).poison_indices(y)


@pytest.mark.parametrize("kw, msg", [({"poison_rate": 0.0}, "poison_rate"), ({"poison_rate": 1.0}, "poison_rate"),
                                     ({"target": 10}, "outside the 10 classes"), ({"target": -1}, "outside")])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        attacks.get("badnets", 10, **kw)


def test_unknown_attack_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown attack 'badnet'.*badnets"):
        attacks.get("badnet", 10)
