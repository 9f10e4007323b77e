"""NGF speed on cached features: our Woodbury solve vs the dense P x P solve, in one process (ratios, not timings,
are what this machine can compare). Run on an idle machine:

    .venv/bin/python benchmarks/ngf_speed.py

Problem sizes of the issue: CIFAR-10 (n 500, d 512, C 10) and GTSRB (n 1,176, d 512, C 43); 100 full-batch epochs,
lr 0.01 x0.1 every 40 epochs, eta 0.1. The dense solve is timed over a few epochs and scaled to 100 (it costs minutes).
"""
import time

import torch

from ngf_lib.defenses.ngf import purify_classifier
from ngf_lib.defenses.one_layer import finetune_classifier


def problem(n, d, C, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    feats = torch.relu(torch.randn(n, d, generator=g, dtype=dtype))
    y = torch.randint(0, C, (n,), generator=g)
    theta = 0.05 * torch.randn(C, d + 1, generator=g, dtype=dtype)
    return theta, feats, y


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, (n, d, C) in {"cifar10": (500, 512, 10), "gtsrb": (1176, 512, 43)}.items():
        for dtype in (torch.float64, torch.float32):
            theta, feats, y = problem(n, d, C, dtype=dtype)
            kw = dict(lr=0.01, eta=0.1, damping=1e-3, lr_step=40)
            t = time.perf_counter()
            wood = purify_classifier(theta, feats, y, epochs=100, solver="woodbury", **kw)
            t_wood = time.perf_counter() - t
            t = time.perf_counter()
            finetune_classifier(theta, feats, y, optimizer="sgd", epochs=100, lr=0.01, lr_step=40)
            t_sgd = time.perf_counter() - t
            k = 3 if C * (d + 1) < 10000 else 1
            t = time.perf_counter()
            dense = purify_classifier(theta, feats, y, epochs=k, solver="dense", **kw)
            t_dense = (time.perf_counter() - t) * 100 / k
            short = purify_classifier(theta, feats, y, epochs=k, solver="woodbury", **kw)
            diff = ((short.theta - dense.theta).norm() / dense.theta.norm()).item()
            print(f"{name:8s} {str(dtype):14s} n={n} P={C * (d + 1):6d}: woodbury 100 epochs {t_wood:7.3f} s | "
                  f"dense {t_dense:8.1f} s (est. from {k}) | ratio {t_dense / t_wood:7.0f}x | "
                  f"rel. diff after {k} epochs {diff:.1e} | one-layer SGD 100 epochs {t_sgd:.3f} s")


if __name__ == "__main__":
    main()
