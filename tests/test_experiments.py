"""Defended-model records: a defense runs on the clean validation split and its record is reused."""
import functools

import pytest

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


def test_unknown_defense_parameter_is_named():
    with pytest.raises(ValueError, match="unknown defense parameter.*dampnig"):
        experiments.defended_record("cifar10", "badnets", "ngf", "smoke", dampnig=0.1)
