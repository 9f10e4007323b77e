"""Curvature records (Section V): computed once on a fixed clean batch, stored apart from the result records, and
describing the same configuration as the defense's own record."""
import pytest
import torch

from ngf_lib import curvature, hessian, results, zoo


def test_curvature_record_matches_a_direct_computation_and_is_reused(monkeypatch):
    rec = curvature.curvature_record("cifar10", "badnets", "none", "smoke", n_images=64, tol=1e-3)
    assert rec["kind"] == "curvature" and rec["lambda_max"] > 0 and rec["trace_se"] >= 0
    assert rec["lambda_max_residual"] <= 1e-3 * rec["lambda_max"] * 1.0001
    bd = zoo.get_model("cifar10", "badnets", "smoke", 0, progress=False)
    x, y = curvature.clean_batch(zoo.experiment_data("cifar10", "smoke"), 64, 0)
    direct = hessian.lambda_max(bd.model, x, y, tol=1e-6)
    assert abs(rec["lambda_max"] - direct) <= 2e-3 * direct
    assert rec["acc"] == bd.record["acc"] and rec["asr"] == bd.record["asr"]
    # stored in its own folder, invisible to the result tables
    assert results.load_records("smoke", defense="none", attack="badnets") == [bd.record]
    assert results.load_records("smoke", kind="curvature") == [rec]
    monkeypatch.setattr(hessian, "lambda_max", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert curvature.curvature_record("cifar10", "badnets", "none", "smoke", n_images=64, tol=1e-3) == rec


def test_curvature_of_a_purified_model_uses_the_defense_record():
    from ngf_lib import experiments
    rec = curvature.curvature_record("cifar10", "badnets", "ngf", "smoke", n_images=32, epochs=5,
                                     with_density=True, density_runs=2, density_iter=10)
    d = experiments.defended_record("cifar10", "badnets", "ngf", "smoke", epochs=5)
    assert (rec["acc"], rec["asr"]) == (d["acc"], d["asr"])
    assert rec["config"]["defense_config"] == d["config"]["defense_config"]
    w = torch.tensor(rec["density"]["weights"])
    assert len(rec["density"]["nodes"]) == len(w) == 20 and abs(float(w.sum()) - 1) < 1e-6


def test_bad_curvature_arguments_are_named():
    with pytest.raises(ValueError, match="takes no defense parameters"):
        curvature.curvature_record("cifar10", "badnets", "none", "smoke", epochs=3)
    data = zoo.experiment_data("cifar10", "smoke")
    with pytest.raises(ValueError, match="n_images"):
        curvature.clean_batch(data, 0)


def test_training_trajectory_measures_lambda_max_without_changing_the_run():
    rec = curvature.trajectory_record("cifar10", "badnets", "smoke", every=2, n_images=32, eval_images=1000,
                                      progress=False)
    assert rec["kind"] == "trajectory" and rec["points_epoch"] == [2, 3]      # every 2 epochs, and the last one
    assert all(v > 0 for v in rec["points_lambda_max"]) and len(rec["points_asr"]) == 2
    # the zoo trains the same recipe without the hook: the measured run must end where that one ends
    bd = zoo.get_model("cifar10", "badnets", "smoke", 0, progress=False)
    assert rec["acc"] == pytest.approx(bd.record["acc"]) and rec["asr"] == pytest.approx(bd.record["asr"])
    assert curvature.trajectory_record("cifar10", "badnets", "smoke", every=2, n_images=32, eval_images=1000,
                                       compute=False) == rec
    assert results.load_records("smoke", kind="trajectory") == [rec]
    with pytest.raises(ValueError, match="every"):
        curvature.trajectory_record("cifar10", "badnets", "smoke", every=0)
