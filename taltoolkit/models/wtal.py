"""Two-branch, multi-stream WTAL backbone (CASE Sec. 3 / Fig. 2a, plus the SCC clustering head of Sec. 4.1).

Per stream (RGB and optical flow are the two halves of the feature vector):

* classification branch: encoder Conv1d(D_s -> H, kernel) + ReLU, action classifier
  Conv1d(H -> G, 1) giving the T-CAS logits P^V;
* attention branch: encoder Conv1d(D_s -> H, kernel) + ReLU giving the snippet embeddings E,
  attention layer Conv1d(H -> 1, 1) + sigmoid giving the foreground probabilities P^A, and
  clustering head giving the cluster logits of P^S: by default the public code's cosine head
  (L2-normalised embeddings against K L2-normalised prototypes, no bias, times 10), or a
  plain ``Linear(H -> K)`` (``cluster_head="linear"``).

Layer sizes follow the authors' public code (H = 512, kernel 1): with D = 2048, G = 20,
K = 16 that is 2.137 M parameters, the paper's Table 1 figure.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from taltoolkit.registry import register

Tensor = torch.Tensor


class CosineClusterHead(nn.Module):
    """``scale * cos(E_t, prototype_k)``: logits (..., K) of L2-normalised embeddings (..., H).

    As in CASE's public code the prototypes are renormalised in place (without gradient) at
    every forward, so the optimizer updates unit vectors and the next forward projects them
    back onto the sphere; the logits stay within [-scale, scale], the range that the
    Sinkhorn sharpness (20 / rho over logits scaled by rho = 10) assumes.
    """

    def __init__(self, hidden_dim: int, num_clusters: int, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = float(scale)
        self.prototypes = nn.Linear(hidden_dim, num_clusters, bias=False)

    def forward(self, emb: Tensor) -> Tensor:
        with torch.no_grad():
            self.prototypes.weight.copy_(nn.functional.normalize(self.prototypes.weight, dim=1))
        return self.prototypes(nn.functional.normalize(emb, dim=-1)) * self.scale


CLUSTER_HEADS = ("cosine", "linear")


def _conv_channels_last(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``conv`` on channels-last input: (..., T, C_in) -> (..., T, C_out).

    A kernel-1 convolution is a linear map over channels: ``F.linear`` on the channels-last
    layout gives the same values up to float rounding and is 1.7x (one test video) to 3x
    (a training batch) faster than ``conv1d`` on a CPU. The weights stay a ``Conv1d``'s, so
    checkpoints and the public code's parameter names are unchanged.
    """
    if conv.kernel_size[0] == 1:
        return nn.functional.linear(x, conv.weight[..., 0], conv.bias)
    return rearrange(conv(rearrange(x, "b t c -> b c t")), "b c t -> b t c")


class _Stream(nn.Module):
    """One stream's classification and attention branches."""

    def __init__(
        self, in_dim: int, num_classes: int, hidden_dim: int, kernel_size: int, num_clusters: int, dropout: float,
        cluster_head: str = "cosine", cluster_scale: float = 10.0,
    ) -> None:
        super().__init__()
        # padding="same" keeps T for any kernel size (odd or even), so outputs align with steps.
        self.cls_encoder = nn.Conv1d(in_dim, hidden_dim, kernel_size, padding="same")
        self.classifier = nn.Conv1d(hidden_dim, num_classes, 1)
        self.att_encoder = nn.Conv1d(in_dim, hidden_dim, kernel_size, padding="same")
        self.attention = nn.Conv1d(hidden_dim, 1, 1)
        self.cluster_head: nn.Module | None = None
        if num_clusters > 0:
            self.cluster_head = (CosineClusterHead(hidden_dim, num_clusters, cluster_scale) if cluster_head == "cosine"
                                 else nn.Linear(hidden_dim, num_clusters))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> dict[str, Tensor | None]:
        # x (B, T, D_s) channels-last; keep (B, T, 1) float, 0 at padded steps.
        # Embeddings are zeroed at padded steps so a kernel > 1 cannot mix padding into
        # real steps' neighbours further down (the input is already zeroed there).
        h_cls = self.dropout(torch.relu(_conv_channels_last(self.cls_encoder, x))) * keep  # (B, T, H)
        cas = _conv_channels_last(self.classifier, h_cls)  # (B, T, G)
        emb = self.dropout(torch.relu(_conv_channels_last(self.att_encoder, x))) * keep  # (B, T, H): E of Sec. 4.1
        att = torch.sigmoid(_conv_channels_last(self.attention, emb))  # (B, T, 1)
        return {
            "cas": cas,
            "attention": rearrange(att, "b t 1 -> b t"),
            "cluster_logits": self.cluster_head(emb) if self.cluster_head is not None else None,
            "embeddings": emb,
            "cls_embeddings": h_cls,
        }

    def classify(self, embeddings: Tensor) -> Tensor:
        """The action classifier alone: (..., H) -> (..., G) logits (a kernel-1 conv is a linear map)."""
        return _conv_channels_last(self.classifier, embeddings)


@register("backbone", "two_stream_wtal")
class TwoStreamWTAL(nn.Module):
    """Two-branch WTAL network of CASE (Fig. 2a) per feature stream, with the SCC clustering head.

    ``in_dim`` is split into ``streams`` equal consecutive slices (RGB first, then flow, as the
    features are stored); ``streams=1`` uses the whole vector (single-modality features).
    ``num_clusters=0`` drops the clustering head (the plain baseline). ``cluster_head`` is
    ``"cosine"`` (the public code: :class:`CosineClusterHead` with ``cluster_scale`` 10) or
    ``"linear"`` (a biased linear layer on the raw embeddings). ``dropout`` applies to both
    encoders' outputs (0 by default, as in the code the defaults follow).

    forward(features (B, T, D), mask (B, T) bool | None) -> dict, streams stacked first:
      ``cas`` (S, B, T, G) logits, ``attention`` (S, B, T) probabilities, ``cluster_logits``
      (S, B, T, K) or None, ``embeddings`` (S, B, T, H) attention-branch embeddings,
      ``cls_embeddings`` (S, B, T, H) classification-branch embeddings (what the classifier
      reads; a memory branch plugged onto CASE uses them with :meth:`classify`).
    Values at padded steps are meaningless; consumers must apply the mask.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 512,
        kernel_size: int = 1,
        num_clusters: int = 16,
        dropout: float = 0.0,
        streams: int = 2,
        cluster_head: str = "cosine",
        cluster_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if cluster_head not in CLUSTER_HEADS:
            raise ValueError(f"model.cluster_head={cluster_head!r}; choose one of {CLUSTER_HEADS}")
        if streams < 1 or in_dim % streams:
            raise ValueError(f"in_dim={in_dim} cannot be split into streams={streams} equal parts")
        if num_clusters < 0:
            raise ValueError(f"num_clusters={num_clusters} must be >= 0 (0 disables the clustering head)")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        self.num_clusters = num_clusters
        self.streams = streams
        self.stream_dim = in_dim // streams
        self.branches = nn.ModuleList(
            _Stream(self.stream_dim, num_classes, hidden_dim, kernel_size, num_clusters, dropout, cluster_head, cluster_scale)
            for _ in range(streams)
        )

    def forward(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor | None]:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"features have D={features.shape[-1]}, the model was built for in_dim={self.in_dim}")
        if mask is None:
            keep = features.new_ones(features.shape[0], features.shape[1], 1)  # (B, T, 1)
        else:
            keep = rearrange(mask.to(features.dtype), "b t -> b t 1")
        x = rearrange(features, "b t (s d) -> s b t d", s=self.streams) * keep  # (S, B, T, D_s)
        outs = [branch(x[i], keep) for i, branch in enumerate(self.branches)]
        result: dict[str, Tensor | None] = {}
        for key in ("cas", "attention", "cluster_logits", "embeddings", "cls_embeddings"):
            parts = [o[key] for o in outs]
            result[key] = None if parts[0] is None else torch.stack(parts)  # type: ignore[arg-type]
        return result

    def classify(self, embeddings: Tensor, stream: int) -> Tensor:
        """Stream ``stream``'s action classifier on classification embeddings (..., H) -> (..., G) logits."""
        return self.branches[stream].classify(embeddings)
