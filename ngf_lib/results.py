"""The results store: one small JSON record per finished experiment, under ``results/<profile>/``.

Records are the book's durable data (committed to git). They are written atomically (temporary file, then rename),
so an interrupted run never leaves a half-written record, and looked up by the hash of the experiment's full
configuration, so a chapter computes only what is missing and runs split across sessions or machines add up.

Every record has the keys of :data:`REQUIRED_KEYS`; extra metrics (``lambda_max``, ``trace``, curves) are added freely.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from . import paths

RESULT = "result"   # the kind of a model's or a defense's record (the default); others: "curvature"
REQUIRED_KEYS = ("profile", "dataset", "arch", "attack", "poison_rate", "defense", "seed", "acc", "asr",
                 "wall_time_s", "device", "git_commit", "created", "config")


def _json_default(o):
    """JSON for what json cannot write: numeric scalars (numpy, 0-d tensors) as floats, anything else as text."""
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def config_key(config: dict) -> str:
    """A stable hash of a JSON-serialisable configuration (sorted keys): the identity of an experiment."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def git_commit() -> str:
    """The commit of the repository this package runs from (``-dirty`` if it has uncommitted changes)."""
    if os.environ.get("NGF_GIT_COMMIT"):     # a copy of the tree without .git (a lent GPU machine) names its commit
        return os.environ["NGF_GIT_COMMIT"]
    root = paths.repo_root()
    if root is None:
        try:
            from importlib.metadata import version
            return f"ngf_lib=={version('ngf_lib')}"
        except Exception:
            return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "ngf_lib"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except Exception:
        return "unknown"


def device_name(device=None) -> str:
    """Human-readable name of the device a run used, e.g. ``cpu (2 threads, Intel(R) Xeon(R) Processor)``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({torch.get_num_threads()} threads, {cpu})"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _slug(v) -> str:
    return str(v).replace("/", "-").replace(" ", "")


def record_path(record: dict) -> Path:
    """``results/<profile>/<dataset>/<attack>__p<rate>__<defense>__s<seed>__<key>.json``; records of another
    ``kind`` than a model's or defense's result (e.g. ``"curvature"``) go to a subfolder named by their kind."""
    name = (f"{_slug(record['attack'])}__p{record['poison_rate']:g}__{_slug(record['defense'])}"
            f"__s{record['seed']}__{record['key']}.json")
    folder = paths.results_dir() / _slug(record["profile"]) / _slug(record["dataset"])
    kind = record.get("kind", RESULT)
    return (folder if kind == RESULT else folder / _slug(kind)) / name


def jobs_sharing_from_env() -> int | None:
    """``NGF_JOBS_SHARING``: how many worker processes ran side by side on this device when the record was made (set by
    :mod:`ngf_lib.runner`: the number of lanes it started, an upper bound once some have finished). ``None``, with a
    warning that names the value, when it is not a positive integer: a finished experiment is never lost to a bad
    annotation."""
    raw = os.environ.get("NGF_JOBS_SHARING", "")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        warnings.warn(f"NGF_JOBS_SHARING must be a positive integer (jobs sharing the device), got {raw!r}: "
                      "the record is written without jobs_sharing")
        return None
    return n


def jobs_sharing(record: dict) -> int:
    """How many jobs shared the device when ``record`` was made (its wall time is inflated about that much): the
    record's ``jobs_sharing`` field; for records older than that field, the number at the start of their
    ``run_note`` ("4 lanes shared one GPU ..."); 1 when neither says (alone, or not recorded)."""
    if "jobs_sharing" in record:
        return int(record["jobs_sharing"])
    m = re.match(r"(\d+) (jobs|lanes) shared", record.get("run_note", ""))
    return int(m.group(1)) if m else 1


def write_record(record: dict) -> Path:
    """Validate and write a record atomically; returns its path."""
    missing = [k for k in REQUIRED_KEYS + ("key",) if k not in record]
    if os.environ.get("NGF_RUN_NOTE") and "run_note" not in record:   # e.g. "measured on a shared node"
        record = {**record, "run_note": os.environ["NGF_RUN_NOTE"]}
    if os.environ.get("NGF_JOBS_SHARING") and "jobs_sharing" not in record:
        n = jobs_sharing_from_env()
        record = record if n is None else {**record, "jobs_sharing": n}
    if missing:
        raise ValueError(f"record lacks required keys: {', '.join(missing)}")
    path = record_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def as_stored(record: dict) -> dict:
    """The record as it reads back from disk (tuples become lists, floats stay floats)."""
    return json.loads(json.dumps(record, sort_keys=True, default=_json_default))


def find_record(profile: str, dataset: str, key: str, kind: str = RESULT) -> dict | None:
    """The record of the experiment with configuration hash ``key`` (of ``kind``), or None."""
    folder = paths.results_dir() / _slug(profile) / _slug(dataset)
    if kind != RESULT:
        folder = folder / _slug(kind)
    for f in folder.glob(f"*__{key}.json") if folder.is_dir() else []:
        rec = json.loads(f.read_text())
        if rec.get("key") == key:
            return rec
    return None


def load_records(profile: str | None = None, kind: str | None = RESULT, **filters) -> list[dict]:
    """All records (of one profile, or all) of ``kind`` (default: model and defense results; ``None``: every kind),
    keeping those whose fields equal ``filters``.

    >>> load_records("cpu", dataset="cifar10", defense="none")   # doctest: +SKIP
    """
    root = paths.results_dir()
    folders = [root / _slug(profile)] if profile else [p for p in root.glob("*") if p.is_dir()]
    out = []
    for folder in folders:
        for f in sorted(folder.rglob("*.json")):
            if f.name.startswith(".tmp-"):
                continue
            rec = json.loads(f.read_text())
            if kind is not None and rec.get("kind", RESULT) != kind:
                continue
            if all(rec.get(k) == v for k, v in filters.items()):
                out.append(rec)
    return out


def records_frame(records: list[dict], columns=("dataset", "arch", "attack", "poison_rate", "defense", "seed",
                                                   "acc", "asr", "wall_time_s", "device", "git_commit")):
    """A pandas DataFrame of the chosen fields of ``records``."""
    import pandas as pd
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in records], columns=list(columns))
