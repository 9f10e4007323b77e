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

# Table I (CIFAR-10, PreActResNet18): the "Initial" (backdoored) row, (lambda_max, Tr(H), ASR %, ACC %).
TABLE1_INITIAL = {
    "badnets": (573.8, 6625.8, 100.0, 92.96), "blend": (715.5, 7598.3, 100.0, 94.11),
    "troj-one": (616.3, 8046.4, 100.0, 89.57), "dyn-one": (564.2, 7108.5, 100.0, 92.52),
}


def no_defense(attack: str, dataset: str = "cifar10"):
    """The paper's (ASR, ACC) of the undefended model, or (None, ACC) for the benign model; None if not reported."""
    if dataset != "cifar10":
        return None
    if attack == "none":
        return (None, TABLE2_CIFAR10_BENIGN_ACC)
    return TABLE2_CIFAR10_NO_DEFENSE.get(attack)
