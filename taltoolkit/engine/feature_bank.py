"""Keep a whole feature set on the training device.

For these small models, copying ``(B, T, 2048)`` float32 batches from host memory every
step, not the model, is what limits throughput. With ``trainer.features_on_device=true`` the
loader ships only step positions; features are gathered on the device from one
concatenated tensor (float16 by default: THUMOS14 I3D features are ~1.5 GB that way).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from taltoolkit.structures import Video


class FeatureBank:
    """All videos' features as one ``(sum T, D)`` tensor on ``device``, gathered by position."""

    def __init__(self, videos: Sequence[Video], device: torch.device, dtype: torch.dtype = torch.float16) -> None:
        lengths = np.array([v.num_steps for v in videos], np.int64)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]])).to(device)  # (V,)
        self.data = torch.cat([torch.from_numpy(np.ascontiguousarray(v.features)) for v in videos]).to(device, dtype)
        self.device = device

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def gather(self, index: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """index (B,) video ids, positions (B, T) step indices (-1 padded), mask (B, T) -> (B, T, D) float32."""
        rows = self.offsets[index.to(self.device)][:, None] + positions.to(self.device).clamp_min(0).long()  # (B, T)
        feats = self.data[rows].float()  # (B, T, D)
        return feats * mask.to(self.device)[..., None]


class PositionsOnly(Dataset):
    """Wraps a sampler dataset so items carry positions but no features (gathered on device)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        t = item["features"].shape[0]
        item["features"] = np.zeros((t, 0), np.float32)  # collate pads a (B, T, 0) placeholder
        return item
