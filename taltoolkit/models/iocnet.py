"""IOCNet's network (COPL Sec. 3.4, Eq. 11-13): one teacher or student of the teacher-student pair.

- class-specific branch on the concatenated RGB ‖ flow feature X: a temporal convolution
  then the CAS layer, ``CAS = Att(Conv(X))`` (T, C) logits; ``A_cs = sigmoid(sum_c CAS)``
  (Eq. 11, ``f_sum`` is the sum over classes);
- class-agnostic branch per modality: ``A_ca^m = Att(Conv(X^m))`` (Eq. 12), a temporal
  convolution then a 1-channel layer and a sigmoid; ``A_ca = (A_ca^R + A_ca^F) / 2`` (Eq. 13).

The paper says Att "comprises several convolution layers and the sigmoid function [22, 53]"
without sizes. We use one hidden temporal convolution (kernel 3, H = 512 channels, ReLU) per
branch and a kernel-1 output layer: the two-branch network of AICL [24], whose loss weights
(mu1 = 5, mu2 = 0.1, lambda1 = 0.01) COPL keeps. The CAS stays logits (Eq. 14 takes its
softmax); the sigmoid belongs to the class-agnostic layer.

Why not :class:`taltoolkit.models.wtal.TwoStreamWTAL` (CASE's network): its classification
branch is per stream, IOCNet's reads the concatenated feature (Sec. 3.4, "X ... is fed into a
convolution layer"), and IOCNet needs A_cs from the summed CAS. The class-agnostic half is the
same kind of per-stream attention branch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from taltoolkit.registry import register

Tensor = torch.Tensor


def _conv_relu(in_dim: int, out_dim: int, kernel_size: int, dropout: float) -> nn.Sequential:
    # padding="same" keeps T for any kernel, so outputs align with input steps.
    return nn.Sequential(nn.Conv1d(in_dim, out_dim, kernel_size, padding="same"), nn.ReLU(), nn.Dropout(dropout))


@register("backbone", "iocnet")
class IOCNet(nn.Module):
    """IOCNet (COPL Sec. 3.4): class-specific branch on X, class-agnostic branch per modality.

    forward(features (B, T, D), mask (B, T) bool | None) -> dict:
      ``cas`` (B, T, C) logits; ``a_cs`` (B, T) = sigmoid(sum_c CAS) (Eq. 11); ``a_ca_m``
      (M, B, T) per-modality attention (Eq. 12, RGB first); ``a_ca`` (B, T) their mean (Eq. 13);
      ``emb_cs`` (B, T, H) and ``emb_ca`` (M, B, T, H) hidden embeddings (for the contrastive
      loss L_C). Values at padded steps are meaningless; consumers apply the mask.
    ``modalities`` splits D into equal consecutive slices (2: RGB ‖ flow; 1: one modality).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 512,
        kernel_size: int = 3,
        dropout: float = 0.0,
        modalities: int = 2,
    ) -> None:
        super().__init__()
        if modalities < 1 or in_dim % modalities:
            raise ValueError(f"model.modalities={modalities} must divide in_dim={in_dim} into equal parts")
        self.in_dim, self.num_classes, self.modalities = in_dim, num_classes, modalities
        self.cs_encoder = _conv_relu(in_dim, hidden_dim, kernel_size, dropout)
        self.cs_classifier = nn.Conv1d(hidden_dim, num_classes, 1)
        d_m = in_dim // modalities
        self.ca_encoders = nn.ModuleList(_conv_relu(d_m, hidden_dim, kernel_size, dropout) for _ in range(modalities))
        self.ca_heads = nn.ModuleList(nn.Conv1d(hidden_dim, 1, 1) for _ in range(modalities))

    def forward(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"features have D={features.shape[-1]}, the model was built for in_dim={self.in_dim}")
        b, t, _ = features.shape
        keep = features.new_ones(b, 1, t) if mask is None else rearrange(mask.to(features.dtype), "b t -> b 1 t")
        x = rearrange(features, "b t d -> b d t") * keep  # (B, D, T)
        # Hidden embeddings are zeroed at padded steps so a kernel > 1 cannot carry padding inwards.
        h_cs = self.cs_encoder(x) * keep  # (B, H, T)
        cas = rearrange(self.cs_classifier(h_cs), "b c t -> b t c")  # (B, T, C) logits
        a_cs = torch.sigmoid(cas.sum(-1))  # (B, T), Eq. 11
        parts = rearrange(x, "b (m d) t -> m b d t", m=self.modalities)  # (M, B, D_m, T)
        emb_ca, a_ca_m = [], []
        for i in range(self.modalities):
            h = self.ca_encoders[i](parts[i]) * keep  # (B, H, T)
            emb_ca.append(rearrange(h, "b h t -> b t h"))
            a_ca_m.append(torch.sigmoid(self.ca_heads[i](h))[:, 0])  # (B, T), Eq. 12
        a_ca_m_t = torch.stack(a_ca_m)  # (M, B, T)
        return {
            "cas": cas,
            "a_cs": a_cs,
            "a_ca_m": a_ca_m_t,
            "a_ca": a_ca_m_t.mean(0),  # Eq. 13
            "emb_cs": rearrange(h_cs, "b h t -> b t h"),
            "emb_ca": torch.stack(emb_ca),  # (M, B, T, H)
        }
