"""Checkpoints that are safe to load, verified, and atomic.

- Safe: a checkpoint holds only tensors and plain types (dict, list, tuple, str, int,
  float, bool, None); numpy arrays are stored as tensors with a marker and come back as
  numpy arrays. Loading uses ``torch.load(weights_only=True)``, so a crafted file passed as
  ``weights=`` or ``trainer.resume=`` cannot run code: it is refused.
- Verified: a SHA-256 of the contents (every tensor's bytes, dtype and shape, and every
  plain value) is stored beside them; a file whose bytes changed on disk fails to load
  with an error naming it.
- Recorded: every checkpoint says which method wrote it and with which resolved config,
  so ``weights=`` of another method's run names both methods instead of listing keys.
- Atomic: written to a temporary sibling and renamed, so a crash never leaves a
  half-written file under the final name. Files get the mode ``open()`` would give them
  (0666 minus the umask), like every other output of a run.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taltoolkit._version import __version__
from taltoolkit.atomicio import atomic_write_bytes  # re-exported: the one atomic writer
from taltoolkit.data.errors import CheckpointError, CheckpointNotFoundError

FORMAT = "taltoolkit-checkpoint"
FORMAT_VERSION = 2
META_KEY = "_taltoolkit"  # the format record: format, version, kind, method, config
DIGEST_KEY = "_sha256"  # hex digest of everything else in the file
_NDARRAY = "__ndarray__"  # marker of an encoded numpy array


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # weights_only loading keeps tuples, but be strict about what random.setstate needs.
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- encoding
def encode_state(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy arrays/scalars turned into tensors/plain values; anything else that
    is not a tensor or a plain type raises ``TypeError`` naming where it sits."""
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    # Subclasses (torch.__version__ is a str subclass, IntEnum an int one) would be pickled as
    # their own class, which weights_only loading refuses: store the plain value.
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"{where}: numpy array of dtype {obj.dtype} cannot be stored in a checkpoint; "
                            "convert it to a list of plain values")
        arr = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("="))
        return {_NDARRAY: torch.from_numpy(arr.copy())}
    if isinstance(obj, dict):
        # OrderedDict (state dicts) stays one, with the per-module versions load_state_dict reads.
        out: dict[Any, Any] = OrderedDict() if isinstance(obj, OrderedDict) else {}
        if hasattr(obj, "_metadata"):
            out._metadata = encode_state(dict(obj._metadata), f"{where}._metadata")  # type: ignore[attr-defined]
        for k, v in obj.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} cannot be stored in a checkpoint")
            out[encode_state(k, where)] = encode_state(v, f"{where}[{k!r}]")
        if _NDARRAY in out and len(out) == 1:
            raise TypeError(f"{where}: the key {_NDARRAY!r} is reserved by the checkpoint format")
        return out
    if isinstance(obj, (list, tuple)):
        items = [encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    raise TypeError(
        f"{where}: a {type(obj).__module__}.{type(obj).__name__} cannot be stored in a checkpoint (only tensors, "
        "numpy arrays and plain types: dict, list, tuple, str, int, float, bool, None); convert it in extra_state()"
    )


def decode_state(obj: Any) -> Any:
    """Inverse of :func:`encode_state` (numpy arrays come back as numpy arrays)."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _NDARRAY in obj:
            return obj[_NDARRAY].cpu().numpy().copy()
        out = type(obj)((k, decode_state(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode_state(v) for v in obj)
    return obj


def _feed(h: Any, obj: Any) -> None:
    """Hash a value of the encoded tree canonically (type tags, lengths, exact floats)."""
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        h.update(b"i%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"f" + (obj.hex() if math.isfinite(obj) else repr(obj)).encode() + b";")
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b) + b)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"t{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"d%d{" % len(obj))
        if hasattr(obj, "_metadata"):
            _feed(h, dict(obj._metadata))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update((b"l%d[" if isinstance(obj, list) else b"u%d(") % len(obj))
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(obj, (torch.dtype, torch.device)):
        h.update(f"o{obj};".encode())
    else:  # encode_state lets nothing else through
        raise TypeError(f"cannot hash a {type(obj).__name__} in a checkpoint")


def state_digest(obj: Any) -> str:
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


# --------------------------------------------------------------------------- save / load
def checkpoint_meta(kind: str, method: str | None = None, config: dict[str, Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The format record of a checkpoint: ``kind`` is ``resume`` (last.ckpt) or ``inference``."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "method": method, "config": config,
            "taltoolkit": __version__, "torch": torch.__version__, **extra}


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Write ``state`` (tensors, numpy arrays, plain types) with its format record and digest."""
    if META_KEY in state or DIGEST_KEY in state:
        raise ValueError(f"checkpoint state may not use the reserved keys {META_KEY!r}, {DIGEST_KEY!r}")
    record = encode_state({**state, META_KEY: meta if meta is not None else checkpoint_meta("resume")})
    record[DIGEST_KEY] = state_digest(record)
    atomic_write_bytes(path, lambda f: torch.save(record, f))


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    key: str = "trainer.resume",
) -> dict[str, Any]:
    """Load and verify a checkpoint; ``key`` is the config key that named it (for messages).

    Returns the state with numpy arrays restored and the format record under ``"_taltoolkit"``.
    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated, garbage,
    tampered-with (not only tensors and plain types) or corrupted (digest mismatch) file.
    """
    path = Path(path)
    where = f"{key}={path}"
    if not path.is_file():
        what = "a run's checkpoints/last.ckpt" if key == "trainer.resume" else "a run's checkpoints/inference.pt or last.ckpt"
        raise CheckpointNotFoundError(f"{where}: checkpoint not found; pass {key}=PATH of {what}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{where}: the checkpoint file is empty (0 bytes), e.g. copied while being written; "
                              "use another copy or an earlier checkpoint")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{where}: refused to load: the file holds Python objects other than tensors and plain types, and "
                "unpickling it could run arbitrary code. taltoolkit checkpoints never do; use a checkpoint a "
                f"taltoolkit run wrote (checkpoints of versions before format {FORMAT_VERSION} must be re-created)"
            ) from None
        raise CheckpointError(f"{where}: not a readable checkpoint ({_short(e)}); the file is truncated or "
                              "not a checkpoint: use another copy or an earlier checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError,
            AttributeError, TypeError) as e:
        raise CheckpointError(f"{where}: not a readable checkpoint ({type(e).__name__}: {_short(e)}); the file is "
                              "truncated, corrupted or not a checkpoint: use another copy or an earlier "
                              "checkpoint") from None
    if not isinstance(record, dict) or not isinstance(record.get(META_KEY), dict) or \
            record[META_KEY].get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a taltoolkit checkpoint (no {FORMAT!r} record); pass a file a "
                              "taltoolkit run wrote (checkpoints/last.ckpt or checkpoints/inference.pt)")
    if record[META_KEY].get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {record[META_KEY].get('version')} is not "
                              f"{FORMAT_VERSION}, which this taltoolkit reads; re-create it with this version")
    stored = record.pop(DIGEST_KEY, None)
    if not isinstance(stored, str) or state_digest(record) != stored:
        raise CheckpointError(f"{where}: the checkpoint is corrupted: its contents do not match the SHA-256 stored "
                              "in it (bytes changed on disk or in transfer); use another copy or an earlier "
                              "checkpoint")
    return decode_state(record)


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
