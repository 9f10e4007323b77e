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


def test_paper_table2_transcription_reproduces_the_papers_average_drop_rows():
    """Table II's Avg. Drop row is the mean over attacks of (No Defense - defense): recomputing it from our
    transcription of the cells catches a mistyped cell (the paper rounds to 2 decimals). The paper's own rows that
    do not add up are listed in paper_values.TABLE2_INCONSISTENT, and must be exactly those."""
    from ngf_lib import paper_values as pv
    off = set()
    for dataset, drops in pv.TABLE2_AVG_DROP.items():
        attacks = [a for a in pv.TABLE2[dataset] if a != "none"]
        for defense, (asr_drop, acc_drop) in drops.items():
            cells = [(pv.TABLE2[dataset][a]["none"], pv.TABLE2[dataset][a][defense]) for a in attacks]
            asr = sum(n[0] - d[0] for n, d in cells) / len(cells)
            acc = sum(n[1] - d[1] for n, d in cells) / len(cells)
            if abs(asr - asr_drop) >= 0.02 or abs(acc - acc_drop) >= 0.02:
                off.add((dataset, defense))
    assert off == pv.TABLE2_INCONSISTENT
    for attack, v in pv.TABLE2_CIFAR10_NO_DEFENSE.items():
        assert pv.table2(attack, "none") == v


def test_paper_tables_agree_where_they_overlap():
    """Cells the paper prints in two tables must agree in our transcription (Table VIII at 500 images is Table II's
    BadNets row; Table V's NGF row is Table VI's; Table V's SGD row is Table II's FT column)."""
    from ngf_lib import paper_values as pv
    for d in ("anp", "awm", "ngf"):
        assert pv.TABLE8[500][d] == pv.table2("badnets", d)
    assert pv.TABLE5["ngf"] == pv.TABLE6["ngf"]
    for a in ("badnets", "blend", "troj-one", "dyn-one", "clb", "sig", "cba"):
        assert pv.TABLE5["ft"][a] == pv.table2(a, "ft")
    assert set(pv.TABLE7) == {"badnets", "blend", "troj-one"} and set(pv.TABLE7["blend"]) == {0.25, 0.35, 0.5}


def test_trigger_gallery_shows_each_attacks_own_triggered_image_and_residual():
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    import torch
    from ngf_lib import attacks, report
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    atks = [attacks.get("badnets", 10), attacks.get("blend", 10)]
    fig = report.plot_trigger_gallery(x, atks, amplify=4)
    grid = np.array(fig.axes).reshape(2, 5)
    for i, atk in enumerate(atks):
        xt = atk.apply(x)
        shown = grid[i, 3].get_images()[0].get_array()                 # second image, triggered
        assert np.array_equal(np.asarray(shown), xt[1].permute(1, 2, 0).numpy())
        res = np.asarray(grid[i, 4].get_images()[0].get_array()).astype(int)
        assert np.array_equal(res, ((xt[1].int() - x[1].int()).abs() * 4).clamp(0, 255).permute(1, 2, 0).numpy())
    assert grid[1, 0].get_ylabel() == "blend"


def test_a_defense_is_measured_from_the_weights_it_started_from():
    """A defense run on a retrained model (its ``initial`` differs from the No Defense record) drops from its own start."""
    nd = rec("badnets", "none", 0, 96.0, 88.0)
    moved = {**rec("badnets", "anp", 0, 3.0, 82.0), "initial": {"acc": 88.3, "asr": 95.8}}
    assert report.starting_point(moved, nd) == {"acc": 88.3, "asr": 95.8}
    assert report.starting_point(rec("badnets", "ft", 0, 18.0, 81.0), nd) == {"acc": 88.0, "asr": 96.0}


def test_outcome_reads_removed_kept_broken_and_not_planted_from_the_starting_weights():
    nd = rec("badnets", "none", 0, 96.0, 88.0)
    assert report.outcome(rec("badnets", "ft", 0, 19.9, 80.0), nd) == "removed"
    assert report.outcome(rec("badnets", "ft", 0, 20.0, 80.0), nd) == "kept"
    assert report.outcome(rec("badnets", "anp", 0, 0.0, 67.9), nd) == "broken"      # 20.1 points under 88
    assert report.outcome(rec("badnets", "anp", 0, 0.0, 68.0), nd) == "removed"     # exactly 20 points: not broken
    # a backdoor the attack never planted is not "removed" by anything
    weak = rec("sig", "none", 0, 0.03, 94.5)
    assert report.outcome(rec("sig", "ngf", 0, 0.0, 94.6), weak) == "not planted"
    assert not report.planted(weak) and report.planted(nd) and not report.planted(rec("none", "none", 0, None, 90.0))
    # judged from the weights the defense started from, when they differ from the No Defense record's
    moved = {**rec("badnets", "ft", 0, 30.0, 70.0), "initial": {"acc": 72.0, "asr": 95.0}}
    assert report.outcome(moved, rec("badnets", "none", 0, 96.0, 95.0)) == "kept"


def test_avg_drop_averages_each_defense_over_the_attacks_it_ran_on():
    runs = [rec("badnets", "none", 0, 90.0, 80.0), rec("blend", "none", 0, 100.0, 84.0),
            rec("badnets", "ngf", 0, 10.0, 79.0), rec("blend", "ngf", 0, 50.0, 82.0),
            rec("badnets", "ft", 0, 30.0, 81.0),
            {**rec("blend", "ft", 0, 0.0, 80.0), "initial": {"acc": 85.0, "asr": 98.0}}]
    d = report.avg_drop(runs, ["ngf", "ft", "anp"])
    assert d["ngf"] == (65.0, 1.5, 2)
    assert d["ft"] == ((60.0 + 98.0) / 2, (-1.0 + 5.0) / 2, 2)
    assert "anp" not in d


def test_removal_lines_sort_each_attack_into_one_outcome():
    runs = [rec("badnets", "none", 0, 90.0, 80.0), rec("blend", "none", 0, 100.0, 84.0),
            rec("sig", "none", 0, 1.0, 84.0), rec("wanet", "none", 0, 95.0, 84.0),
            rec("badnets", "anp", 0, 1.0, 79.0), rec("blend", "anp", 0, 64.0, 83.0),
            rec("sig", "anp", 0, 0.5, 83.0), {**rec("wanet", "anp", 0, 0.0, 30.0), "val_acc": 28.0}]
    (line,) = report.removal_lines(runs, ["anp", "ft"], {"anp": "ANP"})
    assert line == ("* **ANP** removes badnets; leaves blend (64 %); breaks the model on wanet (ACC 30 %, "
                    "validation ACC 28 %); no backdoor above the bar to remove on sig (undefended ASR 1 %)")
