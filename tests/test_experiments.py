"""Defended-model records: a defense runs on the clean validation split and its record is reused."""
import functools

import pytest
import torch

from ngf_lib import defenses, experiments, results


def test_registry_and_unknown_defense():
    assert {"ngf", "cls-sgd"} <= set(defenses.available())
    with pytest.raises(ValueError, match="unknown defense 'ngff'"):
        defenses.get("ngff")


@pytest.mark.parametrize("defense", ["ngf", "cls-sgd"])
def test_defended_record_is_written_once(defense, monkeypatch):
    rec = experiments.defended_record("cifar10", "badnets", defense, "smoke", epochs=5, progress=False)
    for k in results.REQUIRED_KEYS:
        assert k in rec
    assert rec["defense"] == defense and rec["n_val"] == 500 and rec["initial"]["asr"] is not None
    dc = rec["config"]["defense_config"]
    assert dc["epochs"] == 5 and dc["lr"] == 0.01 and "batch_size" in dc    # defaults are stored too

    @functools.wraps(defenses.REGISTRY[defense])        # same signature, so the same experiment key
    def boom(*a, **k):
        raise AssertionError("recomputed a finished defense")
    monkeypatch.setitem(defenses.REGISTRY, defense, boom)
    assert experiments.defended_record("cifar10", "badnets", defense, "smoke", epochs=5) == rec


def test_a_validation_size_equal_to_the_default_split_reads_its_run(monkeypatch):
    rec = experiments.defended_record("cifar10", "badnets", "ngf", "smoke", epochs=5, progress=False)
    assert rec["n_val"] == 500
    assert experiments.record_at_val_size("cifar10", "badnets", "ngf", "smoke", n=50, epochs=5, compute=False) is None
    small = experiments.record_at_val_size("cifar10", "badnets", "ngf", "smoke", n=50, epochs=5, progress=False)
    assert small["n_val"] == 50 and small["key"] != rec["key"]

    @functools.wraps(defenses.REGISTRY["ngf"])
    def boom(*a, **k):
        raise AssertionError("ran the default split a second time")
    monkeypatch.setitem(defenses.REGISTRY, "ngf", boom)
    assert experiments.record_at_val_size("cifar10", "badnets", "ngf", "smoke", n=500, epochs=5) == rec
    assert experiments.record_at_val_size("cifar10", "badnets", "ngf", "smoke", n=50, epochs=5) == small


def test_unknown_defense_parameter_is_named():
    with pytest.raises(ValueError, match="unknown defense parameter.*dampnig"):
        experiments.defended_record("cifar10", "badnets", "ngf", "smoke", dampnig=0.1)


def test_weights_digest_is_of_the_values_not_the_file(tmp_path):
    from ngf_lib import checkpoint
    from ngf_lib.models import build_model
    torch.manual_seed(0)
    m = build_model("cpu_net", 10)
    d = checkpoint.weights_digest(m)
    m2 = checkpoint.load_model(build_model("cpu_net", 10), checkpoint.save_model(m, tmp_path / "m.safetensors"))
    assert checkpoint.weights_digest(m2) == d == checkpoint.weights_digest(m.state_dict())
    with torch.no_grad():
        next(m2.parameters()).view(-1)[0] += 1e-6          # one number, in its last bits
    assert checkpoint.weights_digest(m2) != d


def test_a_defense_record_measures_the_weights_it_purified():
    """A model retrained since its No Defense record (another GPU: not bit-reproducible) is measured afresh, and the
    record says so; the unchanged model keeps the record's numbers."""
    from ngf_lib import checkpoint, metrics, paths, zoo
    bd = zoo.get_model("cifar10", "badnets", "smoke", progress=False)
    assert bd.record["weights_digest"] == bd.digest == checkpoint.weights_digest(bd.model)
    rec = experiments.defended_record("cifar10", "badnets", "cls-sgd", "smoke", epochs=1, progress=False)
    assert rec["model_digest"] == bd.digest and rec["model_matches_record"] is True
    assert rec["initial"] == {"acc": bd.record["acc"], "asr": bd.record["asr"]}
    with torch.no_grad():                                  # "retrained": other weights under the same key
        bd.model.fc.weight.mul_(-1.0)
    checkpoint.save_model(bd.model, paths.model_dir() / f"{bd.key}.safetensors")
    rec2 = experiments.defended_record("cifar10", "badnets", "cls-sgd", "smoke", epochs=2, progress=False)
    assert rec2["model_matches_record"] is False and rec2["model_digest"] == checkpoint.weights_digest(bd.model)
    data = zoo.experiment_data("cifar10", "smoke")
    assert abs(rec2["initial"]["acc"] - metrics.accuracy(bd.model, data.x_test, data.y_test)) < 1e-6
    assert rec2["initial"]["acc"] != rec["initial"]["acc"]
    # a No Defense record older than the digest cannot vouch for the weights: they are measured, not assumed
    old = dict(bd.record)
    del old["weights_digest"]
    results.write_record(old)
    rec3 = experiments.defended_record("cifar10", "badnets", "cls-sgd", "smoke", epochs=3, progress=False)
    assert rec3["model_matches_record"] is None
    assert rec3["initial"] == rec2["initial"] != {"acc": old["acc"], "asr": old["asr"]}
