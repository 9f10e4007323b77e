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
