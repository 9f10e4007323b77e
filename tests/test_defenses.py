"""Every registered defense: same entry point, a purified copy of the same architecture, the input untouched,
no data read behind the defender's back; and what each defense claims to do structurally (prune, distil, SAM)."""
import pytest
import torch

from ngf_lib import defenses
from ngf_lib.defenses import fp, ft, nad, ngf, ngf_all, one_layer
from ngf_lib.models import build_model, features

FAST = {  # the smallest configuration that still runs every code path
    "ngf": dict(epochs=5), "ngf-noreg": dict(epochs=5), "ngf-release": dict(steps=10, batch_size=32),
    "ft": dict(epochs=2), "ft-backbone": dict(epochs=1), "sam-all": dict(epochs=1), "fp": dict(epochs=1), "nad": dict(teacher_epochs=1, epochs=1),
    "cls-sgd-long": dict(epochs=5), "ngf-all": dict(epochs=1, stat_every=2), "anp": dict(iters=20, threshold=0.9),
    "i-bau": dict(rounds=1), "awm": dict(epochs=1, inner=1),
    "mcr": dict(endpoint_epochs=1, epochs=1),
}
MASKING = {"anp": torch.nn.BatchNorm2d, "awm": torch.nn.Conv2d}   # change only the weights of these layers
ONE_LAYER = {"ngf", "ngf-noreg"} | {d for d in defenses.available() if d.startswith("cls-")}


@pytest.mark.parametrize("name", defenses.available())
def test_every_defense_returns_a_purified_copy(name, small_badnets, monkeypatch):
    import ngf_lib.data
    import ngf_lib.zoo

    def forbidden(*a, **k):
        raise AssertionError(f"{name} tried to load data by itself: a defense sees only the clean split it is given")
    monkeypatch.setattr(ngf_lib.data, "load_dataset", forbidden)
    monkeypatch.setattr(ngf_lib.zoo, "experiment_data", forbidden)
    model = small_badnets["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FAST.get(name, dict(epochs=5))
    out = defenses.get(name)(model, small_badnets["x_val"][:200], small_badnets["y_val"][:200], **cfg)
    assert type(out) is type(model) and not out.training
    assert {k: v.shape for k, v in out.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "input model changed"
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    if name in MASKING:     # ANP prunes BatchNorm channels, AWM masks convolution weights; neither fine-tunes
        masked = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, MASKING[name])}
        assert changed and changed <= masked
        assert all(p.grad is None for p in out.parameters())
        return
    if name == "ft-backbone":                   # Table I's CNN-Bbone. row: the classifier stays as it was
        assert not any(k.startswith("fc.") for k in changed)
        assert any(k.endswith("weight") for k in changed), "backbone not trained"
        return
    assert {"fc.weight", "fc.bias"} <= changed
    if name in ONE_LAYER:
        assert changed == {"fc.weight", "fc.bias"}
    elif name != "ngf-release" or cfg.get("backbone") != "frozen":
        assert any(not k.startswith("fc.") and k.endswith("weight") for k in changed), "backbone not trained"
    assert all(p.grad is None for p in out.parameters())


def test_fine_pruning_prunes_the_dormant_channels_it_selected(small_badnets):
    model, x, y = small_badnets["model"], small_badnets["x_val"], small_badnets["y_val"]
    out = fp.fine_prune(model, x, y, epochs=2, max_acc_drop=0.10)
    pruned = out.ngf_history["pruned"]
    h = features(model, x).mean(0)
    assert 0 < len(pruned) < len(h)
    assert set(pruned) == set(h.argsort()[:len(pruned)].tolist())        # the least active channels
    assert (out.fc.weight[:, pruned] == 0).all()                          # still pruned after fine-tuning
    assert (out.fc.weight.abs().sum(0) > 0).sum() == len(h) - len(pruned)
    assert out.ngf_history["val_acc_pruned"] >= 0.9 * out.ngf_history["val_acc_before"]
    strict = fp.fine_prune(model, x, y, epochs=0, max_acc_drop=0.0)
    assert len(strict.ngf_history["pruned"]) <= len(pruned)


def test_nad_distils_the_three_deepest_stages():
    m = build_model("cpu_net", 10)
    mods = nad.attention_modules(m, torch.rand(2, 3, 32, 32))
    assert mods == [m.body[3], m.body[4], m.body[5]]                     # the three ConvBlocks: 16, 8, 4 px
    p = build_model("preactresnet18", 10)
    mods = nad.attention_modules(p, torch.rand(2, 3, 32, 32))
    blocks = [mod for mod in p.body if type(mod).__name__ == "PreActBlock"]
    assert mods == [blocks[3], blocks[5], blocks[7]]                     # ends of layer2, layer3, layer4
    fm = torch.rand(4, 8, 5, 5)
    a = nad.attention_map(fm)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(a, torch.nn.functional.normalize((fm ** 2).sum(1).flatten(1), dim=1))


def test_sam_gradient_is_the_gradient_at_the_ascent_point():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    xb, yb = torch.randn(8, 5), torch.randint(0, 3, (8,))
    closure = lambda: torch.nn.functional.cross_entropy(lin(xb), yb)      # noqa: E731
    closure().backward()
    g = [p.grad.clone() for p in lin.parameters()]
    w = [p.detach().clone() for p in lin.parameters()]
    norm = torch.sqrt(sum((q ** 2).sum() for q in g))
    ft.sam_gradient(list(lin.parameters()), closure, 0.5)
    ref = torch.nn.Linear(5, 3)
    with torch.no_grad():
        for r, w_, g_ in zip(ref.parameters(), w, g):
            r.copy_(w_ + 0.5 * g_ / norm)
    torch.nn.functional.cross_entropy(ref(xb), yb).backward()
    for p, r, w_ in zip(lin.parameters(), ref.parameters(), w):
        torch.testing.assert_close(p.grad, r.grad)
        torch.testing.assert_close(p.detach(), w_)                        # weights put back


def test_one_layer_sam_differs_from_sgd_only_by_the_ascent_step():
    g = torch.Generator().manual_seed(0)
    feats, y = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    theta0 = torch.randn(3, 7, generator=g, dtype=torch.float64)
    sgd, _ = one_layer.finetune_classifier(theta0, feats, y, optimizer="sgd", epochs=5, lr=0.1)
    sam0, _ = one_layer.finetune_classifier(theta0, feats, y, optimizer="sam", epochs=5, lr=0.1, rho=0.0)
    sam, _ = one_layer.finetune_classifier(theta0, feats, y, optimizer="sam", epochs=5, lr=0.1, rho=0.5)
    torch.testing.assert_close(sam0, sgd)
    assert (sam - sgd).norm() > 1e-3


def test_kfac_factors_give_the_exact_natural_gradient_of_one_sample():
    """One sample and a convolution whose kernel covers its input (one position): the Fisher of the layer is
    exactly S (x) A, so the K-FAC step equals the dense solve with the per-sample gradient."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 4), torch.nn.Flatten(), torch.nn.Linear(3, 4)).double()
    xb, yb = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.tensor([1])
    kf = ngf_all.KFACLayers(net)
    kf.record = True
    torch.nn.functional.cross_entropy(net(xb), yb).backward()
    kf.update(1, 0.95)
    conv = net[0]
    V = kf.grad_matrix(conv)                                         # (3, 2*4*4 + 1)
    g = V.reshape(-1)                                                # per-sample gradient = the gradient (n = 1)
    dense = torch.linalg.solve(torch.outer(g, g) + 1e-2 * torch.eye(len(g), dtype=g.dtype), g)
    torch.testing.assert_close(ngf.kfac_solve(kf.S[conv], kf.A[conv], V, 1e-2).reshape(-1), dense)
    kf.remove()


def test_ngf_all_reuses_eigendecompositions_only_while_the_factors_are_unchanged(monkeypatch):
    """The all-layer K-FAC step eigendecomposes each layer's factors once per refresh (every ``stat_every`` steps) and
    every step in between solves with the decomposition of the factors the layer holds at that step."""
    made, live, calls = {}, [], []
    real_eig, real_apply = ngf_all.kfac_eig, ngf_all.kfac_apply

    class Tracked(ngf_all.KFACLayers):
        def __init__(self, model):
            super().__init__(model)
            live.append(self)

    def eig(S, A):
        out = real_eig(S, A)
        made[id(out)] = (S, A)
        calls.append(out)                        # keeps it alive: ids stay unique
        return out

    def apply(e, V, damping):
        S, A = made[id(e)]
        kf = live[-1]
        assert any(kf.S[m] is S and kf.A[m] is A for m in kf.layers), "a stale eigendecomposition was used"
        return real_apply(e, V, damping)

    monkeypatch.setattr(ngf_all, "KFACLayers", Tracked)
    monkeypatch.setattr(ngf_all, "kfac_eig", eig)
    monkeypatch.setattr(ngf_all, "kfac_apply", apply)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 10))
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    ngf_all.ngf_all_layers(net, x, y, epochs=3, batch_size=16, stat_every=5, augment=False)   # 12 steps
    assert len(calls) == 2 * 3                    # 2 layers x refreshes at steps 0, 5, 10
