"""ACM-Net-style WTAL backbone: the main branch of RMGCL/GKSA (Sec. III-B, Eq. 1-4).

* Embedding (Eq. 1): ``F = ReLU(Conv1d(X))``, one temporal convolution, kernel 3, width
  2048 (ACM-Net keeps the I3D feature width).
* CAM head (Eq. 2): one fully connected layer H -> C+1, the last class being background.
* Three-branch temporal attention (Eq. 3): one temporal convolution H -> 3, softmax over
  [action instance, action context, background]. Kernel 1 by default, as in ACM-Net's
  public code (whose THUMOS14 result is the baseline row RMGCL/GKSA reports);
  ``attention_kernel_size=3`` is the kernel RMGCL/GKSA's Sec. III-B states.
* Attention-weighted TCAMs (Eq. 4): ``A^m = W^m * A`` on the logits, m in (ins, con, back).

Dropout follows ACM-Net's public code, one rate p for every dropout (0.7 on THUMOS14 and on
ActivityNet 1.3): while training, the CAM head sees the embeddings with whole time steps
dropped (one Bernoulli draw per step) and then element-wise dropout. On THUMOS14 the
attention head and the returned embeddings see no dropout. ACM-Net's ActivityNet model
adds dropout on the input features before the embedding (``input_dropout``) and on the
embeddings the attention head reads (``attention_dropout``). The random draws are made in
ACM-Net's order (input, attention, step mask, elements), so that one seed gives both the
same masks. The video-level MIL pooling and the losses live in ``taltoolkit.losses.acmnet``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from taltoolkit.registry import register

Tensor = torch.Tensor


def weighted_tcams(cam: Tensor, attention: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 4: each branch's attention (B, T, 3) scales the class logits (B, T, K) of every step.

    Returns A^ins, A^con, A^back, each (B, T, K). Also used on RMGCL's pseudo-CAM (Eq. 14).
    """
    return cam * attention[..., 0:1], cam * attention[..., 1:2], cam * attention[..., 2:3]


@register("backbone", "acmnet")
class ACMNet(nn.Module):
    """ACM-Net main branch: conv embedding, single-FC C+1 CAM head, three-branch attention (Eq. 1-4).

    forward(features (B, T, D), mask (B, T) bool | None) -> dict:
      ``embeddings`` (B, T, H) F of Eq. 1 (post-ReLU, zero at padded steps; no dropout after
      the embedding, so ``classify(embeddings)`` is the dropout-free CAM of the same step);
      ``cam`` (B, T, C+1) logits A of Eq. 2, background last;
      ``attention`` (B, T, 3) W of Eq. 3, softmax over [instance, context, background];
      ``tcam_ins``, ``tcam_con``, ``tcam_back`` (B, T, C+1) logits A^m of Eq. 4.
    ``classify(embeddings (..., H)) -> (..., C+1)`` is the CAM head alone, shared with the
    memory branch for its pseudo-TCAMs (Eq. 14). Values at padded steps are meaningless;
    consumers must apply the mask.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 2048,  # Eq. 1 width: ACM-Net embeds 2048-d I3D features into 2048-d
        kernel_size: int = 3,  # Eq. 1 temporal kernel (ACM-Net)
        attention_kernel_size: int = 1,  # ACM-Net's code (att_branch); RMGCL's Eq. 3 text says 3
        dropout: float = 0.7,  # ACM-Net (THUMOS14 and ActivityNet 1.3)
        segment_dropout: bool = True,  # ACM-Net also drops whole time steps before the CAM head
        input_dropout: bool = False,  # ACM-Net ActivityNet: dropout on the features before Eq. 1
        attention_dropout: bool = False,  # ACM-Net ActivityNet: the attention head reads dropped embeddings
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        self.attention_kernel_size = attention_kernel_size
        self.segment_dropout = segment_dropout
        self.input_dropout = input_dropout
        self.attention_dropout = attention_dropout
        # padding="same" keeps T for any kernel, so every output step aligns with its input step.
        self.embedding = nn.Conv1d(in_dim, hidden_dim, kernel_size, padding="same")
        self.attention = nn.Conv1d(hidden_dim, 3, attention_kernel_size, padding="same")
        self.classifier = nn.Linear(hidden_dim, num_classes + 1)
        self.dropout = nn.Dropout(dropout)

    def classify(self, embeddings: Tensor) -> Tensor:
        """F_CAM of Eq. 2 / Eq. 14: (..., H) -> (..., C+1) logits. No dropout, so it is a pure function."""
        return self.classifier(embeddings)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"features have D={features.shape[-1]}, the model was built for in_dim={self.in_dim}")
        b, t, _ = features.shape
        if mask is None:
            keep = features.new_ones(b, t)
        else:
            keep = mask.to(features.dtype)  # (B, T)
        x = rearrange(features * keep.unsqueeze(-1), "b t d -> b d t")  # (B, D, T) channels-first
        if self.input_dropout:
            x = self.dropout(x)  # a no-op in eval mode, as nn.Dropout
        # Zeroing the embeddings at padded steps keeps a kernel-3 attention conv from mixing
        # padding into the last real steps.
        emb = F.relu(self.embedding(x)) * keep.unsqueeze(1)  # (B, H, T): F of Eq. 1
        att_in = self.dropout(emb) if self.attention_dropout else emb
        att = rearrange(self.attention(att_in).softmax(1), "b m t -> b t m")  # (B, T, 3): W of Eq. 3
        emb = rearrange(emb, "b h t -> b t h")  # (B, T, H)

        cam_in = emb
        if self.training and self.segment_dropout and self.dropout.p > 0:
            # One Bernoulli draw per step, shared by all channels: whole steps vanish (a kept
            # step is scaled by 1 / (1 - p), then each element once more by the dropout below).
            cam_in = cam_in * self.dropout(emb.new_ones(b, t, 1))
        cam = self.classify(self.dropout(cam_in))  # (B, T, C+1): A of Eq. 2
        tcam_ins, tcam_con, tcam_back = weighted_tcams(cam, att)  # A^m of Eq. 4
        return {
            "embeddings": emb,
            "cam": cam,
            "attention": att,
            "tcam_ins": tcam_ins,
            "tcam_con": tcam_con,
            "tcam_back": tcam_back,
        }
