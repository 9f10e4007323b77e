import numpy as np
import pytest
import torch

from ngf_lib import data
from ngf_lib.data import DataError, augment, load_dataset, make_split


def test_cifar10_shapes_and_labels(cifar):
    assert cifar.x_train.shape == (50000, 3, 32, 32) and cifar.x_train.dtype == torch.uint8
    assert cifar.x_test.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(cifar.y_train), torch.full((10,), 5000))
    assert cifar.num_classes == 10


def test_split_is_disjoint_deterministic_and_covers(cifar):
    a = make_split(cifar.y_train, holdout=0.05, seed=0)
    b = make_split(cifar.y_train, holdout=0.05, seed=0)
    assert torch.equal(a.train_idx, b.train_idx) and torch.equal(a.pool_idx, b.pool_idx)
    tr, pool = set(a.train_idx.tolist()), set(a.pool_idx.tolist())
    assert not tr & pool
    assert len(tr | pool) == 50000 and len(pool) == 2500
    c = make_split(cifar.y_train, holdout=0.05, seed=1)
    assert not torch.equal(a.pool_idx, c.pool_idx)


def test_validation_sets_are_nested_and_balanced(cifar):
    sp = make_split(cifar.y_train, holdout=0.05, seed=0)
    v50, v500 = sp.val(50), sp.val(0.01)
    assert len(v500) == 500 and torch.equal(v500[:50], v50)
    assert torch.bincount(cifar.y_train[v50], minlength=10).tolist() == [5] * 10
    assert torch.bincount(cifar.y_train[v500], minlength=10).tolist() == [50] * 10
    with pytest.raises(ValueError, match="exceeds the held-out pool"):
        sp.val(5000)


def test_split_rejects_bad_holdout():
    with pytest.raises(ValueError, match="holdout"):
        make_split(torch.arange(10) % 2, holdout=0)


def test_augment_crops_and_flips_like_torchvision():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, flip=False, pad=2, generator=g)
    assert out.shape == x.shape
    # every output is a shifted window of the zero-padded input
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(out[i], xp[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    flipped = augment(x, flip=True, pad=0, generator=torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_augment_keeps_uint8():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert augment(x, flip=True).dtype == torch.uint8


def test_missing_data_names_the_problem(tmp_path):
    with pytest.raises(DataError, match="NGF_DATA_DIR"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_malformed_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("NGF_CACHE_DIR", str(tmp_path / "cache"))
    np.savez(tmp_path / "gtsrb.npz", x_train=np.zeros((4, 16, 16, 3), np.uint8), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.int64), classes=np.array(["a"] * 43))
    with pytest.raises(DataError, match="x_train should be uint8"):
        load_dataset("gtsrb", data_dir=tmp_path)
    (tmp_path / "gtsrb.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="could not read"):
        load_dataset("gtsrb", data_dir=tmp_path)


def test_second_load_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NGF_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    arrs = dict(x_train=rng.integers(0, 256, (43, 32, 32, 3), dtype=np.uint8), y_train=np.arange(43),
                x_test=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), y_test=np.arange(5),
                classes=np.array([f"c{i}" for i in range(43)]))
    np.savez(tmp_path / "gtsrb.npz", **arrs)
    ds = load_dataset("gtsrb", data_dir=tmp_path)
    assert torch.equal(ds.x_train, torch.from_numpy(arrs["x_train"]).permute(0, 3, 1, 2))
    assert list((tmp_path / "cache" / "datasets").glob("gtsrb-*.npz"))
    monkeypatch.setattr(data, "_load_gtsrb_npz", lambda p: (_ for _ in ()).throw(AssertionError("re-decoded")))
    ds2 = load_dataset("gtsrb", data_dir=tmp_path)
    assert torch.equal(ds2.x_test, ds.x_test)


def test_subset_is_random_seeded_and_covers_the_classes(cifar):
    x, y = cifar.subset("test", 200, seed=1)
    assert x.shape == (200, 3, 32, 32) and len(y) == 200
    assert len(torch.unique(y)) == 10                  # cifar.y_test[:200] is a single class
    assert len(torch.unique(cifar.y_test[:200])) == 1
    x2, y2 = cifar.subset("test", 200, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(cifar.subset("test", 200, seed=2)[1], y)
    with pytest.raises(ValueError, match="split"):
        cifar.subset("val", 10)
    with pytest.raises(ValueError, match="n must be"):
        cifar.subset("train", 0)
