import os
import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every test writes records and models into its own temporary folders, never into the repository."""
    monkeypatch.setenv("NGF_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("NGF_MODEL_DIR", str(tmp_path / "models"))
    from ngf_lib import zoo
    zoo._DATA_MEMO.clear()
    yield


@pytest.fixture(scope="session")
def cifar():
    """CIFAR-10 from the configured data folder (decoded once, then read from the local cache)."""
    from ngf_lib.data import load_dataset
    return load_dataset("cifar10")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def small_badnets(cifar):
    """A small BadNets-backdoored cpu_net (trained once per test session, about 45 s on 2 idle cores), the
    defender's 500 clean validation images and 2,000 test images: the model every defense test purifies.

    6,000 training images, 8 epochs, no augmentation: measured ACC 59.9 %, ASR 96.0 %. (With random crops, 6 or 10
    epochs left the 3x3 corner patch unlearned: ASR 18 % and 10 %, ACC 43 % and 57 %.)

    Returns a dict: model (eval mode), attack, x_val, y_val (500), x_val5, y_val5 (2,500), x_test, y_test, acc, asr
    (of the model, percent)."""
    from ngf_lib import attacks, metrics
    from ngf_lib.data import make_split
    from ngf_lib.models import build_model
    from ngf_lib.train import TrainConfig, train
    split = make_split(cifar.y_train, holdout=0.05, seed=0)
    g = torch.Generator().manual_seed(0)
    tr = split.train_idx[torch.randperm(len(split.train_idx), generator=g)[:6000]]
    val = split.val(500)
    atk = attacks.get("badnets", 10, poison_rate=0.1)
    ps = atk.poison_training_set(cifar.x_train[tr], cifar.y_train[tr])
    torch.manual_seed(0)
    model = build_model("cpu_net", 10, "cifar10")
    cfg = TrainConfig(epochs=8, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True,
                      schedule="onecycle", warmup=0.15, augment=False)
    train(model, ps.x, ps.y, cfg, seed=0, progress=False, device="cpu")
    te = torch.randperm(len(cifar.y_test), generator=g)[:2000]
    val5 = split.val(2500)                            # the 5 % budget of I-BAU (includes the 500 above)
    out = {"model": model.eval(), "attack": atk, "x_val": cifar.x_train[val], "y_val": cifar.y_train[val],
           "x_val5": cifar.x_train[val5], "y_val5": cifar.y_train[val5],
           "x_test": cifar.x_test[te], "y_test": cifar.y_test[te]}
    out["acc"] = metrics.accuracy(model, out["x_test"], out["y_test"])
    out["asr"] = metrics.attack_success_rate(model, atk, out["x_test"], out["y_test"])
    return out
