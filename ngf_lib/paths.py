"""Where ngf_lib keeps things: dataset and model caches (outside the work tree) and the results store.

Every location can be overridden by an environment variable, so that a notebook on Colab, a test in a temporary
folder and a long run on a cluster each decide where their files go:

=====================  ==========================================  =============================================
variable               default                                     holds
=====================  ==========================================  =============================================
``NGF_CACHE_DIR``      ``~/.cache/ngf_lib``                        decoded datasets (``datasets/``), models
``NGF_MODEL_DIR``      ``$NGF_CACHE_DIR/models``                   trained models, safetensors, keyed by config
``NGF_DATA_DIR``       (searched, see :func:`data_dir_candidates`)  raw dataset files (npz or torchvision layout)
``NGF_RESULTS_DIR``    ``<repository>/results`` or ``./results``   the JSON records every table is built from
=====================  ==========================================  =============================================
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The repository this package was installed from (editable install / checkout), or None for a wheel install."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").exists() and (root / "notebooks").is_dir():
        return root
    return None


def cache_dir() -> Path:
    """Root of the local caches (decoded datasets, trained models)."""
    return Path(os.environ.get("NGF_CACHE_DIR", Path.home() / ".cache" / "ngf_lib")).expanduser()


def dataset_cache_dir() -> Path:
    return cache_dir() / "datasets"


def model_dir() -> Path:
    """Where trained models are cached as safetensors (never committed)."""
    env = os.environ.get("NGF_MODEL_DIR")
    return Path(env).expanduser() if env else cache_dir() / "models"


def results_dir() -> Path:
    """Root of the results store (``results/<profile>/...json``)."""
    env = os.environ.get("NGF_RESULTS_DIR")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    return (root / "results") if root is not None else Path.cwd() / "results"


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for raw dataset files, in order.

    1. the ``data_dir`` argument, 2. ``$NGF_DATA_DIR``, 3. ``~/.cache/ngf_lib/data``,
    4. ``shared/data`` beside the repository (the project's development machines), 5. ``./data``.
    An explicit argument or variable is the only candidate: a typo there should fail, not silently fall back.
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    if os.environ.get("NGF_DATA_DIR"):
        return [Path(os.environ["NGF_DATA_DIR"]).expanduser()]
    out = [cache_dir() / "data"]
    root = repo_root()
    if root is not None:
        out.append(root.parent / "shared" / "data")
    out.append(Path.cwd() / "data")
    return out
