"""Tables (ours beside the paper's), trigger figures and the provenance line every chapter prints."""
from __future__ import annotations

import time

import torch

from . import paper_values, results
from .profiles import get_profile


class RunInfo:
    """What produced a chapter: profile, device, commit, wall time. Create at the top, ``str()`` at the bottom."""

    def __init__(self, profile, device=None):
        self.profile = get_profile(profile).name
        self.device = results.device_name(device)
        self.commit = results.git_commit()
        self.started = results.now()
        self._t0 = time.time()

    @property
    def wall_time_s(self) -> float:
        return time.time() - self._t0

    def markdown(self) -> str:
        return (f"**Executed** with profile `{self.profile}` on {self.device}, ngf_lib commit `{self.commit}`, "
                f"started {self.started}, wall time {self.wall_time_s:.1f} s.")

    def __str__(self):
        return self.markdown()


def no_defense_table(records: list[dict], dataset: str = "cifar10"):
    """Our ACC/ASR of undefended models beside the paper's Table II No-Defense values (mean ± std over seeds).

    Columns: attack, seeds, ours ACC, ours ASR, paper ACC, paper ASR, ACC difference (ours - paper).
    """
    import pandas as pd
    rows = []
    by_attack: dict = {}
    for r in records:
        if r["dataset"] == dataset and r["defense"] == "none":
            by_attack.setdefault(r["attack"], []).append(r)
    order = ["none"] + sorted(a for a in by_attack if a != "none")
    for atk in [a for a in order if a in by_attack]:
        rs = by_attack[atk]
        acc = torch.tensor([r["acc"] for r in rs], dtype=torch.float64)
        asr = [r["asr"] for r in rs if r["asr"] is not None]
        paper = paper_values.no_defense(atk, dataset) or (None, None)

        def fmt(t):
            t = torch.as_tensor(t, dtype=torch.float64)
            return f"{t.mean():.2f}" if len(t) == 1 else f"{t.mean():.2f} ± {t.std():.2f}"
        rows.append({
            "attack": "benign (no attack)" if atk == "none" else atk,
            "seeds": len(rs),
            "ACC (ours)": fmt(acc),
            "ASR (ours)": fmt(asr) if asr else "—",
            "ACC (paper)": "—" if paper[1] is None else f"{paper[1]:.2f}",
            "ASR (paper)": "—" if paper[0] is None else f"{paper[0]:.2f}",
            "ΔACC (ours − paper)": "—" if paper[1] is None else f"{acc.mean().item() - paper[1]:+.2f}",
        })
    return pd.DataFrame(rows)


# The book's rule for reading a defended model (chapters 5 and 8): the backdoor is *removed* when the test ASR is
# under REMOVED_ASR %; the defense *broke* the model when its clean accuracy fell more than BROKEN_ACC_DROP points
# under the undefended model's (then a low ASR means nothing: a network at chance predicts the target 10 % of the time).
REMOVED_ASR = 20
BROKEN_ACC_DROP = 20


def starting_point(record: dict, no_defense: dict) -> dict:
    """The ``{"acc", "asr"}`` a defense record started from: its own ``initial`` (the weights it purified, measured
    afresh when they are not the ones the No Defense record measured: a GPU retrain is not bit-reproducible), else the
    No Defense record's. Drops (Table II's Avg. Drop row) and the *broken* rule are taken from it."""
    start = record.get("initial") or no_defense
    return {"acc": start["acc"], "asr": start["asr"]}


def planted(record: dict) -> bool:
    """Whether a model's record shows a backdoor to remove: its ASR at or above :data:`REMOVED_ASR` (a benign model's
    record, with no ASR, has none)."""
    return record["asr"] is not None and record["asr"] >= REMOVED_ASR


def outcome(record: dict, no_defense: dict) -> str:
    """How a defense record reads under the book's rule (chapter 5), from the weights it started from
    (:func:`starting_point`):

    * ``"not planted"``: the undefended model's ASR was already under :data:`REMOVED_ASR` (the attack planted no
      backdoor above the bar, so nothing can be removed; a low ASR after the defense is no evidence for it; an
      all-to-all attack on 43 classes can sit above chance and still under the bar, as Dyn-all does on GTSRB);
    * ``"broken"``: clean accuracy fell more than :data:`BROKEN_ACC_DROP` points (a low ASR then means nothing);
    * ``"removed"``: test ASR under :data:`REMOVED_ASR`;
    * ``"kept"``: otherwise.
    """
    start = starting_point(record, no_defense)
    if not planted(start):
        return "not planted"
    if record["acc"] < start["acc"] - BROKEN_ACC_DROP:
        return "broken"
    return "removed" if record["asr"] < REMOVED_ASR else "kept"


def avg_drop(runs, methods) -> dict:
    """Table II's Avg. Drop row: for each defense of ``methods``, ``(ASR drop, ACC drop, n attacks)``, the mean over
    the attacks it ran on of (start - after), in points; each run measured from the weights it started from
    (:func:`starting_point`). ``runs``: records of one seed, the No Defense ones (``defense == "none"``) among them;
    a defense with no run is left out."""
    nd = {r["attack"]: r for r in runs if r["defense"] == "none"}
    out = {}
    for m in methods:
        pairs = [(starting_point(r, nd[r["attack"]]), r) for r in runs if r["defense"] == m and r["attack"] in nd]
        if pairs:
            out[m] = (sum(n["asr"] - r["asr"] for n, r in pairs) / len(pairs),
                      sum(n["acc"] - r["acc"] for n, r in pairs) / len(pairs), len(pairs))
    return out


def removal_lines(runs, methods, labels=None) -> list[str]:
    """One markdown bullet per defense of ``methods`` (with runs): the attacks whose backdoor it removes, those whose
    backdoor it leaves (with the ASR left), those where it breaks the model (with the validation accuracy where the
    record has it: a defender sees the collapse without test data) and those the attack never planted (:func:`outcome`).
    """
    labels = labels or {}
    nd = {r["attack"]: r for r in runs if r["defense"] == "none"}
    lines = []
    for m in methods:
        rs = {r["attack"]: r for r in runs if r["defense"] == m and r["attack"] in nd}
        if not rs:
            continue
        by = {k: {a: r for a, r in rs.items() if outcome(r, nd[a]) == k}
              for k in ("removed", "kept", "broken", "not planted")}
        line = f"* **{labels.get(m, m)}** removes {', '.join(by['removed']) or 'none'}"
        if by["kept"]:
            line += "; leaves " + ", ".join(f"{a} ({r['asr']:.0f} %)" for a, r in by["kept"].items())
        if by["broken"]:
            line += "; breaks the model on " + ", ".join(
                f"{a} (ACC {r['acc']:.0f} %" + (f", validation ACC {r['val_acc']:.0f} %"
                                                if r.get("val_acc") is not None else "") + ")"
                for a, r in by["broken"].items())
        if by["not planted"]:
            line += "; no backdoor above the bar to remove on " + ", ".join(
                f"{a} (undefended ASR {starting_point(r, nd[a])['asr']:.0f} %)" for a, r in by["not planted"].items())
        lines.append(line)
    return lines


def mean_sd(values, digits: int = 2) -> str:
    """``"m"`` for one value, ``"m ± sd"`` (sample standard deviation) for several, ``"—"`` for none."""
    v = [float(a) for a in values if a is not None]
    if not v:
        return "—"
    t = torch.tensor(v, dtype=torch.float64)
    return f"{t.mean():.{digits}f}" if len(v) == 1 else f"{t.mean():.{digits}f} ± {t.std():.{digits}f}"


def comparison_table(runs, paper, *, methods=None, labels=None, time_col: bool = True):
    """Ours beside the paper's, one row per (attack, method): the table of every defense chapter.

    ``runs``: records (dicts with ``attack``, ``defense``, ``seed``, ``asr``, ``acc``, ``wall_time_s``), several
    seeds of one cell averaged (mean ± sd). ``paper(method, attack) -> (ASR, ACC)`` or ``None`` where the paper has no
    value. ``methods``: order (default: as met); ``labels``: display names. Columns: ASR and ACC ours and paper,
    ΔASR and ΔACC (ours − paper), seeds, and the mean wall time of the defense (s).
    """
    import pandas as pd
    cells: dict = {}
    for r in runs:
        cells.setdefault((r["attack"], r["defense"]), []).append(r)
    attacks = list(dict.fromkeys(a for a, _ in cells))
    methods = list(methods) if methods is not None else list(dict.fromkeys(m for _, m in cells))
    labels = labels or {}
    rows = []
    for a in attacks:
        for m in methods:
            rs = cells.get((a, m), [])
            if not rs:
                continue
            p = paper(m, a)
            asr = [r["asr"] for r in rs]
            acc = [r["acc"] for r in rs]
            row = {"attack": a, "method": labels.get(m, m), "seeds": len(rs),
                   "ASR (ours)": mean_sd(asr), "ASR (paper)": "—" if p is None else f"{p[0]:.2f}",
                   "ACC (ours)": mean_sd(acc), "ACC (paper)": "—" if p is None else f"{p[1]:.2f}",
                   "ΔASR": "—" if p is None else f"{sum(asr) / len(asr) - p[0]:+.1f}",
                   "ΔACC": "—" if p is None else f"{sum(acc) / len(acc) - p[1]:+.1f}"}
            if time_col:
                row["time (s)"] = "—" if m == "none" else mean_sd([r.get("wall_time_s") for r in rs], 1)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["attack", "method"]) if rows else pd.DataFrame()


def plot_triggers(x: torch.Tensor, attack_list, *, titles=None, amplify: float = 5.0):
    """Figure: for each attack a column pair — triggered image and its amplified residual; first column clean.

    ``x``: uint8 ``(n, 3, H, W)`` clean images (one row each). The residual ``|x' - x|`` is multiplied by
    ``amplify`` and clipped, so faint triggers (Blend) become visible.
    """
    import matplotlib.pyplot as plt
    n, k = len(x), len(attack_list)
    fig, axes = plt.subplots(n, 1 + 2 * k, figsize=(1.6 * (1 + 2 * k), 1.7 * n), squeeze=False)
    titles = titles or [a.name for a in attack_list]

    def show(ax, img, title=None):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_xticks([]), ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=8)
    for i in range(n):
        show(axes[i, 0], x[i], "clean" if i == 0 else None)
        for j, atk in enumerate(attack_list):
            xt = atk.apply(x[i:i + 1])[0]
            res = ((xt.float() - x[i].float()).abs() * amplify).clamp(0, 255).to(torch.uint8)
            show(axes[i, 1 + 2 * j], xt, titles[j] if i == 0 else None)
            show(axes[i, 2 + 2 * j], res, f"|residual| x{amplify:g}" if i == 0 else None)
    fig.tight_layout()
    return fig


def plot_trigger_gallery(x: torch.Tensor, attack_list, *, titles=None, amplify: float = 5.0):
    """Figure: one row per attack; for each clean image of ``x`` (uint8 ``(n, 3, H, W)``) a column pair — the
    triggered image and the amplified residual ``|x' - x| * amplify`` — after a first column of clean images.

    For a gallery of many attacks (the attack-gallery chapter); :func:`plot_triggers` puts attacks in columns.
    """
    import matplotlib.pyplot as plt
    n, k = len(x), len(attack_list)
    titles = titles or [a.name for a in attack_list]
    fig, axes = plt.subplots(k, 1 + 2 * n, figsize=(1.5 * (1 + 2 * n), 1.55 * k), squeeze=False)
    for i, atk in enumerate(attack_list):
        xt = atk.apply(x)
        axes[i, 0].imshow(x[0].permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(titles[i], fontsize=8, rotation=0, ha="right", va="center")
        for j in range(n):
            res = ((xt[j].float() - x[j].float()).abs() * amplify).clamp(0, 255).to(torch.uint8)
            axes[i, 1 + 2 * j].imshow(xt[j].permute(1, 2, 0).numpy())
            axes[i, 2 + 2 * j].imshow(res.permute(1, 2, 0).numpy())
            if i == 0:
                axes[i, 1 + 2 * j].set_title(f"triggered {j + 1}", fontsize=8)
                axes[i, 2 + 2 * j].set_title(f"|residual| x{amplify:g}", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("clean 1", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig
