"""The paper's own numbers, as data, for the labelled "paper" columns of the book's tables.

Source: Karim et al., "Efficient Backdoor Removal Through Natural Gradient Fine-tuning" (``shared/paper``).
These numbers are shown only beside ours, in a column labelled as the paper's; no table of ours is built from them.
"""

# Table II (CIFAR-10, PreActResNet18, 10 % poison): the No-Defense column, (ASR %, ACC %).
TABLE2_CIFAR10_NO_DEFENSE = {
    "badnets": (100.0, 92.96), "blend": (100.0, 94.11), "troj-one": (100.0, 89.57), "troj-all": (100.0, 88.33),
    "sig": (100.0, 88.64), "dyn-one": (100.0, 92.52), "dyn-all": (100.0, 92.61), "clb": (100.0, 92.78),
    "cba": (93.20, 90.17), "fba": (100.0, 90.78), "wanet": (98.64, 92.29), "issba": (99.80, 92.80),
    "bppa": (99.70, 93.82),
}
# Table II: clean accuracy of the benign (un-attacked) model.
TABLE2_CIFAR10_BENIGN_ACC = 95.21

# Table I (CIFAR-10, PreActResNet18): rows -> attack -> (lambda_max, Tr(H), ASR %, ACC %).
TABLE1 = {
    "Initial": {"badnets": (573.8, 6625.8, 100.0, 92.96), "blend": (715.5, 7598.3, 100.0, 94.11),
                "troj-one": (616.3, 8046.4, 100.0, 89.57), "dyn-one": (564.2, 7108.5, 100.0, 92.52)},
    "Full-Net.": {"badnets": (4.42, 25.36, 4.87, 85.92), "blend": (4.65, 27.83, 4.77, 87.61),
                  "troj-one": (3.41, 26.15, 3.78, 82.18), "dyn-one": (2.34, 15.82, 4.73, 88.61)},
    "CNN-Bbone.": {"badnets": (4.71, 28.08, 5.03, 85.64), "blend": (5.14, 31.16, 4.92, 87.24),
                   "troj-one": (4.19, 29.67, 3.95, 81.86), "dyn-one": (2.46, 16.08, 5.11, 87.54)},
    "Cls. (SGD)": {"badnets": (556.1, 6726.3, 98.27, 90.17), "blend": (541.7, 5872.5, 97.29, 93.48),
                   "troj-one": (613.0, 6829.7, 96.25, 87.36), "dyn-one": (446.5, 5176.6, 93.58, 91.36)},
    "Cls. (NGF)": {"badnets": (2.79, 16.94, 1.86, 88.32), "blend": (2.43, 16.18, 0.38, 91.17),
                   "troj-one": (2.74, 17.32, 2.64, 84.21), "dyn-one": (1.19, 8.36, 1.17, 90.97)},
}
TABLE1_INITIAL = TABLE1["Initial"]
# (ASR %, ACC %) of the classifier-only rows
TABLE1_CLS_SGD = {a: v[2:] for a, v in TABLE1["Cls. (SGD)"].items()}
TABLE1_CLS_NGF = {a: v[2:] for a, v in TABLE1["Cls. (NGF)"].items()}
# Table IV: NGF's purification time on CIFAR-10 (RTX 3090), seconds
TABLE4_NGF_CIFAR10_S = 38.3


def no_defense(attack: str, dataset: str = "cifar10"):
    """The paper's (ASR, ACC) of the undefended model, or (None, ACC) for the benign model; None if not reported."""
    if dataset != "cifar10":
        return None
    if attack == "none":
        return (None, TABLE2_CIFAR10_BENIGN_ACC)
    return TABLE2_CIFAR10_NO_DEFENSE.get(attack)
