import pickle

import pytest
import torch
import torch.nn as nn

from ngf_lib import checkpoint
from ngf_lib.models import ARCHS, build_model, classifier, features


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_maps_images_to_logits(arch):
    m = build_model(arch, 7).eval()
    x = torch.rand(2, 3, 32, 32)
    assert m(x).shape == (2, 7)
    fc = classifier(m)
    assert isinstance(fc, nn.Linear) and fc.out_features == 7
    f = features(m, x)
    assert f.shape == (2, fc.in_features)
    torch.testing.assert_close(fc(f), m(x), rtol=1e-5, atol=1e-5)


def test_normalisation_is_inside_the_model():
    m = build_model("cpu_net", 10)
    assert m.normalize.mean.shape == (1, 3, 1, 1)
    assert "normalize.mean" in m.state_dict()


def test_features_accepts_uint8_and_restores_mode():
    m = build_model("cpu_net", 10).train()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    f = features(m, x)
    assert m.training
    m.eval()
    torch.testing.assert_close(f, m.features(x.float() / 255))


def test_features_of_a_user_model_via_hook():
    user = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.rand(4, 3, 2, 2)
    assert classifier(user) is user[3]
    torch.testing.assert_close(features(user, x), torch.relu(user[1](x.flatten(1))))


def test_model_without_linear_layer():
    with pytest.raises(ValueError, match="no nn.Linear"):
        classifier(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build_model("resnet9", 10)


def test_checkpoint_round_trip(tmp_path):
    m = build_model("cpu_net", 10)
    path = checkpoint.save_model(m, tmp_path / "m.safetensors")
    m2 = checkpoint.load_model(build_model("cpu_net", 10), path)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    torch.save(m.state_dict(), tmp_path / "m.pt")
    m3 = checkpoint.load_model(build_model("cpu_net", 10), tmp_path / "m.pt")
    assert torch.equal(m3.fc.weight, m.fc.weight)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"fc.weight": _Evil()}, f)
    with pytest.raises(checkpoint.UntrustedCheckpointError, match="execute code"):
        checkpoint.load_model(build_model("cpu_net", 10), bad)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_checkpoint_of_another_architecture(tmp_path):
    path = checkpoint.save_model(build_model("cpu_net", 10), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.load_model(build_model("wrn16_1", 10), path)
