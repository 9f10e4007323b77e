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


# Table III (CIFAR-10): one-layer optimizers, attack -> method -> (ASR %, ACC %).
TABLE3 = {
    "badnets": {"No Defense": (100, 92.96), "cls-adagrad": (96.54, 91.16), "cls-rmsprop": (98.33, 91.73),
                "cls-adam": (97.68, 91.45), "cls-sam": (91.08, 90.12), "ngf": (1.86, 88.32)},
    "blend": {"No Defense": (100, 94.11), "cls-adagrad": (97.43, 91.67), "cls-rmsprop": (95.41, 92.21),
              "cls-adam": (94.79, 92.15), "cls-sam": (89.25, 91.11), "ngf": (0.38, 91.17)},
    "troj-one": {"No Defense": (100, 89.57), "cls-adagrad": (95.52, 88.51), "cls-rmsprop": (94.87, 88.02),
                 "cls-adam": (96.74, 87.98), "cls-sam": (92.15, 88.33), "ngf": (2.64, 84.21)},
    "dyn-one": {"No Defense": (100, 92.52), "cls-adagrad": (97.37, 91.45), "cls-rmsprop": (93.50, 91.12),
                "cls-adam": (96.90, 91.40), "cls-sam": (92.24, 90.79), "ngf": (1.17, 90.97)},
    "sig": {"No Defense": (100, 88.64), "cls-adagrad": (86.20, 87.98), "cls-rmsprop": (86.31, 87.74),
            "cls-adam": (85.66, 87.75), "cls-sam": (81.68, 88.04), "ngf": (0.31, 83.14)},
    "clb": {"No Defense": (100, 92.78), "cls-adagrad": (96.81, 90.86), "cls-rmsprop": (95.53, 90.96),
            "cls-adam": (95.87, 91.02), "cls-sam": (91.04, 90.97), "ngf": (1.04, 88.37)},
}

_T56_ATTACKS = ("badnets", "blend", "troj-one", "dyn-one", "clb", "sig", "cba")


def _rows(*pairs):
    return dict(zip(_T56_ATTACKS, pairs))


# Table V (CIFAR-10): all-layer fine-tuning, method -> attack -> (ASR %, ACC %); runtime in seconds (RTX 3090).
TABLE5 = {
    "sam-all": _rows((3.91, 85.75), (2.74, 88.26), (3.53, 82.52), (3.28, 87.04), (1.47, 86.30), (0.38, 84.70),
                     (26.14, 85.41)),
    "ft": _rows((4.87, 85.92), (4.77, 87.61), (3.78, 82.18), (4.73, 88.61), (1.83, 87.41), (1.04, 81.92),
                (27.80, 83.79)),
    "ngf": _rows((1.86, 88.32), (0.38, 91.17), (2.64, 84.21), (1.17, 90.97), (1.04, 88.37), (0.12, 84.16),
                 (24.60, 85.97)),
    "ngf-all": _rows((1.47, 88.65), (0.42, 92.28), (2.05, 84.61), (1.06, 90.42), (0.60, 88.74), (0.18, 85.12),
                     (19.86, 86.30)),
}
TABLE5_RUNTIME_S = {"ft": 78.1, "sam-all": 116.3, "ngf": 38.3, "ngf-all": 173.2}

# Table VI (CIFAR-10): last layer, method -> attack -> (ASR %, ACC %); runtime in seconds (RTX 3090).
TABLE6 = {
    "cls-sgd-long": _rows((82.34, 90.68), (7.13, 92.46), (86.18, 87.29), (57.13, 90.51), (13.84, 88.11),
                          (0.26, 85.74), (84.41, 86.87)),
    "ngf-noreg": _rows((1.91, 87.65), (0.31, 90.54), (3.04, 83.31), (1.28, 90.24), (0.92, 87.13), (0.16, 84.46),
                       (25.58, 84.81)),
    "ngf": TABLE5["ngf"],
}
TABLE6_RUNTIME_S = {"cls-sgd-long": 907.5, "ngf-noreg": 37.8, "ngf": 38.3}
