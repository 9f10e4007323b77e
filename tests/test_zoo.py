"""End-to-end on the smoke profile: a real (tiny) training run, the results store and the model cache."""
import pytest
import torch

from ngf_lib import attacks, metrics, paths, results, zoo
from ngf_lib.checkpoint import load_model
from ngf_lib.models import build_model
from ngf_lib.train import TrainConfig, train


def test_record_is_written_then_reused_without_training(monkeypatch):
    rec = zoo.get_record("cifar10", "badnets", "smoke", seed=0, progress=False)
    for k in results.REQUIRED_KEYS:
        assert k in rec
    assert rec["profile"] == "smoke" and rec["defense"] == "none" and 0 <= rec["asr"] <= 100
    assert rec["n_poison"] == round(0.1 * rec["n_train"])
    assert len(results.load_records("smoke")) == 1

    def boom(*a, **k):
        raise AssertionError("a finished experiment was trained again")
    monkeypatch.setattr(zoo, "train", boom)
    assert zoo.get_record("cifar10", "badnets", "smoke", seed=0) == rec
    # the cached model loads back equal, and re-evaluates to the recorded numbers
    bd = zoo.get_model("cifar10", "badnets", "smoke", seed=0)
    m2 = load_model(build_model("cpu_net", 10), paths.model_dir() / f"{bd.key}.safetensors")
    for a, b in zip(bd.model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b.to(a.device))
    data = zoo.experiment_data("cifar10", "smoke")
    assert abs(metrics.accuracy(m2, data.x_test, data.y_test) - rec["acc"]) < 1e-6


def test_a_different_config_is_a_different_experiment():
    a = zoo.resolve("cifar10", "badnets", "smoke", 0, None, {})[3]
    b = zoo.resolve("cifar10", "badnets", "smoke", 1, None, {})[3]
    c = zoo.resolve("cifar10", "badnets", "smoke", 0, 0.05, {})[3]
    d = zoo.resolve("cifar10", "badnets", "smoke", 0, None, {"patch_size": 4})[3]
    assert len({a, b, c, d}) == 4


def test_benign_record_has_probe_baselines():
    rec = zoo.get_record("cifar10", "none", "smoke", seed=0, progress=False)
    assert rec["asr"] is None and set(rec["asr_probe"]) == set(zoo.PROBE_ATTACKS)


def test_backdoor_really_flips_predictions(cifar):
    """A small model trained briefly on BadNets-poisoned data sends most triggered images to the target,
    while the same recipe without poison does not."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(50000, generator=g)[:6000]
    x, y = cifar.x_train[idx], cifar.y_train[idx]
    te = torch.randperm(len(cifar.y_test), generator=g)[:2000]     # the stored test set is sorted by class
    xt, yt = cifar.x_test[te], cifar.y_test[te]
    cfg = TrainConfig(epochs=8, batch_size=128, lr=0.1, augment=False, nesterov=True, schedule="onecycle", warmup=0.2,
                      label_smoothing=0.1)
    atk = attacks.get("badnets", 10)
    asr = {}
    for name, (xx, yy) in {"clean": (x, y), "poisoned": (lambda p: (p.x, p.y))(atk.poison_training_set(x, y))}.items():
        torch.manual_seed(0)
        m = build_model("cpu_net", 10)
        train(m, xx, yy, cfg, progress=False, device="cpu")
        asr[name] = metrics.attack_success_rate(m, atk, xt, yt)
    assert asr["poisoned"] > 80.0, asr
    assert asr["clean"] < 30.0, asr


def test_train_epochs_trains_a_separate_model_for_that_many_epochs():
    prof, _, cfg, key = zoo.resolve("cifar10", "badnets", "smoke", 0, None, {})
    n = prof.train.epochs
    p2, _, cfg2, key2 = zoo.resolve("cifar10", "badnets", "smoke", 0, None, {}, train_epochs=n + 1)
    assert cfg2["train"]["epochs"] == n + 1 and p2.train.epochs == n + 1 and key2 != key
    assert {k: v for k, v in cfg2["train"].items() if k != "epochs"} == \
        {k: v for k, v in cfg["train"].items() if k != "epochs"}
    assert zoo.resolve("cifar10", "badnets", "smoke", 0, None, {}, train_epochs=None)[3] == key
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="train_epochs"):
            zoo.resolve("cifar10", "badnets", "smoke", 0, None, {}, train_epochs=bad)
    rec = zoo.get_record("cifar10", "badnets", "smoke", 0, progress=False, train_epochs=1)
    assert rec["config"]["train"]["epochs"] == 1 and len(rec["history"]["epoch"]) == 1
    assert zoo.get_record("cifar10", "badnets", "smoke", 0, compute=False) is None     # the profile's model: not trained
