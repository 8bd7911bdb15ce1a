"""ActionFormer's detector network (Zhang, Wu and Li, ECCV 2022), written from the paper and
the facts of its public configuration (values named where used).

Layout: ``(B, C, T)`` inside the network (1-D convolutions), ``(B, T, C)`` at its boundary
like every batch in taltoolkit. Every layer multiplies its output by the (downsampled) mask, so
padded steps never leak into real ones (``tests/test_actionformer.py`` checks that padding
leaves the outputs of real steps unchanged).

1. Projection: ``embed_layers`` masked convolutions (kernel 3) + LayerNorm + ReLU.
2. Encoder: ``stem_layers`` pre-LN transformer blocks with local (windowed) masked
   self-attention at full resolution, then ``branch_layers`` blocks that each downsample by
   ``scale_factor`` (strided depthwise convolutions for q/k/v, max-pooled skip): the stem output
   and every branch output form a ``1 + branch_layers`` level feature pyramid.
3. Neck: ``identity`` (LayerNorm per level, ActionFormer's default) or ``fpn`` (lateral 1x1,
   top-down nearest upsampling, 3x3 output convolutions, LayerNorm).
4. Heads shared across levels: classification (``head_layers - 1`` conv+LN+ReLU, then a conv
   to ``num_classes`` logits with the prior-probability bias) and regression (same trunk, a
   conv to 2 distances, a learnable scale per level, ReLU). With ``quality_heads`` (APL's
   ALQA, Eq. 2) two more final convolutions on the regression trunk predict tIoU and tND logits:
   "H_tiou, H_tnd and H_reg share the same parameters, except for the final layer".
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taltoolkit.losses.detection import DEFAULT_REGRESSION_RANGES, make_points
from taltoolkit.registry import register


def _down_mask(mask: Tensor, stride: int) -> Tensor:
    """(B, T) -> (B, ceil(T / stride)): the mask of a stride-``stride`` convolution's output."""
    return mask[:, ::stride] if stride > 1 else mask


class MaskedConv1d(nn.Module):
    """Conv1d with 'same' padding whose output is zeroed at padded steps; returns (x, mask)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel size must be odd, got {kernel}")
        self.stride = stride
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:  # x (B, C, T), mask (B, T)
        m = _down_mask(mask, self.stride)
        return self.conv(x) * m[:, None].to(x.dtype), m


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor.

    Computed along the channel axis in place of torch's kernel (which normalises the last
    axis and would need a transpose and a copy each way): the public ActionFormer code's
    order of operations (mean, centred square mean, divide by sqrt(var + eps), scale, shift),
    so both round alike, and 1.4-1.6x faster forward and backward on a CPU at (2, 512, 2304).
    The output is contiguous in (B, C, T) for the convolutions that read it.
    """

    def forward(self, x: Tensor) -> Tensor:  # x (B, C, T)
        centred = x - x.mean(dim=1, keepdim=True)
        var = (centred * centred).mean(dim=1, keepdim=True)  # biased, as LayerNorm's
        out = centred / torch.sqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight[:, None]
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability p."""
    if p <= 0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class LayerScaleDropPath(nn.Module):
    """A residual branch's per-channel learnable scale, then stochastic depth.

    ActionFormer's public code wraps both branches of every transformer block this way
    whenever drop path is on (the LayerScale of CaiT, Touvron et al. 2021): the scale starts
    at ``init`` (1e-4), so each block starts close to the identity and the branches grow
    during training.
    """

    def __init__(self, dim: int, p: float, init: float) -> None:
        super().__init__()
        self.p = float(p)
        self.scale = nn.Parameter(torch.full((dim,), float(init)))  # (C,)

    def forward(self, x: Tensor) -> Tensor:  # x (B, C, T)
        return drop_path(x * self.scale[None, :, None], self.p, self.training)


def sinusoid_encoding(t: int, dim: int, device: torch.device) -> Tensor:
    """(dim, t) fixed sinusoidal position encoding (Vaswani et al.), float32.

    Computed in float64 and rounded once to float32, as the public code stores its table
    (angles of positions in the thousands lose digits when computed in float32).
    """
    pos = torch.arange(t, device=device, dtype=torch.float64)[None]  # (1, t)
    i = torch.arange(0, dim, 2, device=device, dtype=torch.float64)[:, None]  # (dim/2, 1)
    ang = pos / torch.pow(10000.0, i / dim)
    pe = torch.zeros(dim, t, device=device, dtype=torch.float64)
    pe[0::2] = torch.sin(ang)
    pe[1::2] = torch.cos(ang[: dim // 2])
    return pe.float()


# Queries per block of the windowed attention: large enough for efficient matrix products,
# small enough that the wasted products outside the band (c + 2r keys per query) stay cheap.
_ATTENTION_BLOCK = 64


def local_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, window: int) -> Tensor:
    """Masked self-attention restricted to ``window`` keys centred on each query.

    q, k, v (B, H, T, d); key_mask (B, T) bool. ``window <= 1`` or ``>= 2T`` means global.
    Exact: every query attends to the keys ``|i - j| <= window // 2`` that are real steps.
    """
    t, d = q.shape[-2:]
    scale = 1.0 / math.sqrt(d)
    neg = torch.finfo(q.dtype).min
    if window <= 1 or window >= 2 * t:
        scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale  # (B, H, T, T)
        scores = scores.masked_fill(~key_mask[:, None, None, :], neg)
        attn = scores.softmax(-1) * key_mask[:, None, None, :].to(q.dtype)
        return torch.einsum("bhij,bhjd->bhid", attn, v)
    r = window // 2
    w = 2 * r + 1
    # Blocks of c queries against the c + 2r keys in their reach: two batched matrix products
    # instead of products with the (B, H, T, d, w) unfolded keys and values, which einsum
    # materialises (hundreds of MB at THUMOS14's T = 2304) in the forward and again in the
    # backward. Each query's w scores are read off its block's band; the values are summed
    # with the band written back into a zero block (the zeros add nothing).
    b, h = q.shape[:2]
    c = min(_ATTENTION_BLOCK, t)
    n = -(-t // c)  # blocks
    tp, span = n * c, c + 2 * r
    q_blk = F.pad(q, (0, 0, 0, tp - t)).reshape(b, h, n, c, d)
    k_blk = F.pad(k, (0, 0, r, tp - t + r)).unfold(2, span, c)  # (B, H, n, d, span)
    v_blk = F.pad(v, (0, 0, r, tp - t + r)).unfold(2, span, c).transpose(-1, -2)  # (B, H, n, span, d)
    band = (torch.arange(c, device=q.device)[:, None] + torch.arange(w, device=q.device)).expand(b, h, n, c, w)
    scores = torch.matmul(q_blk, k_blk).gather(-1, band).reshape(b, h, tp, w)[:, :, :t] * scale  # (B, H, T, w)
    m_win = F.pad(key_mask, (r, r), value=False).unfold(1, w, 1)  # (B, T, w)
    scores = scores.masked_fill(~m_win[:, None], neg)
    # A query with no real key in reach gets weights 0 (it is a padded step; masked anyway).
    attn = scores.softmax(-1) * m_win[:, None].to(q.dtype)
    attn_blk = F.pad(attn, (0, 0, 0, tp - t)).reshape(b, h, n, c, w)
    weights = attn.new_zeros(b, h, n, c, span).scatter(-1, band, attn_blk)  # (B, H, n, c, span)
    return torch.matmul(weights, v_blk).reshape(b, h, tp, d)[:, :, :t]


class LocalMaskedMHA(nn.Module):
    """Multi-head local self-attention with convolutional q/k/v projections (stride = downsampling)."""

    def __init__(self, dim: int, heads: int, window: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.embed_dim={dim} must be divisible by model.num_heads={heads}")
        self.heads, self.window, self.stride = heads, window, stride
        # Depthwise 3-tap convolutions (strided when downsampling) then LayerNorm, as ActionFormer.
        self.q_conv = MaskedConv1d(dim, dim, 3, stride, groups=dim, bias=False)
        self.k_conv = MaskedConv1d(dim, dim, 3, stride, groups=dim, bias=False)
        self.v_conv = MaskedConv1d(dim, dim, 3, stride, groups=dim, bias=False)
        self.q_norm, self.k_norm, self.v_norm = ChannelNorm(dim), ChannelNorm(dim), ChannelNorm(dim)
        self.q, self.k, self.v = nn.Conv1d(dim, dim, 1), nn.Conv1d(dim, dim, 1), nn.Conv1d(dim, dim, 1)
        self.proj = nn.Conv1d(dim, dim, 1)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:  # x (B, C, T)
        q, m = self.q_conv(x, mask)
        k, _ = self.k_conv(x, mask)
        v, _ = self.v_conv(x, mask)
        q, k, v = self.q(self.q_norm(q)), self.k(self.k_norm(k)), self.v(self.v_norm(v))  # (B, C, T')
        b, c, t = q.shape
        split = lambda z: z.reshape(b, self.heads, c // self.heads, t).transpose(2, 3)
        out = local_attention(split(q), split(k), split(v), m, self.window)  # (B, H, T', d)
        out = out.transpose(2, 3).reshape(b, c, t)
        out = self.proj_drop(self.proj(out)) * m[:, None].to(x.dtype)
        return out, m


class TransformerBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then + MLP(LN(.)); downsampling when ``stride > 1``.

    With ``drop_path > 0`` and ``layer_scale_init`` set, both branches go through a
    :class:`LayerScaleDropPath` (ActionFormer's code: the scale exists exactly when drop path
    is on); otherwise they are plain (drop path only), at full strength from the start.
    """

    def __init__(self, dim: int, heads: int, window: int, stride: int = 1, dropout: float = 0.0,
                 drop_path: float = 0.0, mlp_ratio: int = 4, layer_scale_init: float | None = 1e-4) -> None:
        super().__init__()
        self.ln1, self.ln2 = ChannelNorm(dim), ChannelNorm(dim)
        self.attn = LocalMaskedMHA(dim, heads, window, stride, dropout)
        # The skip path downsamples by max-pooling so that the residual sum is well defined.
        self.skip = nn.MaxPool1d(3, stride, 1) if stride > 1 else nn.Identity()
        self.mlp = nn.Sequential(nn.Conv1d(dim, mlp_ratio * dim, 1), nn.GELU(), nn.Dropout(dropout),
                                 nn.Conv1d(mlp_ratio * dim, dim, 1), nn.Dropout(dropout))
        self.drop_path = drop_path
        self.scale_attn: LayerScaleDropPath | None = None
        self.scale_mlp: LayerScaleDropPath | None = None
        if drop_path > 0 and layer_scale_init is not None:
            self.scale_attn = LayerScaleDropPath(dim, drop_path, layer_scale_init)
            self.scale_mlp = LayerScaleDropPath(dim, drop_path, layer_scale_init)

    def _branch(self, x: Tensor, scale: LayerScaleDropPath | None) -> Tensor:
        return scale(x) if scale is not None else drop_path(x, self.drop_path, self.training)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out, m = self.attn(self.ln1(x), mask)
        mf = m[:, None].to(x.dtype)
        out = self.skip(x) * mf + self._branch(out, self.scale_attn)
        out = out + self._branch(self.mlp(self.ln2(out)) * mf, self.scale_mlp)
        return out, m


class Head(nn.Module):
    """Shared head trunk: (layers - 1) x [masked conv + LayerNorm + ReLU], then final convs."""

    def __init__(self, dim: int, head_dim: int, layers: int, kernel: int, outs: Sequence[int], with_ln: bool) -> None:
        super().__init__()
        self.trunk = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(layers - 1):
            self.trunk.append(MaskedConv1d(dim if i == 0 else head_dim, head_dim, kernel, bias=not with_ln))
            self.norms.append(ChannelNorm(head_dim) if with_ln else nn.Identity())
        cin = head_dim if layers > 1 else dim
        self.finals = nn.ModuleList(MaskedConv1d(cin, o, kernel) for o in outs)

    def forward(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        for conv, norm in zip(self.trunk, self.norms):
            x, _ = conv(x, mask)
            x = F.relu(norm(x))
        return [f(x, mask)[0] for f in self.finals]


# Norm layers whose weights (per-channel gains) are exempt from weight decay.
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def no_weight_decay_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters ActionFormer's public ``make_optimizer`` trains without weight decay.

    Biases, the weights of norm layers and the learnable scales (the per-level regression
    scales and the :class:`LayerScaleDropPath` scales); every other parameter (convolution
    and linear weights) is decayed. Applied to a whole method, the same rule covers modules
    a method adds around the detector (APL's ICD).
    """
    out: dict[int, nn.Parameter] = {}
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if (name == "bias" or (isinstance(mod, _NORMS) and name == "weight")
                    or (isinstance(mod, LayerScaleDropPath) and name == "scale")
                    or (isinstance(mod, ActionFormer) and name == "scales")):
                out[id(p)] = p
    return list(out.values())


@register("backbone", "actionformer")
class ActionFormer(nn.Module):
    """ActionFormer: conv projection, local-window transformer pyramid, neck, shared heads."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        embed_dim: int = 512,
        embed_layers: int = 2,
        stem_layers: int = 2,
        branch_layers: int = 5,
        scale_factor: int = 2,
        num_heads: int = 4,
        window_size: int | Sequence[int] = 19,
        neck: str = "identity",
        fpn_dim: int = 512,
        head_dim: int = 512,
        head_layers: int = 3,
        head_kernel: int = 3,
        with_ln: bool = True,
        use_abs_pe: bool = False,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        layer_scale_init: float | None = 1e-4,
        cls_prior_prob: float = 0.01,
        regression_ranges: Sequence[Sequence[float]] = DEFAULT_REGRESSION_RANGES,
        quality_heads: bool = False,
        max_seq_len: int | None = None,
    ) -> None:
        super().__init__()
        if neck not in ("identity", "fpn"):
            raise ValueError(f"model.neck={neck!r}; choose identity (ActionFormer's default) or fpn")
        if embed_layers < 1 or branch_layers < 0 or stem_layers < 0:
            raise ValueError("model.embed_layers must be >= 1 and stem_layers / branch_layers >= 0")
        self.num_levels = 1 + branch_layers
        windows = [int(window_size)] * self.num_levels if isinstance(window_size, int) else [int(w) for w in window_size]
        if len(windows) != self.num_levels:
            raise ValueError(f"model.window_size has {len(windows)} entries; give one int or one per level "
                             f"({self.num_levels} = 1 + branch_layers)")
        ranges = [tuple(float(v) for v in r) for r in regression_ranges]
        if len(ranges) < self.num_levels:
            raise ValueError(f"model.regression_ranges needs {self.num_levels} (lo, hi) pairs, got {len(ranges)}")
        if neck == "identity" and fpn_dim != embed_dim:
            raise ValueError(f"model.neck=identity keeps the encoder's width: set model.fpn_dim={embed_dim} "
                             "(= model.embed_dim) or model.neck=fpn")
        self.in_dim, self.num_classes = in_dim, num_classes
        self.scale_factor = int(scale_factor)
        self.regression_ranges = ranges[: self.num_levels]
        self.use_abs_pe = use_abs_pe
        self.embed_dim = embed_dim
        self.quality_heads = quality_heads
        self.windows = windows
        self.max_seq_len = None if max_seq_len is None else int(max_seq_len)

        self.embed = nn.ModuleList(
            MaskedConv1d(in_dim if i == 0 else embed_dim, embed_dim, 3, bias=not with_ln) for i in range(embed_layers)
        )
        self.embed_norm = nn.ModuleList(ChannelNorm(embed_dim) if with_ln else nn.Identity() for _ in range(embed_layers))
        self.stem = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, windows[0], 1, dropout, drop_path, layer_scale_init=layer_scale_init)
            for _ in range(stem_layers)
        )
        self.branch = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, windows[i + 1], self.scale_factor, dropout, drop_path,
                             layer_scale_init=layer_scale_init)
            for i in range(branch_layers)
        )
        self.neck_type = neck
        if neck == "fpn":
            # As the public FPN1D: 1x1 laterals and depthwise 3-tap output convolutions, without
            # bias when a LayerNorm follows.
            self.lateral = nn.ModuleList(MaskedConv1d(embed_dim, fpn_dim, 1, bias=not with_ln)
                                         for _ in range(self.num_levels))
            self.fpn_out = nn.ModuleList(MaskedConv1d(fpn_dim, fpn_dim, 3, groups=fpn_dim, bias=not with_ln)
                                         for _ in range(self.num_levels))
        self.neck_norm = nn.ModuleList(ChannelNorm(fpn_dim) if with_ln else nn.Identity() for _ in range(self.num_levels))
        self.cls_head = Head(fpn_dim, head_dim, head_layers, head_kernel, [num_classes], with_ln)
        reg_outs = [2, 1, 1] if quality_heads else [2]
        self.reg_head = Head(fpn_dim, head_dim, head_layers, head_kernel, reg_outs, with_ln)
        self.scales = nn.Parameter(torch.ones(self.num_levels))  # per-level regression scale
        for mod in self.modules():  # ActionFormer starts every convolution bias at 0 ...
            if isinstance(mod, nn.Conv1d) and mod.bias is not None:
                nn.init.zeros_(mod.bias)
        # ... except the classifier's: every class starts at probability cls_prior_prob (RetinaNet).
        nn.init.constant_(self.cls_head.finals[0].conv.bias, -math.log((1 - cls_prior_prob) / cls_prior_prob))

    @property
    def divisor(self) -> int:
        """Sequences are padded to a multiple of this so every level's steps align."""
        return self.scale_factor ** (self.num_levels - 1)

    @property
    def max_div_factor(self) -> int:
        """The public code's padding unit for inputs longer than ``max_seq_len``: per level,
        stride x (window // 2) x 2 (its chunked local attention needs it), the stride for a
        global level; the largest over levels."""
        out = 1
        for lvl, w in enumerate(self.windows):
            s = self.scale_factor**lvl
            out = max(out, s * (w // 2) * 2 if w > 1 else s)
        return out

    def padded_length(self, t: int) -> int:
        """Length the network runs a (B, t) input at.

        Padded steps are not zero inside the network: a LayerNorm turns a masked (zero) step
        into its bias, and the 3-tap convolutions and the max-pooled skip of the last real
        step of each level read one step beyond it. So that step's output depends on whether
        the level has a padded step at all (not on how many). The public code pads every input
        to ``max_seq_len`` (a longer one to a multiple of :attr:`max_div_factor`); with
        ``max_seq_len`` set, the input is padded so that every level has a padded step exactly
        when that length would give it one (then the outputs are the same), at most one more
        block of :attr:`divisor` steps instead of the whole public length. With
        ``max_seq_len=None``: the next multiple of :attr:`divisor` only.
        """
        d = self.divisor
        base = -(-t // d) * d
        if self.max_seq_len is None:
            return base
        m = self.max_div_factor
        public = self.max_seq_len if t <= self.max_seq_len else -(-t // m) * m
        # public > base: the public length is a multiple of d (max_seq_len is divisible by
        # max_div_factor, itself a multiple of d), so it gives every level a padded step.
        return base + d if public > base else base

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Any]:
        """features (B, T, D), mask (B, T) bool -> per-level outputs (lists over levels).

        ``cls_logits`` (B, T_l, C), ``offsets`` (B, T_l, 2) distances to start/end in units of
        the level's stride (non-negative), ``masks`` (B, T_l), ``features`` (B, T_l, F) neck
        outputs, ``points`` (P, 4) from :func:`make_points` (P = sum of T_l), and with
        ``quality_heads`` ``tiou_logits`` / ``tnd_logits`` (B, T_l).
        """
        if features.ndim != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"features must be (B, T, {self.in_dim}), got {tuple(features.shape)}; "
                             "check dataset.feature_dim")
        t = features.shape[1]
        pad = self.padded_length(t) - t
        mask = mask.bool()
        if pad:
            features = F.pad(features, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        # Contiguous (B, D, T): the first convolution (the widest input) runs faster on it
        # than on the transposed view, with the same result.
        x = (features.transpose(1, 2) * mask[:, None].to(features.dtype)).contiguous()  # (B, D, T)
        m = mask
        for conv, norm in zip(self.embed, self.embed_norm):
            x, m = conv(x, m)
            x = F.relu(norm(x))
        if self.use_abs_pe:
            # Rescaled by 1 / sqrt(C) as the public backbone does, so the encoding does not
            # swamp the LayerNorm-ed embedding (entries of size ~1 per channel).
            pe = (sinusoid_encoding(x.shape[-1], self.embed_dim, x.device) / math.sqrt(self.embed_dim)).float()
            x = x + pe.to(x.dtype)[None] * m[:, None].to(x.dtype)
        for blk in self.stem:
            x, m = blk(x, m)
        feats, masks = [x], [m]
        for blk in self.branch:
            x, m = blk(x, m)
            feats.append(x)
            masks.append(m)
        if self.neck_type == "fpn":
            lat = [conv(f, mk)[0] for conv, f, mk in zip(self.lateral, feats, masks)]
            for i in range(len(lat) - 1, 0, -1):  # top-down pathway; the output conv masks the sum
                lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-1], mode="nearest")
            feats = [conv(f, mk)[0] for conv, f, mk in zip(self.fpn_out, lat, masks)]
        # Not re-masked after the LayerNorm (the public necks do not): padded steps hold the
        # norm's bias, which the heads' first convolution reads at the last real step.
        feats = [norm(f) for norm, f in zip(self.neck_norm, feats)]

        out: dict[str, Any] = {"cls_logits": [], "offsets": [], "masks": masks, "features": []}
        if self.quality_heads:
            out["tiou_logits"], out["tnd_logits"] = [], []
        for lvl, (f, mk) in enumerate(zip(feats, masks)):
            (cls,) = self.cls_head(f, mk)
            reg = self.reg_head(f, mk)
            out["cls_logits"].append(cls.transpose(1, 2))  # (B, T_l, C)
            out["offsets"].append(F.relu(reg[0] * self.scales[lvl]).transpose(1, 2))  # (B, T_l, 2)
            out["features"].append((f * mk[:, None].to(f.dtype)).transpose(1, 2))  # (B, T_l, F), zeros where padded
            if self.quality_heads:
                out["tiou_logits"].append(reg[1][:, 0])  # (B, T_l)
                out["tnd_logits"].append(reg[2][:, 0])
        out["points"] = make_points([mk.shape[1] for mk in masks], self.scale_factor, self.regression_ranges,
                                    features.device)
        out["input_length"] = t
        return out
