"""CBA (composite backdoor, reference section 2.7): the half mixer copies each half from the right image, the batch
holds composites labelled C and same-class mixes with their labels, the contrastive term on an exact example, and
the ASR set of A-test + B-test composites."""
import pytest
import torch

from ngf_lib import attacks
from ngf_lib.attacks.cba import MixPlan, compose, contrastive_loss, draw_plan, half_mix
from ngf_lib.data import to_float
from ngf_lib.models import build_model
from ngf_lib.train import TrainConfig, train


def _images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _flat(values, size=32):
    """One constant image per value: a composite of two of them shows exactly which images it was made from."""
    v = torch.as_tensor(values, dtype=torch.uint8)
    return v.view(-1, 1, 1, 1).expand(len(v), 3, size, size).contiguous()


def _values(img):
    return set(img.unique().tolist())


# ---------------------------------------------------------------------------------------------------- half mixer

def test_half_mixer_takes_each_half_from_its_source():
    n, s = 64, 32
    a, b = _images(n, 1), _images(n, 2)
    plan = draw_plan(n, s, torch.Generator().manual_seed(0), jitter=3, shake=3)
    assert ((plan.split >= 13) & (plan.split <= 19)).all()
    assert plan.shift_first.min() >= 0 and plan.shift_first.max() <= 3
    assert plan.shift_second.min() >= 0 and plan.shift_second.max() <= 3
    assert set(plan.axis.tolist()) == {0, 1} and set(plan.swap.tolist()) == {False, True}
    assert (plan.shift_first > 0).any() and (plan.shift_second > 0).any()
    out = compose(a, b, plan)
    for i in range(n):
        sp, d1, d2 = int(plan.split[i]), int(plan.shift_first[i]), int(plan.shift_second[i])
        first, second = (b[i], a[i]) if plan.swap[i] else (a[i], b[i])
        o = out[i]
        if plan.axis[i] == 1:                               # top / bottom: the same statement on the transposes
            o, first, second = o.transpose(1, 2), first.transpose(1, 2), second.transpose(1, 2)
        assert torch.equal(o[:, :, :sp], first[:, :, d1:d1 + sp])
        assert torch.equal(o[:, :, sp:], second[:, :, sp - d2:s - d2])


def test_compose_by_hand():
    a, b = _flat([0, 0]), _flat([255, 255])
    z = torch.zeros(2, dtype=torch.long)
    plan = MixPlan(swap=torch.tensor([False, True]), axis=torch.tensor([0, 1]), split=torch.tensor([16, 10]),
                   shift_first=z, shift_second=z)
    out = compose(a, b, plan)
    assert (out[0, :, :, :16] == 0).all() and (out[0, :, :, 16:] == 255).all()      # left from a, right from b
    assert (out[1, :, :10, :] == 255).all() and (out[1, :, 10:, :] == 0).all()      # swapped, top from b
    with pytest.raises(ValueError, match="square"):
        compose(a, b[:1], plan)


def test_half_mix_is_deterministic_with_a_seed():
    a, b = _images(16, 1), _images(16, 2)
    one = half_mix(a, b, torch.Generator().manual_seed(5))
    assert torch.equal(one, half_mix(a, b, torch.Generator().manual_seed(5)))
    assert not torch.equal(one, half_mix(a, b, torch.Generator().manual_seed(6)))
    assert torch.equal(half_mix(a, b, torch.Generator().manual_seed(5)).float() / 255,
                       half_mix(to_float(a), to_float(b), torch.Generator().manual_seed(5)))  # uint8 == float


# ------------------------------------------------------------------------------------------------------- training

def test_defaults_params_and_counts():
    atk = attacks.get("cba", 10)
    assert (atk.class_a, atk.class_b, atk.target, atk.poison_rate, atk.mix_rate) == (0, 1, 2, 0.1, 0.45)
    assert atk.controls_training and atk.poisons_per_batch and not atk.all_to_all
    assert atk.batch_counts(128) == (12, 57)
    p = atk.params()
    for k in ("class_a", "class_b", "mix_rate", "jitter", "shake", "contrast_weight", "margin", "asr_pairs",
              "poison_rate", "target", "seed"):
        assert k in p
    assert attacks.get("cba", 10, poison_rate=0.2).mix_rate == pytest.approx(0.4)
    assert len(atk.poison_training_set(_images(20), torch.arange(20) % 10).poison_idx) == 0


@pytest.mark.parametrize("kw, msg", [({"class_a": 2}, "distinct"), ({"class_b": 0}, "distinct"),
                                     ({"target": 1}, "distinct"), ({"class_b": 10}, "outside"),
                                     ({"mix_rate": 0.95}, "within one batch"), ({"jitter": 16}, "jitter"),
                                     ({"margin": 0}, "margin")])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        attacks.get("cba", 10, **kw)
    with pytest.raises(ValueError, match="at least 3 classes"):
        attacks.get("cba", 2)


def test_training_batch_composites_mixes_and_labels():
    b = 128
    y = torch.arange(b) % 10
    x8 = _flat(range(b))                                   # image j is the constant j: composites name their sources
    x = to_float(x8)
    atk = attacks.get("cba", 10)
    xb, yb = atk.training_batch(None, x, y, generator=torch.Generator().manual_seed(0))
    n_bd, n_mix = atk.batch_counts(b)
    assert torch.equal(x, to_float(x8))                    # input untouched
    assert (yb[:n_bd] == 2).all() and torch.equal(yb[n_bd:], y[n_bd:])
    out = (xb * 255).round().to(torch.long)
    a_vals, b_vals = set(range(0, b, 10)), set(range(1, b, 10))
    for i in range(n_bd):                                  # one A image and one B image each
        v = _values(out[i])
        assert len(v) == 2 and len(v & a_vals) == 1 and len(v & b_vals) == 1
    for i in range(n_bd, n_bd + n_mix):                    # itself and another image of its own class
        v = _values(out[i])
        assert len(v) == 2 and i in v and all(int(j) % 10 == int(y[i]) for j in v)
    assert torch.equal(xb[n_bd + n_mix:], x[n_bd + n_mix:])


def test_a_batch_without_a_or_b_images_draws_from_the_pool():
    atk = attacks.get("cba", 10)
    x, y = to_float(_flat([7] * 64)), torch.full((64,), 5)
    with pytest.raises(RuntimeError, match="prepare"):
        atk.training_batch(None, x, y, generator=torch.Generator().manual_seed(0))
    atk.prepare(_flat([50, 60, 200, 210, 99]), torch.tensor([0, 0, 1, 1, 3]), device="cpu")
    assert atk._pool[0].dtype == torch.uint8 and len(atk._pool[0]) == 2 and len(atk._pool[1]) == 2
    xb, yb = atk.training_batch(None, x, y, generator=torch.Generator().manual_seed(0))
    for i in range(6):                                     # floor(0.1 * 64)
        v = _values((xb[i] * 255).round().to(torch.long))
        assert len(v & {50, 60}) == 1 and len(v & {200, 210}) == 1 and yb[i] == 2
    with pytest.raises(ValueError, match="no image of class 1"):
        atk.prepare(_flat([50]), torch.tensor([0]))


# ---------------------------------------------------------------------------------------------- contrastive term

def test_contrastive_term_on_an_exact_example():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0],       # A, A: same label, d = 5      -> 25
                      [1.0, 1.0], [9.0, 9.0],       # label 7 (not A/B/C): ignored
                      [0.0, 0.0], [0.6, 0.0],       # A, C: d = 0.6 < margin 1    -> 0.4^2
                      [0.0, 0.0], [0.0, 2.0],       # B, C: d = 2 > margin        -> 0
                      [5.0, 5.0]])                  # odd one out: no partner
    lab = torch.tensor([0, 0, 7, 7, 0, 2, 1, 2, 1])
    assert contrastive_loss(z, lab, (0, 1, 2), margin=1.0).item() == pytest.approx((25 + 0.16 + 0) / 3)
    assert contrastive_loss(z[6:8], lab[6:8], (0, 1, 2)).item() == 0.0
    assert contrastive_loss(z[6:8], lab[6:8], (0, 1, 2), margin=3.0).item() == pytest.approx(1.0)
    zs = torch.randn(4, 10, requires_grad=True)
    none = contrastive_loss(zs, torch.tensor([5, 6, 7, 8]), (0, 1, 2))   # no pair: zero, still differentiable
    none.backward()
    assert none.item() == 0.0 and torch.equal(zs.grad, torch.zeros_like(zs))
    pull = contrastive_loss(zs, torch.tensor([2, 2, 2, 2]), (0, 1, 2))
    assert pull.item() > 0


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.calls = torch.nn.Linear(3 * 32 * 32, 10), 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x.flatten(1))


def test_extra_loss_uses_the_loops_forward_and_the_drawn_pairing():
    torch.manual_seed(0)
    model, atk = _Counting(), attacks.get("cba", 10)
    x, y = to_float(_images(64)), torch.arange(64) % 10
    xb, yb = atk.training_batch(model, x, y, generator=torch.Generator().manual_seed(0))
    order = atk._order.clone()
    out = model(xb)                                        # the training loop's forward
    extra = atk.extra_loss(model, xb, yb)
    assert model.calls == 1                                # no second forward
    want = contrastive_loss(out[order], yb[order], (0, 1, 2), 1.0)
    assert extra.item() == pytest.approx(want.item()) and extra.item() > 0
    extra.backward()
    assert model.lin.weight.grad.abs().sum() > 0
    # without a captured forward it runs one itself; the data-only variant adds nothing
    assert atk.extra_loss(model, xb, yb) is not None and model.calls == 2
    assert attacks.get("cba", 10, contrast_weight=0.0).extra_loss(model, xb, yb) is None


def test_a_tiny_training_run():
    x, y = _images(64, 3), torch.arange(64) % 10
    atk = attacks.get("cba", 10)
    atk.prepare(x, y, device="cpu")
    torch.manual_seed(0)
    hist = train(build_model("cpu_net", 10), x, y, TrainConfig(epochs=1, batch_size=32, lr=0.05), attack=atk,
                 progress=False, device="cpu")
    assert all(torch.isfinite(torch.tensor(hist["loss"])))


# ---------------------------------------------------------------------------------------------------- evaluation

def test_asr_set_composes_a_and_b_test_images_labelled_c():
    vals = list(range(100))
    y = torch.tensor([0] * 30 + [1] * 20 + [2] * 25 + [5] * 25)
    x = _flat(vals)
    atk = attacks.get("cba", 10, asr_pairs=100)
    xt, yt = atk.asr_set(x, y)
    assert xt.shape == (100, 3, 32, 32) and xt.dtype == torch.uint8 and (yt == 2).all()
    pairs = set()
    for img in xt:
        v = _values(img)
        a, b = v & set(range(30)), v & set(range(30, 50))
        assert len(v) == 2 and len(a) == 1 and len(b) == 1
        pairs.add((a.pop(), b.pop()))
    assert len(pairs) == 100                               # distinct pairs
    again = atk.asr_set(x, y)
    assert torch.equal(again[0], xt)                       # seeded
    few = attacks.get("cba", 10).asr_set(x[:35], y[:35])     # 30 x 5 pairs exist: all of them
    assert len(few[0]) == 150
    with pytest.raises(ValueError, match="test images of classes 0 and 1"):
        atk.asr_set(x[:30], y[:30])


def test_apply_composes_with_a_fixed_partner_of_the_other_class():
    atk = attacks.get("cba", 10)
    with pytest.raises(RuntimeError, match="prepare"):
        atk.apply(_flat([1]))
    atk.prepare(_flat([50, 60, 200, 210]), torch.tensor([0, 0, 1, 1]), device="cpu")
    x, y = _flat([5, 6, 7, 8]), torch.tensor([0, 1, 1, 4])
    out = atk.apply(x, y)
    assert torch.equal(out, atk.apply(x, y))
    for i in range(4):
        v = _values(out[i])
        partners = {50, 60} if y[i] == 1 else {200, 210}
        assert len(v) == 2 and int(x[i, 0, 0, 0]) in v and len(v & partners) == 1
    no_y = atk.apply(x)                                    # no labels: every image is the A half
    assert all(len(_values(img) & {200, 210}) == 1 for img in no_y)
