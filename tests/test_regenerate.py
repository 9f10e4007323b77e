"""One command regenerates the book (ngf_lib.book): it computes what the store lacks, reuses the rest, runs on the
local engine and on submitit's local executor, executes chapters, and says what it did."""
import pytest

from ngf_lib import book, results


@pytest.mark.slow
def test_regenerate_computes_then_reuses_on_both_engines(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("# two lanes\nmodel:badnets defense:badnets:cls-sgd:epochs=3\nmodel:blend\n")
    s1 = book.regenerate("smoke", plan=plan, only=["09_reproduction_report"], out=tmp_path / "chapters")
    assert s1["computed"] == {"result": 3} and s1["reused"] == {} and s1["failed"] == []
    assert s1["chapters_rc"] == 0 and (tmp_path / "chapters" / "09_reproduction_report.ipynb").is_file()
    assert {r["attack"] for r in results.load_records("smoke")} == {"badnets", "blend"}
    # submitit (its local executor: one process per job), with one new task; the rest is reused
    plan.write_text("model:badnets defense:badnets:cls-sgd:epochs=3\nmodel:blend defense:blend:cls-sgd:epochs=3\n")
    s2 = book.regenerate("smoke", plan=plan, engine="submitit", cluster="local", skip_chapters=True,
                         log_dir=str(tmp_path / "logs"))
    assert s2["computed"] == {"result": 1} and s2["reused"] == {"result": 3} and s2["failed"] == []
    rec = [r for r in results.load_records("smoke", attack="blend", defense="cls-sgd")]
    assert len(rec) == 1


def test_regenerate_refuses_a_missing_plan_and_bad_tasks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no plan"):
        book.regenerate("smoke", plan=tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("model:badnets defense:badnets:nope\n")
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        book.regenerate("smoke", plan=bad)


def test_every_profile_plan_is_valid():
    from ngf_lib import runner
    assert [ds for _, ds in book.dataset_plans("cpu")] == ["cifar10", "gtsrb"]
    for profile in ("smoke", "cpu", "gpu"):
        for path, _ in book.dataset_plans(profile):
            lanes = runner.read_lanes(path)
            assert lanes
            for lane in lanes:
                for task in lane:
                    runner.check_task(task)
