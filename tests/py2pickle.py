"""Write ``.npy`` object arrays byte-for-byte as Python 2's numpy and pickle wrote them.

The public W-TALC files (the joint feature file, ``labels.npy``, ``segments.npy``) are
pickle protocol 2 streams from Python 2: strings are Python 2 ``str`` (SHORT_BINSTRING /
BINSTRING opcodes) -- including the raw bytes of every float array -- which Python 3 can only
read with ``np.load(..., allow_pickle=True, encoding="bytes")``. ``pickle.dumps`` in Python
3 cannot produce these opcodes, so they are emitted by hand here.

Supported values: 2-D float32 arrays, lists, floats, ints and ``bytes`` (a Python 2 str).
"""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np


def _str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _array(shape: tuple[int, ...], descr: bytes, order: bytes, flags: int, payload: bytes) -> bytes:
    """numpy's ``ndarray.__reduce__`` as Python 2 pickled it."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _str(b"b") + b"\x87R"
        + b"(" + _int(1) + b"(" + b"".join(_int(n) for n in shape) + b"t"
        + b"cnumpy\ndtype\n" + _str(descr) + _int(0) + _int(1) + b"\x87R"
        + b"(" + _int(3) + _str(order) + b"NNN" + _int(-1) + _int(-1) + _int(flags) + b"tb"
        + b"\x89" + payload + b"tb"
    )


def _value(x: Any) -> bytes:
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x, dtype="<f4")
        return _array(a.shape, b"f4", b"<", 0, _str(a.tobytes()))
    if isinstance(x, bytes):
        return _str(x)
    if isinstance(x, (list, tuple)):
        return b"](" + b"".join(_value(v) for v in x) + b"e"
    if isinstance(x, (bool, np.bool_)):
        return b"\x88" if x else b"\x89"
    if isinstance(x, (int, np.integer)):
        return _int(int(x))
    if isinstance(x, (float, np.floating)):
        return b"G" + struct.pack(">d", float(x))
    raise TypeError(f"py2pickle: unsupported {type(x).__name__}")


def save_py2_object_array(path: Path, items: list[Any]) -> None:
    """An ``(N,)`` object array ``.npy`` as Python 2 ``np.save`` wrote it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (len(items),)})
    body = _array((len(items),), b"O8", b"|", 63, _value(list(items)))
    path.write_bytes(header.getvalue() + b"\x80\x02" + body + b".")
