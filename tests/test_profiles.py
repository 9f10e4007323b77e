import pytest
import torch

from ngf_lib import zoo
from ngf_lib.models import build_model
from ngf_lib.profiles import PROFILES, get_profile
from ngf_lib.train import TrainConfig, lr_factor, train


def test_every_profile_names_an_architecture_for_cifar10_and_gtsrb():
    for p in PROFILES.values():
        assert p.arch("cifar10") and p.arch("gtsrb")


def test_unknown_profile_and_missing_architecture():
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke"):
        get_profile("fast")
    with pytest.raises(ValueError, match="no architecture for dataset 'imagenet'"):
        get_profile("cpu").arch("imagenet")
    with pytest.raises(ValueError, match="unknown profile"):
        zoo.get_record("cifar10", "badnets", "fast")


def test_schedules():
    cfg = TrainConfig(schedule="onecycle", warmup=0.25)
    assert lr_factor(cfg, 0, 100) == 0 and lr_factor(cfg, 25, 100) == 1 and lr_factor(cfg, 100, 100) == 0
    cfg = TrainConfig(schedule="multistep", milestones=(0.5,))
    assert lr_factor(cfg, 49, 100) == 1 and lr_factor(cfg, 50, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(TrainConfig(schedule="linear"), 0, 1)


def test_train_rejects_mismatched_or_float_data():
    m = build_model("cpu_net", 10)
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        train(m, x, torch.zeros(3, dtype=torch.long), TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="uint8"):
        train(m, x.float(), torch.zeros(4, dtype=torch.long), TrainConfig(epochs=1))


def test_profile_attack_defaults_apply_unless_the_caller_sets_them():
    """The cpu profile shortens the Input-aware mask pre-training; the model key follows the parameters actually
    used, and other attacks and profiles are unchanged."""
    from ngf_lib import zoo
    _, atk, cfg, key = zoo.resolve("cifar10", "dyn-one", "cpu", 0, None, {})
    assert atk.mask_epochs == 10 and cfg["attack"]["mask_epochs"] == 10
    _, atk25, _, key25 = zoo.resolve("cifar10", "dyn-one", "cpu", 0, None, {"mask_epochs": 25})
    assert atk25.mask_epochs == 25 and key25 != key
    _, atk_gpu, _, _ = zoo.resolve("cifar10", "dyn-one", "gpu", 0, None, {})
    assert atk_gpu.mask_epochs == 25
    assert get_profile("cpu").attack_defaults("badnets") == {}
    # CBA's contrastive weight is scaled for SGD on the cpu and gpu profiles; the paper profile keeps the reference's
    for prof, w in (("cpu", 0.1), ("gpu", 0.1), ("paper", 1.0)):
        _, cba, cfg_cba, _ = zoo.resolve("cifar10", "cba", prof, 0, None, {})
        assert cba.contrast_weight == w and cfg_cba["attack"]["contrast_weight"] == w
    _, cba1, _, key1 = zoo.resolve("cifar10", "cba", "cpu", 0, None, {"contrast_weight": 1.0})
    assert cba1.contrast_weight == 1.0 and key1 != zoo.resolve("cifar10", "cba", "cpu", 0, None, {})[3]


def test_smoke_profile_shortens_the_all_layer_defenses_and_the_caller_still_wins():
    """The smoke profile's defense defaults reach the defense and its record; an explicit setting overrides them;
    the cpu profile has none (its records use each defense's documented defaults)."""
    from ngf_lib import experiments
    assert get_profile("cpu").defense_params == {} and get_profile("smoke").defense_defaults("anp")["iters"] < 2000
    rec = experiments.defended_record("cifar10", "badnets", "ft", "smoke", progress=False)
    assert rec["config"]["defense_config"]["epochs"] == 10
    rec3 = experiments.defended_record("cifar10", "badnets", "ft", "smoke", progress=False, epochs=3)
    assert rec3["config"]["defense_config"]["epochs"] == 3 and rec3["key"] != rec["key"]


def test_gtsrb_reads_clean_label_rates_as_a_fraction_of_the_target_class():
    """No GTSRB class holds 10 % of its training set, so SIG and CLB read the rate per target class there, in every
    profile; CIFAR-10 keeps the book's convention, and a caller can still choose."""
    from ngf_lib import zoo
    for prof in ("smoke", "cpu", "gpu", "paper"):
        for attack in ("sig", "clb"):
            assert zoo.resolve("gtsrb", attack, prof, 0, None, {})[1].rate_of == "target"
            assert zoo.resolve("cifar10", attack, prof, 0, None, {})[1].rate_of == "train"
    assert zoo.resolve("gtsrb", "sig", "cpu", 0, None, {"rate_of": "train"})[1].rate_of == "train"
    # SIG poisons every target-class image on GTSRB at delta 40 unless the caller says otherwise; CLB keeps 10 %
    sig = zoo.resolve("gtsrb", "sig", "cpu", 0, None, {})[1]
    assert (sig.poison_rate, sig.delta) == (1.0, 40.0)
    assert zoo.resolve("cifar10", "sig", "cpu", 0, None, {})[1].delta == 20
    assert zoo.resolve("gtsrb", "sig", "cpu", 0, 0.1, {})[1].poison_rate == 0.1
    assert zoo.resolve("gtsrb", "clb", "cpu", 0, None, {})[1].poison_rate == 0.1
    assert zoo.resolve("cifar10", "sig", "cpu", 0, None, {})[1].poison_rate == 0.1
    assert get_profile("cpu").attack_defaults("badnets", "gtsrb") == {}
