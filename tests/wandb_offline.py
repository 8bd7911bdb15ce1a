"""Read the history of an offline wandb run from its ``run-<id>.wandb`` file (tests only).

wandb's own reader of these files left the public SDK, so this reads the format directly:
a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then LevelDB's log format -- 32 KiB
blocks of records ``crc32c (4) | length (2, little endian) | type (1) | data``, where a
protobuf ``Record`` is one FULL (1) chunk or FIRST (2), MIDDLE (3)..., LAST (4) chunks, and a
block's tail shorter than a record header is zero padding. Each ``history`` record holds the
values of one step as JSON strings.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

_BLOCK = 32768
_HEADER = 7


def wandb_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run file (header {data[:7]!r})")
    out: list[bytes] = []
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # zero padding at the end of a block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        if kind == 0 and length == 0:  # pre-allocated, never written
            break
        if pos + length > len(data):  # being written
            break
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos - length - _HEADER}")
    return out


def wandb_history(run_dir: Path, timeout_s: float = 60.0) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` of the one offline run under ``run_dir`` (a run's output
    folder holding ``wandb/offline-run-*``, or the offline-run folder itself).

    wandb's service process writes the file after ``run.finish()`` has returned, so this
    waits (up to ``timeout_s``) for the run's closing ``exit`` record.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).rglob("run-*.wandb"))
    if len(files) != 1:
        raise AssertionError(f"expected one offline wandb run under {run_dir}, found {files}")
    deadline = time.monotonic() + timeout_s
    while True:
        records = [pb.Record.FromString(raw) for raw in wandb_records(files[0])]
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{files[0]}: no exit record after {timeout_s} s (the run was not finished)")
        time.sleep(0.1)
    history: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        if rec.WhichOneof("record_type") != "history":
            continue
        step = int(rec.history.step.num)
        for item in rec.history.item:
            key = item.key or ".".join(item.nested_key)
            if key.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                continue
            history.setdefault(key, []).append((step, float(json.loads(item.value_json))))
    return history
