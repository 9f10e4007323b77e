"""ImageNet's row of Table II by parameter: an ImageNet-style folder streamed from disk, poisoned on the fly, a
ResNet50 trained from the loader, NGF's Kronecker-factored path on its 2048 -> 1000 classifier, ACC/ASR from a
loader. Run on a tiny synthetic tree of the real one's shape (224x224 crops, 1000 classes); its numbers mean nothing."""
import numpy as np
import pytest
import torch
from PIL import Image

from ngf_lib import attacks, stream
from ngf_lib.data import DataError
from ngf_lib.defenses import ngf
from ngf_lib.models import build_model
from ngf_lib.train import TrainConfig


def make_imagenet(root, n_classes=1000, used=4, per_class=2):
    rng = np.random.default_rng(0)
    for split, k in (("train", per_class), ("val", 1)):
        for c in range(n_classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            if c < used:
                for j in range(k):
                    h, w = 240 + 20 * j, 300 - 10 * c                  # sizes vary, as ImageNet's do
                    Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(d / f"{c}_{j}.JPEG")
    return root


def test_imagenet_stream_path_end_to_end(tmp_path):
    root = make_imagenet(tmp_path / "imagenet")
    train = stream.ImageFolderStream(root, "train")
    val = stream.ImageFolderStream(root, "val", classes=train.classes)
    assert len(train.classes) == 1000 and len(train) == 8 and len(val) == 4
    x0, y0 = train[0]
    assert x0.shape == (3, 224, 224) and x0.dtype == torch.uint8 and y0 == 0
    assert torch.equal(val[0][0], val[0][0])                                  # evaluation crops are deterministic
    atk = attacks.get("badnets", 1000, poison_rate=0.25, image_size=224)
    ps = stream.PoisonedStream(train, atk)
    assert len(ps.poison_idx) == 2
    for i in range(len(train)):
        (xp, yp), (xc, yc) = ps[i], train[i]
        if i in ps.poison_idx.tolist():
            assert yp == 0 and torch.equal(xp, atk.apply(xc[None])[0]) and not torch.equal(xp, xc)
        else:
            assert yp == yc and torch.equal(xp, xc)
    torch.manual_seed(0)
    model = build_model("resnet50", 1000, "imagenet")
    loader = torch.utils.data.DataLoader(ps, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    hist = stream.train_stream(model, loader, TrainConfig(epochs=1, batch_size=4, lr=0.01), progress=False)
    assert hist["epoch"] == [1] and np.isfinite(hist["loss"][0])
    x_val, y_val = stream.load_images(val)
    assert x_val.shape == (4, 3, 224, 224) and y_val.tolist() == [0, 1, 2, 3]
    purified = ngf.purify(model, x_val, y_val, epochs=2, solver="kfac")
    assert purified.fc.weight.shape == (1000, 2048) and not torch.equal(purified.fc.weight, model.fc.weight)
    ev = stream.evaluate_stream(purified, torch.utils.data.DataLoader(val, batch_size=2), atk)
    assert 0 <= ev["acc"] <= 100 and 0 <= ev["asr"] <= 100


def test_imagenet_stream_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="ImageNet-style tree"):
        stream.ImageFolderStream(tmp_path, "train")
    (tmp_path / "train" / "n0").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        stream.ImageFolderStream(tmp_path, "train")
    wanet = attacks.get("wanet", 10)
    (tmp_path / "train" / "n0" / "a.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match="controls training"):
        stream.PoisonedStream(stream.ImageFolderStream(tmp_path, "train"), wanet)
