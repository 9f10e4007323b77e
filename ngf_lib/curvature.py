"""Curvature records: ``lambda_max`` and ``Tr(H)`` of the clean-data loss Hessian (and its eigenvalue density) of a
backdoored or purified model, computed once and kept in the results store (paper Section V: Fig. 1, Table I, Fig. 2).

The paper computes the Hessian of the loss on the **clean training set** with the model in eval mode, over all
parameters (Section V). We use a fixed, seeded batch of ``n_images`` clean images of the attacker's training set (the
images before poisoning; ``n_images = 200``, PyHessian's usual batch, ``../shared/reference/attacks-defenses.md``
section 5) so that every model of a comparison is measured on the same data. ``lambda_max`` comes with a residual
certificate (:func:`ngf_lib.hessian.lambda_max`), ``Tr(H)`` with its standard error.

A purified model is not stored (only its record is): the defense is run again with the same configuration (the
defenses are deterministic given their seed; the one-layer ones take seconds), and its ACC/ASR are read from (or
written to) the defense's own record, so the curvature and the accuracy always describe the same configuration.

Records are of kind ``"curvature"`` (``results/<profile>/<dataset>/curvature/``).
"""
from __future__ import annotations

import time

import torch

from . import defenses, experiments, hessian, results, zoo
from .profiles import get_profile
from .train import default_device

KIND = "curvature"


def clean_batch(data: zoo.ExperimentData, n_images: int = 200, seed: int = 0):
    """``n_images`` clean training images and labels, drawn with ``seed`` (the same for every model of a profile)."""
    if not 1 <= n_images <= len(data.y_train):
        raise ValueError(f"n_images must be in 1..{len(data.y_train)}, got {n_images}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=g)[:n_images].sort().values
    return data.x_train[idx], data.y_train[idx]


def curvature_record(dataset: str = "cifar10", attack: str = "badnets", defense: str = "none", profile="cpu",
                     seed: int = 0, poison_rate=None, *, n_images: int = 200, batch_seed: int = 0, tol: float = 1e-3,
                     trace_tol: float = 2e-2, with_density: bool = False, density_runs: int = 3,
                     density_iter: int = 80, data_dir=None, device=None, attack_params: dict | None = None,
                     compute: bool = True, **defense_cfg) -> dict | None:
    """The curvature record of the model (dataset, attack, profile, seed), undefended (``defense="none"``) or
    purified by ``defense`` with ``defense_cfg``; read from the store if present, computed and written otherwise.

    Fields beside the usual ones: ``lambda_max``, ``lambda_max_residual``, ``trace``, ``trace_se``, ``hvps``, and
    ``density`` (``{"nodes": [...], "weights": [...]}``, the SLQ runs concatenated) when ``with_density``.
    ``compute=False``: read the store only (``None`` when the record is missing).
    """
    prof = get_profile(profile)
    attack_params = attack_params or {}
    _, atk, model_cfg, model_key = zoo.resolve(dataset, attack, prof, seed, poison_rate, attack_params)
    dcfg = {}
    if defense != "none":
        _, dcfg = experiments.resolve_defense(dataset, defense, defense_cfg)
    elif defense_cfg:
        raise ValueError(f"defense='none' takes no defense parameters, got {sorted(defense_cfg)}")
    cfg = {"kind": KIND, "version": 1, "model": model_cfg, "model_key": model_key, "defense": defense,
           "defense_config": dict(sorted(dcfg.items())), "n_images": n_images, "batch_seed": batch_seed,
           "tol": tol, "trace_tol": trace_tol,
           "density": {"runs": density_runs, "iter": density_iter} if with_density else None}
    key = results.config_key(cfg)
    rec = results.find_record(prof.name, dataset, key, kind=KIND)
    if rec is not None or not compute:
        return rec
    commit = results.git_commit()
    dev = torch.device(device) if device is not None else default_device()
    bd = zoo.get_model(dataset, attack, prof, seed, poison_rate, data_dir=data_dir, device=dev, progress=False,
                       **attack_params)
    data = zoo.experiment_data(dataset, prof, data_dir)
    if defense == "none":
        model, perf = bd.model, bd.record
    else:
        perf = experiments.defended_record(dataset, attack, defense, prof, seed, poison_rate, data_dir=data_dir,
                                           device=device, progress=False, attack_params=attack_params, **defense_cfg)
        model = defenses.get(defense)(bd.model, data.x_val, data.y_val, **defense_cfg)
    model.to(dev).eval()
    x, y = clean_batch(data, n_images, batch_seed)
    x, y = x.to(dev), y.to(dev)
    t0 = time.time()
    lam = hessian.lambda_max(model, x, y, tol=tol, seed=batch_seed, return_info=True)
    tr = hessian.trace(model, x, y, tol=trace_tol, seed=batch_seed, return_info=True)
    dens = None
    if with_density:
        nodes, weights = hessian.density(model, x, y, n_runs=density_runs, n_iter=density_iter, seed=batch_seed)
        dens = {"nodes": nodes.tolist(), "weights": weights.tolist()}
    rec = {"kind": KIND, "profile": prof.name, "dataset": dataset, "arch": prof.arch(dataset), "attack": atk.name,
           "poison_rate": atk.poison_rate, "defense": defense, "seed": seed, "acc": perf["acc"], "asr": perf["asr"],
           "lambda_max": lam.value, "lambda_max_residual": lam.residual, "trace": tr.value, "trace_se": tr.standard_error,
           "hvps": lam.n_hvp + tr.n_hvp, "density": dens, "n_images": n_images, "wall_time_s": time.time() - t0,
           "device": results.device_name(dev), "git_commit": commit, "created": results.now(), "config": cfg,
           "key": key}
    results.write_record(rec)
    return results.as_stored(rec)


TRAJECTORY = "trajectory"


def trajectory_record(dataset: str = "cifar10", attack: str = "badnets", profile="cpu", seed: int = 0,
                      poison_rate=None, *, every: int = 2, n_images: int = 200, batch_seed: int = 0, tol: float = 1e-3,
                      eval_images: int = 2000, data_dir=None, device=None, progress: bool = True,
                      attack_params: dict | None = None, compute: bool = True) -> dict | None:
    """λmax, clean ACC and ASR along the **training** of a (backdoored) model, every ``every`` epochs and after the
    last one (paper Fig. 2a-b: the curvature during backdoor insertion); read from the store, or computed now.

    The model is trained again with the zoo's recipe for this configuration, with a hook
    (:func:`ngf_lib.train.train`'s ``on_epoch``) that measures, in eval mode, ``lambda_max`` on the same clean batch
    as :func:`curvature_record` and ACC/ASR on ``eval_images`` test images (a seeded random subset; version 1 took the
    first ones, which are only two classes since the test sets are stored sorted by class). The hook forks the random state,
    so the run is the zoo's run (the final ACC/ASR equal the model's record up to the evaluation subset). Records of
    kind ``"trajectory"`` (``results/<profile>/<dataset>/trajectory/``) with lists ``epoch``, ``lambda_max``,
    ``acc``, ``asr``; their ``acc``/``asr`` fields are the last point's.
    """
    from . import metrics
    from .data import dataset_info
    from .models import build_model
    from .train import train
    if every < 1:
        raise ValueError(f"every must be a positive number of epochs, got {every}")
    prof = get_profile(profile)
    attack_params = attack_params or {}
    _, atk, model_cfg, model_key = zoo.resolve(dataset, attack, prof, seed, poison_rate, attack_params)
    cfg = {"kind": TRAJECTORY, "version": 2, "model": model_cfg, "model_key": model_key, "every": every,
           "n_images": n_images, "batch_seed": batch_seed, "tol": tol, "eval_images": eval_images}
    key = results.config_key(cfg)
    rec = results.find_record(prof.name, dataset, key, kind=TRAJECTORY)
    if rec is not None or not compute:
        return rec
    commit = results.git_commit()
    dev = torch.device(device) if device is not None else default_device()
    data = zoo.experiment_data(dataset, prof, data_dir)
    xb, yb = clean_batch(data, n_images, batch_seed)
    xb, yb = xb.to(dev), yb.to(dev)
    # a seeded random subset: the test sets are stored sorted by class (CIFAR-10's first 2 000 are airplanes and cars)
    ev_idx = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(3))[:eval_images].sort().values
    x_ev, y_ev = data.x_test[ev_idx], data.y_test[ev_idx]
    points = {"epoch": [], "lambda_max": [], "lambda_max_residual": [], "acc": [], "asr": []}
    t0 = time.time()
    atk.prepare(data.x_train, data.y_train, device=dev)
    ps = atk.poison_training_set(data.x_train, data.y_train)

    def hook(model, epoch):
        if epoch % every and epoch != prof.train.epochs:
            return
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            model.eval()
            lam = hessian.lambda_max(model, xb, yb, tol=tol, seed=batch_seed, return_info=True)
            points["epoch"].append(epoch)
            points["lambda_max"].append(lam.value)
            points["lambda_max_residual"].append(lam.residual)
            points["acc"].append(metrics.accuracy(model, x_ev, y_ev, device=dev))
            points["asr"].append(None if atk.name == "none" else
                                 metrics.attack_success_rate(model, atk, x_ev, y_ev, device=dev))

    torch.manual_seed(seed)
    model = build_model(prof.arch(dataset), data.dataset.num_classes, dataset)
    train(model, ps.x, ps.y, prof.train, attack=atk, flip=dataset_info(dataset).flip, seed=seed, device=dev,
          progress=progress, desc=f"{dataset}/{atk.name}/s{seed} (trajectory)", on_epoch=hook)
    rec = {"kind": TRAJECTORY, "profile": prof.name, "dataset": dataset, "arch": prof.arch(dataset),
           "attack": atk.name, "poison_rate": atk.poison_rate, "defense": "none", "seed": seed,
           "acc": points["acc"][-1], "asr": points["asr"][-1], **{f"points_{k}": v for k, v in points.items()},
           "wall_time_s": time.time() - t0, "device": results.device_name(dev), "git_commit": commit,
           "created": results.now(), "config": cfg, "key": key}
    results.write_record(rec)
    return results.as_stored(rec)
