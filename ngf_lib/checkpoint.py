"""Saving and loading model weights without ever executing code from a file.

Users load backdoored models made by strangers, so a checkpoint is data, never a program:

* ``.safetensors`` files are read with ``safetensors`` (a plain tensor container: no code can run);
* PyTorch ``.pt`` / ``.pth`` files are read with ``torch.load(weights_only=True)``, which refuses any pickled object
  other than tensors and plain containers; a file that needs more raises :class:`UntrustedCheckpointError`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class UntrustedCheckpointError(RuntimeError):
    """The checkpoint would need to execute code (arbitrary pickled objects) to load: we refuse."""


def weights_digest(model_or_state) -> str:
    """A short fingerprint (16 hex digits of SHA-256) of a model's weights and buffers: names, dtypes, shapes and
    bytes, independent of the device and of the file format. Records carry it, so that a defense record can say
    whether it purified the very weights its No Defense record measured (a model retrained on a GPU differs in the
    last bits: GPU arithmetic is not bit-reproducible)."""
    import hashlib
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_model(model: torch.nn.Module, path, metadata: dict | None = None) -> Path:
    """Write ``model``'s state dict as safetensors, atomically (temp file, then rename)."""
    return save_tensors(model.state_dict(), path, metadata)


def save_tensors(state: dict, path, metadata: dict | None = None) -> Path:
    """Write a dict of tensors as safetensors, atomically (temp file, then rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_state_dict(path) -> dict:
    """Read a state dict from ``.safetensors`` or (weights only) from a PyTorch file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends
        raise UntrustedCheckpointError(
            f"{path} cannot be loaded as weights only ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"It contains pickled objects that would execute code. Ask for a .safetensors file or a plain state "
            f"dict; if you wrote the file yourself, re-save it with torch.save(model.state_dict(), path).") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UntrustedCheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def load_model(model: torch.nn.Module, path, strict: bool = True) -> torch.nn.Module:
    """Load weights from ``path`` into ``model`` (in place) and return it; shapes must match."""
    state = load_state_dict(path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {type(model).__name__}: {e}") from None
    return model
