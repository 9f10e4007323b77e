"""The release variant (EKFAC on the classifier, SGD elsewhere) and NGF's switches towards it."""
import math

import pytest
import torch
import torch.nn as nn

from ngf_lib.defenses import ngf, release
from ngf_lib.defenses.release import EKFAC
from ngf_lib.models import build_model, classifier, features


def _layer_problem(B, d=6, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, C).double()
    with torch.no_grad():
        layer.weight.copy_(0.3 * torch.randn(C, d, generator=g, dtype=torch.float64))
        layer.bias.copy_(0.3 * torch.randn(C, generator=g, dtype=torch.float64))
    h = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    return layer, h, y


def _theta(layer):
    return torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1).clone()


def test_ekfac_is_the_exact_natural_gradient_when_the_fisher_is_kronecker():
    layer, h, y = _layer_problem(B=1)
    theta = _theta(layer)
    opt = EKFAC(layer, lr=0.1, momentum=0.0, weight_decay=0.0, damping=1e-2, kl_clip=None, stat_decay=0.0,
                stat_every=1)
    opt.zero_grad()
    nn.functional.cross_entropy(layer(h), y).backward()
    opt.step()
    Hb = torch.cat([h, torch.ones(1, 1, dtype=h.dtype)], 1)
    _, grad, R = ngf.loss_and_grad(theta, Hb, y)
    want = theta - 0.1 * ngf.dense_direction(R, Hb, grad, 1e-2)
    assert ((_theta(layer) - want).norm() / (want - theta).norm()) < 1e-8


def test_ekfac_scale_is_the_fisher_diagonal_in_the_kronecker_eigenbasis():
    layer, h, y = _layer_problem(B=50)
    Hb = torch.cat([h, torch.ones(50, 1, dtype=h.dtype)], 1)
    _, _, R = ngf.loss_and_grad(_theta(layer), Hb, y)
    opt = EKFAC(layer, stat_decay=0.0)
    opt.update_statistics(Hb, -R)                       # g = B dL/dz = p - e_y
    Q = torch.kron(opt.QS, opt.QA)                      # eigenbasis of S (x) A for row-major vec([W | b])
    G = ngf.per_sample_grads(R, Hb)
    Fm = G.T @ G / 50
    torch.testing.assert_close(opt.scale.reshape(-1), torch.diag(Q.T @ Fm @ Q))


def test_kl_clip_bounds_the_step_and_statistics_refresh_on_schedule():
    layer, h, y = _layer_problem(B=32)
    opt = EKFAC(layer, lr=1.0, momentum=0.0, weight_decay=0.0, damping=1e-3, kl_clip=1e-4, stat_every=3)
    factors = []
    for _ in range(4):
        theta = _theta(layer)
        opt.zero_grad()
        nn.functional.cross_entropy(layer(h), y).backward()
        V = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).clone()
        opt.step()
        step = theta - _theta(layer)                     # lr * nu * P, lr = 1
        P = opt.precondition(V, 1e-3)
        nu = float(step.norm() / P.norm())
        assert nu < 1 and float((step - nu * P).norm()) < 1e-9 * float(step.norm())
        assert nu ** 2 * float((P * V).sum()) == pytest.approx(1e-4, rel=1e-6)   # lr^2 nu^2 <P, V> = kl_clip
        factors.append(opt.S.clone())             # g changes with the weights; A (same inputs) would not
    assert torch.equal(factors[0], factors[1]) and torch.equal(factors[1], factors[2])
    assert not torch.equal(factors[2], factors[3])       # refreshed at step 3 (every 3 steps)


def _model_and_data(n=64, seed=0):
    torch.manual_seed(seed)
    model = build_model("cpu_net", 10).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return model, x, torch.arange(n) % 10


def _changed(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def test_release_trains_every_layer_and_leaves_the_input_alone():
    model, x, y = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = release.purify_release(model, x, y, steps=12, batch_size=16)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    changed = _changed(out, model)
    assert {"fc.weight", "fc.bias"} <= changed
    assert any(k.endswith("running_mean") for k in changed)          # BatchNorm in train mode
    assert any(k.endswith("weight") and not k.startswith("fc") for k in changed)   # backbone trained
    assert not out.training and all(p.requires_grad and p.grad is None for p in out.parameters())


def test_release_with_a_frozen_backbone_changes_only_the_classifier_and_lowers_the_loss():
    model, x, y = _model_and_data()
    out = release.purify_release(model, x, y, steps=40, batch_size=32, lr=0.05, backbone="frozen",
                                 bn_mode="eval", augment=False, milestones=())
    assert _changed(out, model) == {"fc.weight", "fc.bias"}
    h = features(model, x).double()
    ce = [nn.functional.cross_entropy(classifier(m).double()(h), y).item() for m in (model, out)]
    assert ce[1] < ce[0]


def test_ngf_switches_batchnorm_train_mode_and_steps_with_replacement():
    model, x, y = _model_and_data()
    out = ngf.purify(model, x, y, steps=10, batch_size=16, bn_mode="train", augment=True)
    changed = _changed(out, model)
    assert {"fc.weight", "fc.bias"} <= changed
    assert changed - {"fc.weight", "fc.bias"}                          # BatchNorm buffers moved ...
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
               for k in changed - {"fc.weight", "fc.bias"})            # ... and nothing else of the backbone
    assert len(out.ngf_history["loss"]) == math.ceil(10 / math.ceil(64 / 16))
    with pytest.raises(ValueError, match="bn_mode"):
        ngf.purify(model, x, y, bn_mode="batch")
    with pytest.raises(ValueError, match="batch_size"):
        ngf.purify(model, x, y, steps=10)


def test_schedule_draws_with_replacement_and_steps_down_at_the_milestones():
    got = list(ngf.schedule(10, steps=20, batch_size=4, lr=1.0, lr_gamma=0.1, lr_milestones=(0.35, 0.75),
                            generator=torch.Generator().manual_seed(0)))
    assert len(got) == 20 and all(len(idx) == 4 for _, idx, _ in got)
    lrs = [lr for lr, _, _ in got]
    assert lrs[6] == 1.0 and lrs[7] == pytest.approx(0.1) and lrs[14] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.01)
    drawn = torch.cat([idx for _, idx, _ in got])
    assert len(drawn.unique()) < len(drawn)                          # with replacement
    ends = [i for i, (_, _, e) in enumerate(got) if e]
    assert ends == [2, 5, 8, 11, 14, 17, 19]                         # every ceil(10 / 4) = 3 steps, and the last
    epochs = list(ngf.schedule(10, epochs=2, batch_size=4, generator=torch.Generator().manual_seed(0)))
    assert [len(i) for _, i, _ in epochs] == [4, 4, 2, 4, 4, 2]
    assert torch.equal(torch.cat([i for _, i, _ in epochs[:3]]).sort().values, torch.arange(10))


def test_momentum_switch_is_heavy_ball_on_the_natural_direction():
    g = torch.Generator().manual_seed(0)
    feats, y = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    theta0 = 0.1 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    res = ngf.purify_classifier(theta0, feats, y, epochs=3, lr=0.1, eta=0.0, damping=1e-2, momentum=0.9)
    Hb = torch.cat([feats, torch.ones(30, 1, dtype=feats.dtype)], 1)
    theta, buf = theta0.clone(), torch.zeros_like(theta0)
    for _ in range(3):
        _, grad, R = ngf.loss_and_grad(theta, Hb, y)
        buf = 0.9 * buf + ngf.dense_direction(R, Hb, grad, 1e-2)
        theta = theta - 0.1 * buf
    torch.testing.assert_close(res.theta, theta)


def test_a_data_loader_is_accepted():
    model, x, y = _model_and_data(n=32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    a = ngf.purify(model, loader, epochs=3)
    b = ngf.purify(model, x, y, epochs=3)
    torch.testing.assert_close(a.fc.weight, b.fc.weight)
    with pytest.raises(ValueError, match="labels y are missing"):
        ngf.purify(model, x)


def test_release_rejects_unknown_switches():
    model, x, y = _model_and_data(n=8)
    with pytest.raises(ValueError, match="classifier_update"):
        release.purify_release(model, x, y, classifier_update="adam")
    with pytest.raises(ValueError, match="backbone"):
        release.purify_release(model, x, y, backbone="partial")


def test_ablation_walks_one_ingredient_at_a_time():
    from ngf_lib import defenses, experiments
    for _, defense, cfg in release.ABLATION + release.FIRST_ORDER_CONTRASTS:
        experiments.effective_config(defenses.get(defense), cfg)        # every step is a valid configuration
    ngf_steps = [cfg for _, d, cfg in release.ABLATION if d == "ngf"]
    for a, b in zip(ngf_steps, ngf_steps[1:]):
        diff = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert len(diff) == 1 or diff == {"augment"} or diff == {"steps", "batch_size"}, diff
