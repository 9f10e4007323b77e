import json

import pytest

from ngf_lib import paths, results


def _rec(**kw):
    r = {"profile": "cpu", "dataset": "cifar10", "arch": "cpu_net", "attack": "badnets", "poison_rate": 0.1,
         "defense": "none", "seed": 0, "acc": 85.0, "asr": 99.0, "wall_time_s": 1.0, "device": "cpu",
         "git_commit": "abc", "created": results.now(), "config": {"a": 1}}
    r.update(kw)
    r.setdefault("key", results.config_key(r["config"]))
    return r


def test_record_round_trip_and_lookup():
    rec = _rec()
    path = results.write_record(rec)
    assert path.is_file() and path.parent.parent.parent == paths.results_dir()
    assert json.loads(path.read_text()) == rec
    assert results.find_record("cpu", "cifar10", rec["key"]) == rec
    assert results.find_record("cpu", "cifar10", "0" * 20) is None
    assert not list(path.parent.glob(".tmp-*"))            # atomic write leaves no temporary file


def test_load_records_filters():
    results.write_record(_rec())
    results.write_record(_rec(attack="blend", config={"a": 2}))
    results.write_record(_rec(profile="smoke", config={"a": 3}))
    assert len(results.load_records("cpu")) == 2
    assert [r["attack"] for r in results.load_records("cpu", attack="blend")] == ["blend"]
    assert len(results.load_records()) == 3
    df = results.records_frame(results.load_records("cpu"))
    assert list(df["attack"]) == ["badnets", "blend"]


def test_incomplete_record_is_refused():
    rec = _rec()
    del rec["seed"]
    with pytest.raises(ValueError, match="seed"):
        results.write_record(rec)


def test_config_key_is_order_independent():
    assert results.config_key({"a": 1, "b": [1, 2]}) == results.config_key({"b": [1, 2], "a": 1})
    assert results.config_key({"a": 1}) != results.config_key({"a": 2})


def test_jobs_sharing_is_written_from_the_environment_and_read_back_from_old_notes(monkeypatch):
    monkeypatch.setenv("NGF_JOBS_SHARING", "4")
    path = results.write_record(_rec())
    rec = json.loads(path.read_text())
    assert rec["jobs_sharing"] == 4 and results.jobs_sharing(rec) == 4
    assert results.jobs_sharing(_rec(run_note="6 jobs shared one GPU (times inflated)")) == 6   # records before the field
    assert results.jobs_sharing(_rec(run_note="4 lanes shared one GPU (ngf_lib.runner)")) == 4
    assert results.jobs_sharing(_rec(run_note="alone on the GPU")) == 1 and results.jobs_sharing(_rec()) == 1
    monkeypatch.setenv("NGF_JOBS_SHARING", "four")                  # a bad annotation never loses a finished run
    with pytest.warns(UserWarning, match="NGF_JOBS_SHARING must be a positive integer.*'four'"):
        path = results.write_record(_rec(config={"a": 9}))
    assert "jobs_sharing" not in json.loads(path.read_text())
