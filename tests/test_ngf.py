"""NGF (paper eq. 3-6): the Woodbury solve equals the dense P x P reference; the model interface is safe."""
import pytest
import torch
import torch.nn as nn

from ngf_lib.defenses import ngf
from ngf_lib.models import build_model, classifier, features


def _problem(n=40, d=12, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    theta = 0.3 * torch.randn(C, d + 1, generator=g, dtype=torch.float64)
    return feats, y, theta


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("n, d, C", [(40, 12, 5), (7, 30, 10), (100, 8, 3)])
@pytest.mark.parametrize("damping", [1e-4, 1e-2, 1.0])
def test_woodbury_direction_equals_dense_reference(n, d, C, damping):
    feats, y, theta = _problem(n, d, C)
    Hb = torch.cat([feats, torch.ones(n, 1, dtype=feats.dtype)], 1)
    _, grad, R = ngf.loss_and_grad(theta, Hb, y)
    V = torch.randn(C, d + 1, dtype=torch.float64)
    for v in (grad, V):
        assert _rel(ngf.woodbury_direction(R, Hb, v, damping), ngf.dense_direction(R, Hb, v, damping)) < 1e-6


def test_gradient_and_fisher_diagonal_match_autograd():
    feats, y, theta = _problem()
    Hb = torch.cat([feats, torch.ones(len(y), 1, dtype=feats.dtype)], 1)
    theta_bar = theta + 0.1
    _, _, R0 = ngf.loss_and_grad(theta_bar, Hb, y)
    fdiag = ngf.fisher_diagonal(R0, Hb)
    G = ngf.per_sample_grads(R0, Hb)
    torch.testing.assert_close(fdiag.reshape(-1), torch.diag(G.T @ G / len(y)))
    t = theta.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(Hb @ t.T, y) + 0.5 * 0.1 * (fdiag * (t - theta_bar) ** 2).sum()
    loss.backward()
    L, grad, _ = ngf.loss_and_grad(theta, Hb, y, theta_bar, fdiag, eta=0.1)
    torch.testing.assert_close(grad, t.grad)
    torch.testing.assert_close(L, loss.detach())
    # per-sample gradients are those of log p(y|x)
    j = 3
    tj = theta_bar.clone().requires_grad_(True)
    torch.log_softmax(Hb[j] @ tj.T, 0)[y[j]].backward()
    torch.testing.assert_close(G[j], tj.grad.reshape(-1))


@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_purify_classifier_equals_dense_solver(batch_size, eta):
    feats, y, theta = _problem()
    kw = dict(epochs=6, lr=0.5, eta=eta, damping=1e-3, batch_size=batch_size, lr_step=3)
    a = ngf.purify_classifier(theta, feats, y, solver="woodbury", **kw)
    b = ngf.purify_classifier(theta, feats, y, solver="dense", **kw)
    assert _rel(a.theta, b.theta) < 1e-6
    assert _rel(a.theta, theta) > 1e-3            # it moved


def test_purify_changes_only_the_classifier_and_lowers_the_objective():
    torch.manual_seed(0)
    model = build_model("cpu_net", 10).eval()
    x = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(60) % 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = ngf.purify(model, x, y, epochs=20, lr=0.1, damping=1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"input model changed: {k}"
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}
    h = features(model, x).double()
    ce0 = nn.functional.cross_entropy(classifier(model).double()(h), y)
    ce1 = nn.functional.cross_entropy(classifier(out).double()(h), y)
    assert ce1 < ce0
    assert out.ngf_history["loss"][-1] < out.ngf_history["loss"][0] or ce1 < ce0


def test_augmented_purification_runs():
    torch.manual_seed(0)
    model = build_model("cpu_net", 10)
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    out = ngf.purify(model, x, torch.arange(20) % 10, epochs=2, augment=True)
    assert not torch.equal(out.fc.weight, model.fc.weight)


def test_bad_input_is_named():
    model = build_model("cpu_net", 10)
    x = torch.rand(4, 3, 32, 32)
    with pytest.raises(ValueError, match="no nn.Linear"):
        ngf.purify(nn.Sequential(nn.Conv2d(3, 3, 1)), x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        ngf.purify(model, x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="no clean validation data"):
        ngf.purify(model, x[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        ngf.purify(model, torch.full((4, 3, 32, 32), float("nan")), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ngf.purify(model, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="damping"):
        ngf.woodbury_direction(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3, 4), 0.0)


def test_optimizer_step_equals_the_functional_update():
    feats, y, theta = _problem(n=30, d=6, C=4)
    layer = nn.Linear(6, 4).double()
    with torch.no_grad():
        layer.weight.copy_(theta[:, :-1])
        layer.bias.copy_(theta[:, -1])
    opt = ngf.NGF(layer, lr=0.1, damping=1e-2)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(layer(feats), y).backward()
        opt.step()
    ref = ngf.purify_classifier(theta, feats, y, epochs=3, lr=0.1, eta=0.0, damping=1e-2, lr_step=0)
    got = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    assert _rel(got, ref.theta) < 1e-6
    with pytest.raises(TypeError, match="nn.Linear"):
        ngf.NGF(nn.Conv2d(1, 1, 1))


def test_kfac_is_exact_when_the_fisher_is_a_kronecker_product():
    feats, y, theta = _problem(n=1, d=9, C=4)
    Hb = torch.cat([feats, torch.ones(1, 1, dtype=feats.dtype)], 1)
    _, grad, R = ngf.loss_and_grad(theta, Hb, y)
    V = torch.randn(4, 10, dtype=torch.float64)
    for v in (grad, V):
        assert _rel(ngf.kfac_direction(R, Hb, v, 1e-3), ngf.dense_direction(R, Hb, v, 1e-3)) < 1e-6


def test_kfac_stays_close_to_the_exact_solve():
    feats, y, theta = _problem(n=200, d=10, C=4, seed=3)
    Hb = torch.cat([feats, torch.ones(200, 1, dtype=feats.dtype)], 1)
    _, grad, R = ngf.loss_and_grad(theta, Hb, y)
    k, d = ngf.kfac_direction(R, Hb, grad, 1e-2), ngf.dense_direction(R, Hb, grad, 1e-2)
    cos = (k * d).sum() / (k.norm() * d.norm())
    assert cos > 0.9, cos
    a = ngf.purify_classifier(theta, feats, y, epochs=20, lr=0.1, damping=1e-2, solver="kfac")
    b = ngf.purify_classifier(theta, feats, y, epochs=20, lr=0.1, damping=1e-2, solver="dense")
    assert _rel(a.theta - theta, b.theta - theta) < 0.5


def test_solver_choice():
    assert ngf.choose_solver(500, 5130) == "woodbury"
    assert ngf.choose_solver(50_000, 2_049_000) == "kfac"
    with pytest.raises(ValueError, match="unknown solver"):
        ngf.choose_solver(10, 10, "cholesky")
