"""Chapter tables: ours beside the paper's, seeds averaged, differences signed."""
from ngf_lib import report


def rec(attack, defense, seed, asr, acc, t=1.0):
    return {"attack": attack, "defense": defense, "seed": seed, "asr": asr, "acc": acc, "wall_time_s": t}


def test_comparison_table_averages_seeds_and_signs_differences():
    runs = [rec("badnets", "ngf", 0, 2.0, 80.0), rec("badnets", "ngf", 1, 4.0, 82.0),
            rec("badnets", "cls-sgd", 0, 90.0, 84.0), rec("blend", "ngf", 0, 1.0, 85.0)]
    paper = {("ngf", "badnets"): (1.86, 88.32)}
    t = report.comparison_table(runs, lambda m, a: paper.get((m, a)), methods=["cls-sgd", "ngf"],
                                labels={"ngf": "NGF"})
    row = t.loc[("badnets", "NGF")]
    assert row["seeds"] == 2 and row["ASR (ours)"] == "3.00 ± 1.41" and row["ACC (ours)"] == "81.00 ± 1.41"
    assert row["ASR (paper)"] == "1.86" and row["ΔASR"] == "+1.1" and row["ΔACC"] == "-7.3"
    assert t.loc[("badnets", "cls-sgd")]["ASR (paper)"] == "—"
    assert list(t.index) == [("badnets", "cls-sgd"), ("badnets", "NGF"), ("blend", "NGF")]


def test_mean_sd():
    assert report.mean_sd([]) == "—" and report.mean_sd([1.234]) == "1.23"
    assert report.mean_sd([1.0, 3.0], 1) == "2.0 ± 1.4"
