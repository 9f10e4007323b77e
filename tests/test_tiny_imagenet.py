"""Tiny-ImageNet's row of Table II runs by parameter: its own folder layout is read, and the whole path (64x64
BadNets poisoning, ResNet34 training, NGF on its 512 -> 200 classifier, ACC/ASR) runs on a tiny synthetic dataset of
the real one's shape (200 classes, 64x64 JPEGs). The numbers of such a run mean nothing; that it runs is the test."""
import numpy as np
import pytest
import torch
from PIL import Image

from ngf_lib import attacks, metrics
from ngf_lib.data import DataError, load_dataset
from ngf_lib.defenses import ngf
from ngf_lib.models import build_model
from ngf_lib.train import TrainConfig, train


def make_tiny_imagenet(root, per_class=1, n_val=40):
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for j in range(per_class):
            colour = np.array([k % 256, (7 * k) % 256, (13 * k) % 256], dtype=np.uint8)
            img = (rng.integers(0, 40, (64, 64, 3)) + colour).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{w}_{j}.JPEG", quality=90)
    lines = []
    for j in range(n_val):
        img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
        Image.fromarray(img).save(base / "val" / "images" / f"val_{j}.JPEG", quality=90)
        lines.append(f"val_{j}.JPEG\t{wnids[j % 200]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_folder_loads_and_runs_the_table2_path(tmp_path, monkeypatch):
    monkeypatch.setenv("NGF_CACHE_DIR", str(tmp_path / "cache"))
    root = make_tiny_imagenet(tmp_path / "data")
    ds = load_dataset("tiny-imagenet", data_dir=root)
    assert ds.x_train.shape == (200, 3, 64, 64) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (40, 3, 64, 64) and ds.num_classes == 200
    assert ds.y_train.tolist() == list(range(200)) and ds.y_test[:3].tolist() == [0, 1, 2]
    atk = attacks.get("badnets", 200, poison_rate=0.1, image_size=64)
    ps = atk.poison_training_set(ds.x_train, ds.y_train)
    assert len(ps.poison_idx) == 20 and (ps.y[ps.poison_idx] == 0).all()
    torch.manual_seed(0)
    model = build_model("resnet34", 200, "tiny-imagenet")
    train(model, ps.x, ps.y, TrainConfig(epochs=1, batch_size=100, lr=0.01), progress=False)
    purified = ngf.purify(model, ds.x_train[:50], ds.y_train[:50], epochs=2)
    assert purified.fc.weight.shape == (200, 512)
    assert not torch.equal(purified.fc.weight, model.fc.weight)
    acc = metrics.accuracy(purified, ds.x_test, ds.y_test)
    asr = metrics.attack_success_rate(purified, atk, ds.x_test, ds.y_test)
    assert 0 <= acc <= 100 and 0 <= asr <= 100


def test_tiny_imagenet_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny-imagenet", data_dir=tmp_path, download=True)
    with pytest.raises(DataError, match="not found"):
        load_dataset("tiny-imagenet", data_dir=tmp_path)
    with pytest.raises(DataError, match="streams from disk"):
        load_dataset("imagenet", data_dir=tmp_path)
