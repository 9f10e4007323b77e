"""ngf_lib.hessian against the exact Hessian of models small enough to form it (torch.func.hessian), and against
PyHessian and curvlinops on the same model and batch."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.func import jacrev

from ngf_lib import hessian as hs
from ngf_lib.data import to_float


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: with two threads OpenMP overhead makes a product 50x slower on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------- problems

def mlp(seed=0, d=6, h=12, c=4, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).to(dtype)


def tiny_cnn(seed=0, dtype=torch.float64):
    """Conv + BN + dropout + pooling + linear on 8x8 RGB images: 300-odd parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.GELU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 4, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(16, 5)).to(dtype)


def data(n=64, d=6, c=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, c, (n,), generator=g)


def images(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 5, (n,), generator=g)


def fit(model, x, y, steps=50, lr=1e-2):
    """A few Adam steps in eval mode: a model part-way to a minimum, whose Hessian has the outlying top eigenvalues
    of a trained network (at random initialisation the trace is near zero and no estimator has a small error)."""
    xf = to_float(x).to(torch.float64) if x.dtype == torch.uint8 else x
    model.eval()
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(xf), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model


def exact_hessian(model, x, y, params=None):
    """The dense Hessian of the mean cross-entropy (eval mode) w.r.t. ``params`` (default: all), flattened in order."""
    named = dict(model.named_parameters())
    params = list(model.parameters()) if params is None else list(params)
    names = [n for p in params for n, q in named.items() if q is p]
    x = to_float(x).to(params[0].dtype) if x.dtype == torch.uint8 else x
    was = model.training
    model.eval()

    def loss(flat):
        parts = torch.split(flat, [p.numel() for p in params])
        over = {n: t.view_as(p) for n, t, p in zip(names, parts, params)}
        return F.cross_entropy(functional_call(model, over, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    H = jacrev(jacrev(loss))(flat)                            # reverse over reverse: exact, dense
    model.train(was)
    return (H + H.T) / 2


@pytest.fixture(scope="module")
def mlp_problem():
    x, y = data()
    model = fit(mlp(), x, y)
    H = exact_hessian(model, x, y)
    return model, x, y, H, torch.linalg.eigvalsh(H)


@pytest.fixture(scope="module")
def cnn_problem():
    x, y = images()
    model = fit(tiny_cnn(), x, y)
    H = exact_hessian(model, x, y)
    return model, x, y, H, torch.linalg.eigvalsh(H)


def rel(a, b):
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------------------------------------- the HVP

@pytest.mark.parametrize("problem", ["mlp_problem", "cnn_problem"])
def test_hvp_matches_exact_hessian(problem, request):
    model, x, y, H, _ = request.getfixturevalue(problem)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with hs.hessian_operator(model, x, y) as op:
        assert op.dim == H.shape[0]
        hv, hv2 = op.matvec(v), op @ (2 * v)
        assert op.n_hvp == 2
    torch.testing.assert_close(hv, H @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hv2, 2 * (H @ v), rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="outside"):        # the graph is gone and the model restored
        op.matvec(v)


def test_uint8_images_are_scaled_to_unit_interval(cnn_problem):
    model, x, y, H, _ = cnn_problem
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with hs.hessian_operator(model, to_float(x).double(), y) as op:
        from_float = op.matvec(v)
    with hs.hessian_operator(model, x, y) as op:
        from_uint8 = op.matvec(v)
    torch.testing.assert_close(from_uint8, from_float, rtol=1e-12, atol=1e-14)
    with hs.hessian_operator(model, x.double(), y) as op:      # 0..255 floats: a different loss, not rescaled
        assert not torch.allclose(op.matvec(v), from_float)


# ---------------------------------------------------------------------------------------------- lambda_max

@pytest.mark.parametrize("problem", ["mlp_problem", "cnn_problem"])
def test_lambda_max_matches_exact(problem, request):
    model, x, y, H, ev = request.getfixturevalue(problem)
    info = hs.lambda_max(model, x, y, return_info=True)
    assert info.converged and rel(info.value, ev[-1].item()) < 1e-3
    # the reported residual is a certificate: an exact eigenvalue lies within it (Bauer-Fike)
    assert (ev - info.value).abs().min() <= info.residual * (1 + 1e-6) + 1e-12
    assert info.residual <= 1e-4 * abs(info.value)
    assert info.n_hvp < H.shape[0] // 3                        # a Krylov method, not a dense eigensolver
    assert hs.lambda_max(model, x, y) == info.value          # plain call: the float, the same run


@pytest.mark.parametrize("problem", ["mlp_problem", "cnn_problem"])
def test_gradient_and_random_starts_reach_the_same_exact_value(problem, request):
    """Both starting vectors converge to the exact lambda_max; the random start is the default."""
    model, x, y, H, ev = request.getfixturevalue(problem)
    grad = hs.lambda_max(model, x, y, tol=1e-6, start="gradient", return_info=True)
    rand = hs.lambda_max(model, x, y, tol=1e-6, start="random", return_info=True)
    for info in (grad, rand):
        assert info.converged and rel(info.value, ev[-1].item()) < 1e-6
    assert hs.lambda_max(model, x, y, tol=1e-6) == rand.value                       # the default start
    with pytest.raises(ValueError, match="start must be"):
        hs.lambda_max(model, x, y, start="gradients")


def test_gradient_start_needs_fewer_products_where_the_gradient_is_in_the_top_eigenspace():
    """A quadratic loss 1/2 (w - w*)^T A (w - w*) whose displacement w - w* lies mostly along A's top eigenvector (as
    a trained network's gradient lies mostly in its top eigenspace): Lanczos from the gradient certifies lambda_max
    to 1e-2 in at most 2 products; from a random vector, on a spectrum without a gap, it needs more."""
    torch.manual_seed(0)
    d = 40
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1.0, 2.0, d, dtype=torch.float64)) @ q.T
    w_star = torch.randn(d, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_((w_star + q[:, -1] + 0.002 * torch.randn(d, dtype=torch.float64)).unsqueeze(0))

    def quad(out, yy):                                   # the loss ignores the data: only the weight matters
        delta = model.weight.view(-1) - w_star
        return 0.5 * delta @ a @ delta + 0 * out.sum()

    x, y = torch.zeros(2, d, dtype=torch.float64), torch.zeros(2)
    grad = hs.lambda_max(model, x, y, loss_fn=quad, tol=1e-2, start="gradient", return_info=True)
    rand = hs.lambda_max(model, x, y, loss_fn=quad, tol=1e-2, return_info=True)
    assert grad.converged and rand.converged
    assert rel(grad.value, 2.0) < 1e-2 and rel(rand.value, 2.0) < 1e-2
    assert grad.n_hvp <= 2 < rand.n_hvp


def test_gradient_in_an_invariant_subspace_without_the_top_eigenvector_restarts_at_random():
    """The displacement along the two *smallest* eigenvectors: the gradient's Krylov space is invariant after two
    steps and holds neither large eigenvalue; the restart from a random vector still finds lambda_max = 2."""
    torch.manual_seed(0)
    d = 12
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1.0, 2.0, d, dtype=torch.float64)) @ q.T
    model = nn.Linear(d, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_((q[:, 0] + q[:, 1]).unsqueeze(0))

    def quad(out, yy):
        w = model.weight.view(-1)
        return 0.5 * w @ a @ w + 0 * out.sum()

    got = hs.lambda_max(model, torch.zeros(2, d, dtype=torch.float64), torch.zeros(2), loss_fn=quad, tol=1e-8,
                        max_iter=d, start="gradient", return_info=True)
    assert got.converged and rel(got.value, 2.0) < 1e-8
    assert got.n_hvp > 2                                 # the two wasted steps from the gradient, then the restart


def test_zero_gradient_falls_back_to_the_random_start():
    """At a stationary point the gradient is zero; lambda_max must still find the top eigenvalue (2 x the largest
    eigenvalue of X^T X / n for the loss mean(out^2) of a zero linear map)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.zero_()
    exact = 2 * torch.linalg.eigvalsh(x.T @ x / 30)[-1].item()
    got = hs.lambda_max(model, x, torch.zeros(30), loss_fn=lambda o, yy: o.pow(2).mean(), tol=1e-8,
                        start="gradient")
    assert rel(got, exact) < 1e-6


@pytest.mark.parametrize("problem", ["mlp_problem", "cnn_problem"])
def test_lambda_max_gap_rule_is_as_accurate_with_no_more_products(problem, request):
    """The residual^2 / gap stopping rule: the true error stays within tol, and it never needs more products than
    the certified residual rule at the same tol."""
    model, x, y, H, ev = request.getfixturevalue(problem)
    for tol in (1e-3, 1e-6):
        gap = hs.lambda_max(model, x, y, tol=tol, stop="gap", return_info=True)
        res = hs.lambda_max(model, x, y, tol=tol, return_info=True)
        assert gap.converged and rel(gap.value, ev[-1].item()) <= tol
        assert gap.n_hvp <= res.n_hvp
    with pytest.raises(ValueError, match="stop must be"):
        hs.lambda_max(model, x, y, stop="relative")


def test_lambda_max_top_k(cnn_problem):
    model, x, y, H, ev = cnn_problem
    top = ev.flip(0)[:3].tolist()
    vals = hs.lambda_max(model, x, y, top_k=3)
    assert isinstance(vals, list) and len(vals) == 3 and vals == sorted(vals, reverse=True)
    info = hs.lambda_max(model, x, y, top_k=3, return_info=True)
    assert info.values == vals and info.converged
    for v, r, e in zip(vals, info.residuals, top):
        assert rel(v, e) < 1e-3
        assert r <= 1e-4 * abs(v) and (ev - v).abs().min() <= r * (1 + 1e-6) + 1e-12


def test_lambda_max_is_algebraic_largest(mlp_problem):
    """When the most negative eigenvalue is the larger in magnitude we still return the most positive one: the
    Hessian of minus the loss is -H, whose largest eigenvalue is -lambda_min(H)."""
    model, x, y, _, ev = mlp_problem
    assert ev[-1] > -ev[0] > 0                                 # so -H has |lambda_min| > lambda_max > 0
    lam = hs.lambda_max(model, x, y, loss_fn=lambda out, t: -F.cross_entropy(out, t))
    assert rel(lam, -ev[0].item()) < 1e-3


def test_lambda_max_warns_when_max_iter_is_too_small(mlp_problem):
    model, x, y, _, _ = mlp_problem
    with pytest.warns(RuntimeWarning, match="max_iter"):
        info = hs.lambda_max(model, x, y, tol=1e-12, max_iter=3, return_info=True)
    assert not info.converged and info.n_hvp == 3


# --------------------------------------------------------------------------------------------------- trace

def hutchinson_sd(A):
    """Standard deviation of g^T A g for a Rademacher g: sqrt(2 (||A||_F^2 - sum_i A_ii^2))."""
    return math.sqrt(2 * ((A ** 2).sum() - (A.diagonal() ** 2).sum()).item())


@pytest.mark.parametrize("method, tol", [("hutchinson", 0.1), ("hutch++", 0.01)])
def test_trace_within_three_standard_errors(method, tol, cnn_problem):
    model, x, y, H, _ = cnn_problem
    info = hs.trace(model, x, y, method=method, tol=tol, return_info=True)
    exact = H.trace().item()
    assert abs(info.value - exact) <= 3 * info.standard_error
    assert info.standard_error <= tol * abs(info.value) and info.n_samples >= 10
    assert info.n_hvp == info.n_samples + info.n_deflate
    assert info.n_deflate == (40 if method == "hutch++" else 0)
    est, se = hs.trace(model, x, y, method=method, tol=tol)
    assert (est, se) == (info.value, info.standard_error)


def test_hutchpp_needs_far_fewer_products_on_a_decaying_spectrum(cnn_problem):
    """The fitted CNN has one outlier that dominates the Hutchinson variance; deflating it gives 1 % at ~50 products
    (40 Lanczos steps and 10 probes), where plain Hutchinson needs (sd / (0.01 tr))^2, thousands."""
    model, x, y, H, _ = cnn_problem
    info = hs.trace(model, x, y, method="hutch++", tol=0.01, return_info=True)
    needed = (hutchinson_sd(H) / (0.01 * H.trace().item())) ** 2
    assert needed > 1000 and info.n_hvp < 60


def test_hutchinson_standard_error_is_honest(mlp_problem):
    """The reported SE agrees with the exact Rademacher variance, and with the scatter over seeds."""
    model, x, y, H, _ = mlp_problem
    m = 200
    info = hs.trace(model, x, y, method="hutchinson", tol=0, max_samples=m, return_info=True)
    assert info.n_samples == m
    assert 0.75 < info.standard_error / (hutchinson_sd(H) / math.sqrt(m)) < 1.33
    runs = [hs.trace(model, x, y, method="hutchinson", tol=0, max_samples=20, seed=s) for s in range(30)]
    est = torch.tensor([r[0] for r in runs])
    ses = torch.tensor([r[1] for r in runs])
    assert 0.6 < est.std().item() / ses.mean().item() < 1.6
    assert abs(est.mean().item() - H.trace().item()) < 4 * est.std().item() / math.sqrt(len(est))


def test_hutchpp_standard_error_is_honest_and_smaller(mlp_problem):
    model, x, y, H, _ = mlp_problem
    exact = H.trace().item()
    pp = [hs.trace(model, x, y, method="hutch++", n_deflate=10, tol=0, max_samples=15, seed=s) for s in range(30)]
    est, ses = torch.tensor([r[0] for r in pp]), torch.tensor([r[1] for r in pp])
    assert 0.6 < est.std().item() / ses.mean().item() < 1.6     # the SE describes the scatter
    assert abs(est.mean().item() - exact) < 4 * est.std().item() / math.sqrt(len(est))   # unbiased
    # the same budget of 25 products spent on plain Hutchinson: a larger error
    assert ses.mean().item() < 0.8 * hutchinson_sd(H) / math.sqrt(25)


def test_hutchpp_is_exact_on_a_low_rank_hessian():
    """Softmax regression on 4 points: rank(H) <= 4 (C - 1) = 8 < P = 63; 12 Lanczos steps capture its range."""
    torch.manual_seed(0)
    model = nn.Linear(20, 3).double()
    x, y = data(n=4, d=20, c=3)
    exact = exact_hessian(model, x, y).trace().item()
    est, se = hs.trace(model, x, y, method="hutch++", n_deflate=12)
    assert abs(est - exact) < 1e-9 * abs(exact) and se < 1e-9 * abs(exact)
    est, se = hs.trace(model, x, y, method="hutchinson", tol=0, max_samples=12)
    assert se > 1e-3 * abs(exact)                             # without deflation: a random estimate


def test_trace_exact_when_subspace_is_everything(mlp_problem):
    model, x, y, H, _ = mlp_problem
    info = hs.trace(model, x, y, n_deflate=H.shape[0] + 5, return_info=True)
    # Lanczos stops when its space becomes invariant (repeated eigenvalues, e.g. the softmax null space): the
    # remainder is then estimated, and found to be zero up to rounding
    assert rel(info.value, H.trace().item()) < 1e-10 and info.standard_error < 1e-12 * H.trace().item()
    assert info.n_deflate <= H.shape[0]


# ------------------------------------------------------------------------------------------------- density

def test_density_moments_match_exact_spectrum(mlp_problem):
    model, x, y, H, _ = mlp_problem
    P, n_runs = H.shape[0], 10
    nodes, weights = hs.density(model, x, y, n_runs=n_runs, n_iter=12)
    assert nodes.shape == weights.shape and len(nodes) <= n_runs * 12
    assert (weights >= 0).all() and abs(weights.sum().item() - 1) < 1e-12
    H2 = H @ H
    m1, m2 = (weights * nodes).sum().item(), (weights * nodes ** 2).sum().item()
    # run r gives v_r^T H^k v_r / P exactly (k < 2 n_iter): Hutchinson with n_runs probes, tolerance 4 sd
    assert abs(m1 - H.trace().item() / P) < 4 * hutchinson_sd(H) / math.sqrt(n_runs) / P
    assert abs(m2 - H2.trace().item() / P) < 4 * hutchinson_sd(H2) / math.sqrt(n_runs) / P
    assert nodes.min() >= torch.linalg.eigvalsh(H)[0] - 1e-9 and nodes.max() <= torch.linalg.eigvalsh(H)[-1] + 1e-9


def test_density_weights_sum_to_one_per_run(mlp_problem):
    model, x, y, _, _ = mlp_problem
    nodes, weights = hs.density(model, x, y, n_runs=3, n_iter=7)
    assert len(weights) == 21
    torch.testing.assert_close(weights.view(3, 7).sum(1), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_density_with_full_krylov_space_gives_the_eigenvalues():
    model, (x, y) = mlp(d=3, h=5, c=3), data(n=40, d=3, c=3)
    ev = torch.linalg.eigvalsh(exact_hessian(model, x, y))      # P = 38
    nodes, weights = hs.density(model, x, y, n_runs=1, n_iter=100)
    dist = (nodes[:, None] - ev[None, :]).abs()
    scale = ev.abs().max().item()
    assert dist.min(1).values.max() < 1e-7 * scale             # every node is an eigenvalue ...
    assert dist.min(0).values.max() < 1e-7 * scale             # ... and every eigenvalue is a node


def test_plot_density(mlp_problem):
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    import matplotlib.pyplot as plt
    model, x, y, _, ev = mlp_problem
    nodes, weights = hs.density(model, x, y, n_runs=2, n_iter=20)
    ax = hs.plot_density(nodes, weights, label="mlp")
    (line,) = ax.get_lines()
    gx, gy = line.get_data()
    assert ax.get_yscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
    assert abs(np.trapezoid(gy, gx) - 1) < 1e-3                # a density: unit area
    assert gx.min() < nodes.min().item() and gx.max() > nodes.max().item()
    assert abs(gx[np.argmax(gy)] - nodes[weights.argmax()].item()) < 0.05 * (ev[-1] - ev[0]).item()
    plt.close(ax.figure)
    with pytest.raises(ValueError):
        hs.plot_density(nodes[:3], weights[:2])


# ------------------------------------------------------------------------------- the model is left untouched

CALLS = {
    "lambda_max": lambda m, x, y, **kw: hs.lambda_max(m, x, y, **kw),
    "trace": lambda m, x, y, **kw: hs.trace(m, x, y, tol=0, max_samples=5, **kw),
    "density": lambda m, x, y, **kw: hs.density(m, x, y, n_runs=1, n_iter=5, **kw),
}


@pytest.mark.parametrize("fn", list(CALLS))
@pytest.mark.parametrize("start_training", [False, True])
@pytest.mark.parametrize("train_mode", [False, True])
def test_model_is_left_as_found(fn, start_training, train_mode):
    model, (x, y) = tiny_cnn(), images()
    model.train(start_training)
    model[0].weight.grad = torch.randn_like(model[0].weight)    # a .grad already set ...
    old_grad = model[0].weight.grad
    model[-1].bias.requires_grad_(False)                       # ... and a frozen parameter
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    CALLS[fn](model, x, y, train_mode=train_mode)
    assert model.training == start_training
    assert all(m.training == start_training for m in model.modules())
    for k, v in model.state_dict().items():                   # parameters and BN statistics, bit for bit
        assert torch.equal(v, before[k]), k
    assert model[0].weight.grad is old_grad and old_grad.grad_fn is None
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert not model[-1].bias.requires_grad and model[-1].weight.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)            # the global RNG is not consumed


def test_results_are_seeded(cnn_problem):
    model, x, y, _, _ = cnn_problem
    a = hs.trace(model, x, y, method="hutchinson", tol=0, max_samples=10, seed=5)
    assert a == hs.trace(model, x, y, method="hutchinson", tol=0, max_samples=10, seed=5)
    assert a != hs.trace(model, x, y, method="hutchinson", tol=0, max_samples=10, seed=6)
    n1, w1 = hs.density(model, x, y, n_runs=2, n_iter=8, seed=1)
    n2, w2 = hs.density(model, x, y, n_runs=2, n_iter=8, seed=1)
    assert torch.equal(n1, n2) and torch.equal(w1, w2)


def test_train_mode_uses_fixed_dropout_masks():
    """In train mode (dropout, batch statistics) the operator is still one fixed symmetric matrix, even when each
    product re-runs the batches of a loader."""
    model, (x, y) = tiny_cnn(), images(n=30)
    loader = [(x[:12], y[:12]), (x[12:], y[12:])]
    g = torch.Generator().manual_seed(0)
    u, v = (torch.randn(sum(p.numel() for p in model.parameters()), generator=g, dtype=torch.float64)
            for _ in range(2))
    with hs.hessian_operator(model, loader, train_mode=True, seed=3) as op:
        uHv, vHu, again = u @ op.matvec(v), v @ op.matvec(u), u @ op.matvec(v)
    assert abs(uHv - vHu) < 1e-9 * abs(uHv) and uHv == again
    with hs.hessian_operator(model, loader, train_mode=False) as op:
        assert abs(u @ op.matvec(v) - uHv) > 1e-6 * abs(uHv)   # train mode is really a different loss
    torch.manual_seed(123)                                     # the masks come from seed=, not the global RNG
    with hs.hessian_operator(model, loader, train_mode=True, seed=3) as op:
        assert u @ op.matvec(v) == uHv
    with hs.hessian_operator(model, loader, train_mode=True, seed=4) as op:
        assert u @ op.matvec(v) != uHv


# ----------------------------------------------------------------------------------------- data and params

def test_loader_equals_concatenated_batch(mlp_problem):
    model, x, y, H, ev = mlp_problem
    loader = [(x[:10], y[:10]), (x[10:30], y[10:30]), (x[30:], y[30:])]      # unequal sizes: weights matter
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with hs.hessian_operator(model, loader) as op:
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)
        assert op.n_hvp == 1
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=24)
    assert rel(hs.lambda_max(model, dl), hs.lambda_max(model, x, y)) < 1e-9
    assert rel(hs.lambda_max(model, iter(loader)), ev[-1].item()) < 1e-3       # a one-shot iterator works too


def test_params_subset_last_layer(cnn_problem):
    model, x, y, _, _ = cnn_problem
    last = list(model[-1].parameters())
    Hb = exact_hessian(model, x, y, params=last)
    ev = torch.linalg.eigvalsh(Hb)
    v = torch.randn(Hb.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with hs.hessian_operator(model, x, y, params=last) as op:
        assert op.dim == 16 * 5 + 5
        torch.testing.assert_close(op.matvec(v), Hb @ v, rtol=1e-9, atol=1e-12)
    assert rel(hs.lambda_max(model, x, y, params=last), ev[-1].item()) < 1e-3
    est, se = hs.trace(model, x, y, params=last, n_deflate=100)
    assert rel(est, Hb.trace().item()) < 1e-9


def test_frozen_parameters_default_and_explicit():
    model, (x, y) = mlp(), data()
    model[0].weight.requires_grad_(False)
    with hs.hessian_operator(model, x, y) as op:                # default: the trainable parameters only
        assert op.dim == sum(p.numel() for p in model.parameters()) - model[0].weight.numel()
    first = [model[0].weight]
    Hb = exact_hessian(model, x, y, params=first)
    assert rel(hs.lambda_max(model, x, y, params=first), torch.linalg.eigvalsh(Hb)[-1].item()) < 1e-3
    assert not model[0].weight.requires_grad


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.unused = mlp(), nn.Linear(2, 2).double()

    def forward(self, x):
        return self.net(x)


def test_unused_parameter_has_zero_curvature():
    model, (x, y) = WithUnused(), data()                       # PyHessian asserts on this; we give zero rows
    H = exact_hessian(model, x, y, params=list(model.net.parameters()))
    P = H.shape[0]
    v = torch.randn(P + 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with hs.hessian_operator(model, x, y) as op:
        hv = op.matvec(v)
    torch.testing.assert_close(hv[:P], H @ v[:P], rtol=1e-9, atol=1e-12)
    assert torch.equal(hv[P:], torch.zeros(6, dtype=torch.float64))


def test_custom_loss_fn(mlp_problem):
    model, x, y, _, _ = mlp_problem
    lam = hs.lambda_max(model, x, y)
    assert rel(hs.lambda_max(model, x, y, loss_fn=lambda out, t: 3 * F.cross_entropy(out, t)), 3 * lam) < 1e-6
    with pytest.raises(ValueError, match="scalar"):
        hs.lambda_max(model, x, y, loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="none"))


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: hs.lambda_max(m, x[:0], y[:0]), "empty"),
    (lambda m, x, y: hs.lambda_max(m, [], None), "empty"),
    (lambda m, x, y: hs.trace(m, x, y[:-1]), "lengths"),
    (lambda m, x, y: hs.density(m, [(x, y[:3])]), "lengths"),
    (lambda m, x, y: hs.lambda_max(m, x), "labels"),
    (lambda m, x, y: hs.lambda_max(m, [(x,)]), "pair"),
    (lambda m, x, y: hs.lambda_max(m, x, y, params=list(nn.Linear(6, 4).parameters())), "parameters of the model"),
    (lambda m, x, y: hs.lambda_max(m, x, y, params=[]), "empty"),
    (lambda m, x, y: hs.lambda_max(m, x, y, params=[m[0].bias, m[0].bias]), "twice"),
    (lambda m, x, y: hs.lambda_max(m, x, y, top_k=10_000), "top_k"),
    (lambda m, x, y: hs.trace(m, x, y, method="power"), "method"),
    (lambda m, x, y: hs.density(m, x, y, n_runs=0), "n_runs"),
])
def test_bad_input_raises_value_error(call, match):
    model, (x, y) = mlp(), data()
    with pytest.raises(ValueError, match=match):
        call(model, x, y)
    assert model.training and all(p.requires_grad for p in model.parameters())    # restored even after an error
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------- oracles

@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_agrees_with_pyhessian(cnn_problem):
    pyhessian = pytest.importorskip("pyhessian")
    model, x, y, _, ev = cnn_problem
    model32 = copy.deepcopy(model).float()
    xf = to_float(x)
    assert ev[-1] > -ev[0]                                     # power iteration finds the same eigenvalue
    torch.manual_seed(0)                                       # PyHessian draws from the global RNG
    ph = pyhessian.hessian(copy.deepcopy(model32), nn.CrossEntropyLoss(), data=(xf, y), cuda=False)
    top = ph.eigenvalues(maxIter=300, tol=1e-5)[0][0]
    ours = hs.lambda_max(model32, xf, y)
    assert rel(ours, top) < 5e-3
    assert rel(ours, ev[-1].item()) < 1e-3                     # and ours is right in float32 too


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")   # at its import
def test_agrees_with_curvlinops(cnn_problem):
    curvlinops = pytest.importorskip("curvlinops")
    model, x, y, _, _ = cnn_problem
    model = copy.deepcopy(model).eval()
    xf = to_float(x).double()
    loader = [(xf[:10], y[:10]), (xf[10:], y[10:])]
    params = [p for p in model.parameters()]
    ref = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, loader)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(ref.shape[1], generator=g, dtype=torch.float64)
        with hs.hessian_operator(model, loader) as op:
            torch.testing.assert_close(op.matvec(v), ref @ v, rtol=1e-8, atol=1e-11)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(cnn_problem):
    model, x, y, _, ev = cnn_problem
    gpu = copy.deepcopy(model).cuda()
    assert rel(hs.lambda_max(gpu, x, y), ev[-1].item()) < 1e-3
    a, b = hs.trace(gpu, x, y, tol=0, max_samples=10), hs.trace(model, x, y, tol=0, max_samples=10)
    assert abs(a[0] - b[0]) < 1e-6 * abs(b[0])                 # the same probes on both devices
