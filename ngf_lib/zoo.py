"""Backdoored models on demand: load from the cache if trained before, else train, cache and record.

A model is identified by the hash of its full configuration (dataset, architecture, attack and its parameters,
training recipe, split, seed; :func:`model_config`). Its weights go to ``$NGF_MODEL_DIR/<key>.safetensors`` (outside
the work tree, never committed) and its numbers to the results store (``results/<profile>/...``, committed).

Command line (for long runs in the background; prints the record)::

    python -m ngf_lib.zoo --profile cpu --dataset cifar10 --attack badnets --seed 0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass

import torch

from . import attacks, checkpoint, metrics, paths, results
from .data import Dataset, Split, dataset_info, load_dataset, make_split
from .models import build_model
from .profiles import Profile, get_profile
from .train import default_device, train

MODEL_FORMAT_VERSION = 1          # bump when a change of code makes old cached models invalid
PROBE_ATTACKS = ("badnets", "blend")  # triggers whose "ASR" is also measured on the benign model, as a baseline


# ------------------------------------------------------------------------------------------------------------ data

@dataclass
class ExperimentData:
    """Everything a chapter needs from a dataset under a profile: attacker's training set, defender's clean
    validation set (disjoint from it), and the test set (capped by the profile for smoke runs)."""
    dataset: Dataset
    split: Split
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


_DATA_MEMO: dict = {}


def experiment_data(dataset: str, profile, data_dir=None, val_size=None) -> ExperimentData:
    """Load ``dataset`` and cut it as ``profile`` says (memoised per process)."""
    prof = get_profile(profile)
    key = (dataset, prof.name, str(data_dir), str(val_size))
    if key in _DATA_MEMO:
        return _DATA_MEMO[key]
    ds = load_dataset(dataset, data_dir)
    split = make_split(ds.y_train, holdout=prof.holdout, seed=0)
    tr = split.train_idx
    if prof.train_subset is not None and prof.train_subset < len(tr):
        g = torch.Generator().manual_seed(1)
        tr = tr[torch.randperm(len(tr), generator=g)[:prof.train_subset]].sort().values
    val = split.val(val_size if val_size is not None else prof.val_size.get(dataset, 0.01))
    te = torch.arange(len(ds.y_test))
    if prof.test_subset is not None and prof.test_subset < len(te):
        g = torch.Generator().manual_seed(2)
        te = te[torch.randperm(len(te), generator=g)[:prof.test_subset]].sort().values
    out = ExperimentData(ds, split, ds.x_train[tr], ds.y_train[tr], ds.x_train[val], ds.y_train[val],
                         ds.x_test[te], ds.y_test[te])
    _DATA_MEMO[key] = out
    return out


# ---------------------------------------------------------------------------------------------------------- models

def make_attack(dataset: str, attack: str, poison_rate=None, seed: int = 0, **params) -> attacks.Attack:
    info = dataset_info(dataset)
    return attacks.get(attack, info.num_classes, poison_rate=poison_rate, seed=seed, image_size=info.image_size,
                       **params)


def model_config(dataset: str, atk: attacks.Attack, prof: Profile, seed: int) -> dict:
    """The full configuration of a (backdoored) model; its hash is the model's identity."""
    return {"kind": "model", "version": MODEL_FORMAT_VERSION, "dataset": dataset, "arch": prof.arch(dataset),
            "attack": atk.params(), "train": prof.train.to_dict(), "seed": seed,
            "split": {"holdout": prof.holdout, "seed": 0}, "train_subset": prof.train_subset,
            "test_subset": prof.test_subset, "profile": prof.name}


@dataclass
class Backdoored:
    """A trained model with its attack, record and configuration."""
    model: torch.nn.Module
    attack: attacks.Attack
    record: dict
    config: dict
    key: str
    digest: str | None = None     # checkpoint.weights_digest of ``model`` (the record's is of the weights it measured)


def evaluate(model, atk: attacks.Attack, data: ExperimentData, device=None) -> dict:
    """ACC and ASR on the test set; for the benign model, the 'ASR' of the probe triggers as a baseline."""
    out = {"acc": metrics.accuracy(model, data.x_test, data.y_test, device=device)}
    if atk.name == "none":
        out["asr"] = None
        out["asr_probe"] = {}
        for name in PROBE_ATTACKS:
            probe = make_attack(data.dataset.name, name)
            out["asr_probe"][name] = metrics.attack_success_rate(model, probe, data.x_test, data.y_test,
                                                                 device=device)
    else:
        out["asr"] = metrics.attack_success_rate(model, atk, data.x_test, data.y_test, device=device)
    return out


def resolve(dataset, attack, profile, seed, poison_rate, attack_params, train_epochs=None):
    """(profile, attack, model config, model key) of a model, without loading or training anything. The profile's
    parameters for this attack (:meth:`Profile.attack_defaults`) apply unless ``attack_params`` sets them.

    ``train_epochs`` trains for that many epochs instead of the profile's (its schedule scales along): a separate
    model with its own key, for testing whether an attack falls short of its ASR for lack of training (the gallery
    chapter); the defense chapters use the profile's models."""
    prof = get_profile(profile)
    if train_epochs is not None:
        if isinstance(train_epochs, bool) or not isinstance(train_epochs, int) or train_epochs < 1:
            raise ValueError(f"train_epochs must be a positive integer, got {train_epochs!r}")
        prof = dataclasses.replace(prof, train=dataclasses.replace(prof.train, epochs=train_epochs))
    defaults = prof.attack_defaults(attack, dataset)
    params = {**defaults, **(attack_params or {})}
    dataset_rate = params.pop("poison_rate", None)          # a dataset's own rate (GTSRB's SIG) goes with its
    if poison_rate is None and params.get("rate_of") == defaults.get("rate_of"):   # reading of the rate
        poison_rate = dataset_rate
    atk = make_attack(dataset, attack, poison_rate=poison_rate, seed=seed, **params)
    cfg = model_config(dataset, atk, prof, seed)
    return prof, atk, cfg, results.config_key(cfg)


def _train_and_save(prof, atk, cfg, key, data, seed, device, progress):
    dataset = cfg["dataset"]
    dev = torch.device(device) if device is not None else default_device()
    t0 = time.time()
    atk.prepare(data.x_train, data.y_train, device=dev)
    ps = atk.poison_training_set(data.x_train, data.y_train)
    torch.manual_seed(seed)
    model = build_model(prof.arch(dataset), data.dataset.num_classes, dataset)
    hist = train(model, ps.x, ps.y, prof.train, attack=atk, flip=dataset_info(dataset).flip, seed=seed,
                 device=dev, progress=progress, desc=f"{dataset}/{atk.name}/s{seed}")
    train_time = time.time() - t0
    checkpoint.save_model(model, paths.model_dir() / f"{key}.safetensors", metadata={"key": key})
    state = atk.state_tensors()
    if state:                      # what the attack learned while training (generators): needed for its trigger
        checkpoint.save_tensors(state, paths.model_dir() / f"{key}.attack.safetensors", metadata={"key": key})
    return model, hist, train_time, len(ps.poison_idx)


def get_model(dataset: str = "cifar10", attack: str = "none", profile="cpu", seed: int = 0, poison_rate=None,
              *, data_dir=None, device=None, progress: bool = True, train_epochs: int | None = None,
              **attack_params) -> Backdoored:
    """The (backdoored) model for this configuration: cached weights if present, else trained now.

    Writes its record to the results store if missing (an existing record is kept: it is what the book shows).
    """
    prof, atk, cfg, key = resolve(dataset, attack, profile, seed, poison_rate, attack_params, train_epochs)
    commit = results.git_commit()          # the code that runs now (read before the run, not after it)
    data = experiment_data(dataset, prof, data_dir)
    path = paths.model_dir() / f"{key}.safetensors"
    dev = torch.device(device) if device is not None else default_device()
    hist, train_time, n_poison = None, None, None
    if path.is_file():
        model = build_model(prof.arch(dataset), data.dataset.num_classes, dataset)
        checkpoint.load_model(model, path)
        model.to(dev).eval()
        atk.prepare(data.x_train, data.y_train, device=dev)   # rebuild learned artefacts (a no-op for most)
        state_path = paths.model_dir() / f"{key}.attack.safetensors"
        if state_path.is_file():
            atk.load_state_tensors(checkpoint.load_state_dict(state_path))
    else:
        model, hist, train_time, n_poison = _train_and_save(prof, atk, cfg, key, data, seed, dev, progress)
    digest = checkpoint.weights_digest(model)
    rec = results.find_record(prof.name, dataset, key)
    if rec is None:
        t0 = time.time()
        ev = evaluate(model, atk, data, device=dev)
        rec = {"profile": prof.name, "dataset": dataset, "arch": prof.arch(dataset), "attack": atk.name,
               "poison_rate": atk.poison_rate, "defense": "none", "seed": seed, **ev,
               "wall_time_s": (train_time if train_time is not None else 0.0) + (time.time() - t0),
               "train_time_s": train_time, "device": results.device_name(dev), "git_commit": commit,
               "created": results.now(), "config": cfg, "key": key, "n_train": len(data.y_train),
               "n_poison": n_poison, "n_test": len(data.y_test), "history": hist, "weights_digest": digest}
        results.write_record(rec)
        rec = results.as_stored(rec)
    return Backdoored(model, atk, rec, cfg, key, digest)


def get_record(dataset: str = "cifar10", attack: str = "none", profile="cpu", seed: int = 0, poison_rate=None,
               *, data_dir=None, device=None, progress: bool = True, compute: bool = True,
               train_epochs: int | None = None, **attack_params) -> dict | None:
    """The record of this model: read from the results store, or computed now (training the model if needed);
    ``compute=False``: read only (``None`` when missing)."""
    prof, atk, cfg, key = resolve(dataset, attack, profile, seed, poison_rate, attack_params, train_epochs)
    rec = results.find_record(prof.name, dataset, key)
    if rec is not None or not compute:
        return rec
    return get_model(dataset, attack, profile, seed, poison_rate, data_dir=data_dir, device=device,
                     progress=progress, train_epochs=train_epochs, **attack_params).record


def main(argv=None):
    p = argparse.ArgumentParser(description="Train (or load) a backdoored model and write its results record.")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--attack", default="badnets", help=f"one of: {', '.join(attacks.available())}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poison-rate", type=float, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    rec = get_record(a.dataset, a.attack, a.profile, a.seed, a.poison_rate, data_dir=a.data_dir, device=a.device)
    print(json.dumps({k: rec[k] for k in ("profile", "dataset", "arch", "attack", "poison_rate", "seed", "acc", "asr",
                                          "wall_time_s", "device", "key")}, indent=1))


if __name__ == "__main__":
    main()
