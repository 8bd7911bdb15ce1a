"""Parity with ActionFormer's public code (happyharrycn/actionformer_release), optional.

Skipped unless ``ACTIONFORMER_OFFICIAL_DIR`` points at a checkout of that repository. Its
network modules are imported in pure PyTorch (``libs.utils`` is replaced by a stub while
importing them; only the NMS test loads the compiled extension), built from its own
``configs/thumos_i3d.yaml`` / ``configs/anet_i3d.yaml`` (widths reduced so the test is quick)
next to this library's model built from ``conf/`` the way ``tools/run.py`` composes it. The
library's (randomised) weights are copied into the public modules by name, and the test
compares, in float64:

- the network outputs (classification logits and regression offsets of every level) on the
  real steps, for lengths that the public code pads differently (shorter than max_seq_len,
  a multiple of the pyramid unit, exactly max_seq_len, longer);
- the label assignment and the losses (``label_points``, ``losses``);
- the candidates before NMS (``inference_single_video``);
- the weight-decay split (``make_optimizer``);
- Soft-NMS with voting against the compiled ``nms_1d_cpu`` (``libs/utils/nms.py``), when it
  has been built in place (``python setup.py build_ext --inplace`` in ``libs/utils``).

    ACTIONFORMER_OFFICIAL_DIR=/path/to/actionformer_release python -m pytest tests/test_actionformer_official.py
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from taltoolkit.methods.actionformer import ActionFormerMethod
from taltoolkit.models.actionformer import ActionFormer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from official_adapters import copy_into_official  # noqa: E402  # the library -> public name table

OFFICIAL = os.environ.get("ACTIONFORMER_OFFICIAL_DIR")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="set ACTIONFORMER_OFFICIAL_DIR to a checkout of "
                                                     "happyharrycn/actionformer_release")

IN_DIM, NUM_CLASSES, WIDTH = 24, 5, 32  # small widths: the test runs on a CPU in seconds


@pytest.fixture(scope="module")
def official() -> types.SimpleNamespace:
    """The public ``libs`` package, loaded without running its ``__init__`` files."""
    root = Path(OFFICIAL or "")
    if not (root / "libs" / "modeling" / "blocks.py").is_file():
        pytest.fail(f"ACTIONFORMER_OFFICIAL_DIR={root} is not a checkout of actionformer_release")
    before = {k: v for k, v in sys.modules.items() if k == "libs" or k.startswith("libs.")}
    for k in before:
        del sys.modules[k]

    def package(name: str, folder: Path) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__path__ = [str(folder)]  # submodules are found here; the package __init__ never runs
        sys.modules[name] = mod
        return mod

    try:
        package("libs", root / "libs")
        modeling = package("libs.modeling", root / "libs" / "modeling")
        package("libs.core", root / "libs" / "core")
        utils = package("libs.utils", root / "libs" / "utils")
        utils.batched_nms = None  # type: ignore[attr-defined]  # NMS (C++ extension) is not under test
        post = types.ModuleType("libs.utils.postprocessing")
        post.postprocess_results = None  # type: ignore[attr-defined]
        sys.modules["libs.utils.postprocessing"] = post
        blocks = importlib.import_module("libs.modeling.blocks")
        for name in ("MaskedConv1D", "Scale", "AffineDropPath", "LayerNorm"):  # what train_utils imports
            setattr(modeling, name, getattr(blocks, name))
        for sub in ("models", "backbones", "necks", "loc_generators", "meta_archs"):
            importlib.import_module(f"libs.modeling.{sub}")
        ns = types.SimpleNamespace(
            root=root,
            models=sys.modules["libs.modeling.models"],
            config=importlib.import_module("libs.core.config"),
            train_utils=importlib.import_module("libs.utils.train_utils"),
        )
        yield ns
    finally:
        for k in [k for k in sys.modules if k == "libs" or k.startswith("libs.")]:
            del sys.modules[k]
        sys.modules.update(before)


def _models(official: types.SimpleNamespace, compose: Any, dataset: str, config: str, max_seq_len: int,
            neck: str = "identity") -> tuple[ActionFormer, torch.nn.Module, ActionFormerMethod]:
    """The library's model + method from conf/ and the public PtTransformer from its config file."""
    cfg = compose(["method=actionformer", f"dataset={dataset}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    model_cfg.pop("_target_")
    method_cfg.pop("_target_")
    model_cfg.update(embed_dim=WIDTH, fpn_dim=WIDTH, head_dim=WIDTH, max_seq_len=max_seq_len, neck=neck)
    torch.manual_seed(0)
    lib = ActionFormer(IN_DIM, NUM_CLASSES, **model_cfg)
    method = ActionFormerMethod(lib, **{**method_cfg, "ema_decay": 0.0})

    ocfg = official.config.load_config(str(official.root / "configs" / config))
    ocfg["dataset"].update(input_dim=IN_DIM, num_classes=NUM_CLASSES, max_seq_len=max_seq_len)
    ocfg["model"].update(embd_dim=WIDTH, fpn_dim=WIDTH, head_dim=WIDTH, fpn_type=neck)
    ocfg = official.config._update_config(ocfg)
    off = official.models.make_meta_arch(ocfg["model_name"], **ocfg["model"])

    with torch.no_grad():  # every parameter away from its initial value, so each one matters
        for p in lib.parameters():
            p.add_(0.2 * torch.randn_like(p))
    lib, off = lib.double().eval(), off.double().eval()
    method.double()
    copy_into_official(lib, off)
    return lib, off, method


def _official_outputs(off: torch.nn.Module, x: torch.Tensor, lengths: list[int], padded: int
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """x (B, T, D) real steps first -> public per-level (B, T_l, C) logits, (B, T_l, 2) offsets,
    (B, T_l) masks and (T_l, 4) points, the input zero-padded to ``padded`` as its preprocessing."""
    b, t, d = x.shape
    xo = torch.zeros(b, d, padded, dtype=x.dtype)
    xo[:, :, :t] = x.transpose(1, 2)
    mask = (torch.arange(padded)[None] < torch.tensor(lengths)[:, None])[:, None]  # (B, 1, T)
    feats, masks = off.backbone(xo, mask)
    fpn_feats, fpn_masks = off.neck(feats, masks)
    points = off.point_generator(fpn_feats)
    cls = [c.permute(0, 2, 1) for c in off.cls_head(fpn_feats, fpn_masks)]
    reg = [r.permute(0, 2, 1) for r in off.reg_head(fpn_feats, fpn_masks)]
    return cls, reg, [m[:, 0] for m in fpn_masks], points


def _public_length(off: torch.nn.Module, t: int) -> int:
    """The length the public preprocessing pads a single test video to."""
    if t <= off.max_seq_len:
        return off.max_seq_len
    return -(-t // off.max_div_factor) * off.max_div_factor


CONFIGS = [("thumos14", "thumos_i3d.yaml", 576), ("activitynet13", "anet_i3d.yaml", 192)]


@pytest.mark.parametrize("neck", ["identity", "fpn"])
@pytest.mark.parametrize("dataset,config,max_seq_len", CONFIGS)
def test_network_outputs_match_the_public_code(official, compose, dataset, config, max_seq_len, neck):
    lib, off, _ = _models(official, compose, dataset, config, max_seq_len, neck)
    unit = max_seq_len // 4
    # shorter; a multiple of the pyramid's 32 below max_seq_len (the public code pads it, so the
    # last step of every level reads a padded one); exactly max_seq_len; longer (ActivityNet's
    # absolute position encoding is only defined up to max_seq_len: not tried there)
    lengths = [unit + 5, max_seq_len - 32, max_seq_len] + ([max_seq_len + unit + 3] if dataset == "thumos14" else [])
    g = torch.Generator().manual_seed(1)
    for t in lengths:
        x = torch.randn(1, t, IN_DIM, generator=g, dtype=torch.float64)
        with torch.no_grad():
            out = lib(x, torch.ones(1, t, dtype=torch.bool))
            cls, reg, masks, _ = _official_outputs(off, x, [t], _public_length(off, t))
        for lvl in range(lib.num_levels):
            n = int(masks[lvl].sum())
            assert int(out["masks"][lvl].sum()) == n
            torch.testing.assert_close(out["cls_logits"][lvl][:, :n], cls[lvl][:, :n], rtol=1e-9, atol=1e-9,
                                       msg=lambda m: f"cls level {lvl}, T={t}: {m}")
            torch.testing.assert_close(out["offsets"][lvl][:, :n], reg[lvl][:, :n], rtol=1e-9, atol=1e-9,
                                       msg=lambda m: f"offsets level {lvl}, T={t}: {m}")


@pytest.mark.parametrize("dataset,config,max_seq_len", CONFIGS)
def test_targets_and_losses_match_the_public_code(official, compose, dataset, config, max_seq_len):
    lib, off, method = _models(official, compose, dataset, config, max_seq_len)
    g = torch.Generator().manual_seed(2)
    lengths = [max_seq_len - 37, max_seq_len]  # training batches are padded to max_seq_len
    x = torch.randn(2, max_seq_len, IN_DIM, generator=g, dtype=torch.float64)
    x[0, lengths[0]:] = 0
    segs_off, labels = [], []
    for t in lengths:  # public grid: step k at k; several instances, some nested or equal in length
        start = torch.rand(6, generator=g, dtype=torch.float64) * (t - 40)
        seg = torch.stack([start, start + 1 + torch.rand(6, generator=g, dtype=torch.float64) * 60], 1)
        seg[5] = seg[4] + 3.0  # same length as instance 4: shares points
        # float32 like both pipelines, on a 1/64 grid so that shifting by 0.5 is exact
        seg = (seg * 64).round().float() / 64
        segs_off.append(seg)
        labels.append(torch.randint(0, NUM_CLASSES, (6,), generator=g))
    mask = torch.arange(max_seq_len)[None] < torch.tensor(lengths)[:, None]
    batch = {"features": x, "mask": mask, "labels": labels,
             "segments": [s + 0.5 for s in segs_off]}  # the library's grid puts step k's centre at k + 0.5
    with torch.no_grad():
        got = method.training_step(batch)
        cls, reg, masks, points = _official_outputs(off, x, lengths, max_seq_len)
        gt_cls, gt_off = off.label_points(points, segs_off, labels)
        want = off.losses(masks, cls, reg, gt_cls, gt_off)
        out = lib(x, mask)
        cls_t, reg_t, pos, _ = method.targets(out, batch)
    assert torch.equal(cls_t.to(gt_cls[0].dtype), torch.stack(gt_cls))
    torch.testing.assert_close(reg_t[pos], torch.stack(gt_off)[pos].to(reg_t.dtype), rtol=0, atol=0)
    assert int(pos.sum()) > 20
    # the public focal and DIoU losses cast their inputs to float32, hence float32 precision here
    for k_lib, k_off in (("cls_loss", "cls_loss"), ("reg_loss", "reg_loss"), ("loss", "final_loss")):
        torch.testing.assert_close(got[k_lib].double(), want[k_off].double(), rtol=1e-6, atol=0)
    assert float(method.loss_norm) == pytest.approx(off.loss_normalizer, rel=1e-12)


def test_candidates_before_nms_match_the_public_code(official, compose):
    """Per level: score threshold, top-k (the public THUMOS14 2000; level 0 here has more
    candidates than that), decoding. The library's post-processor keeps them all
    (postprocess.pre_nms_topk is null for ActionFormer) and applies the duration filter."""
    lib, off, method = _models(official, compose, "thumos14", "thumos_i3d.yaml", 576)
    with torch.no_grad():  # scores around 0.5 instead of the 0.01 prior: most pass pre_nms_thresh;
        lib.cls_head.finals[0].conv.bias.zero_()  # offsets mostly positive: most pass duration_thresh
        lib.reg_head.finals[0].conv.bias.fill_(1.0)
    copy_into_official(lib, off)
    t = 500
    x = torch.randn(1, t, IN_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        out = lib(x, torch.ones(1, t, dtype=torch.bool))
        (res,) = method.decode(out, method.point_scores(out))
        cls, reg, masks, points = _official_outputs(off, x, [t], 576)
        want = off.inference_single_video(points, [m[0] for m in masks], [c[0] for c in cls], [r[0] for r in reg])
    above = int((torch.sigmoid(cls[0][0]) * masks[0][0, :, None] > off.test_pre_nms_thresh).sum())
    assert above > off.test_pre_nms_topk  # level 0 is cut to its top 2000
    segs = res["segments"] - 0.5  # back to the public grid
    keep = (segs[:, 1] - segs[:, 0]) > off.test_duration_thresh  # the post-processor's duration filter
    got = sorted(zip(res["scores"][keep].tolist(), res["labels"][keep].tolist(), segs[keep].tolist()))
    exp = sorted(zip(want["scores"].tolist(), want["labels"].tolist(), want["segments"].tolist()))
    assert len(got) == len(exp) and len(got) > off.test_pre_nms_topk
    for (s1, l1, g1), (s2, l2, g2) in zip(got, exp):
        assert l1 == l2 and s1 == pytest.approx(s2, rel=1e-9) and g1 == pytest.approx(g2, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("dataset,config,max_seq_len", CONFIGS)
def test_weight_decay_split_matches_make_optimizer(official, compose, dataset, config, max_seq_len):
    lib, off, method = _models(official, compose, dataset, config, max_seq_len)
    mapping = copy_into_official(lib, off)
    opt = official.train_utils.make_optimizer(off, {"type": "AdamW", "learning_rate": 1e-4, "weight_decay": 0.05})
    names = {id(p): n for n, p in off.named_parameters()}
    decay_off = {mapping[names[id(p)]] for p in opt.param_groups[0]["params"]}
    no_decay_off = {mapping[names[id(p)]] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    lib_names = {id(p): n for n, p in lib.named_parameters()}
    no_decay_lib = {lib_names[id(p)] for p in method.no_weight_decay_parameters() if id(p) in lib_names}
    assert no_decay_lib == no_decay_off
    assert set(lib_names.values()) - no_decay_lib == decay_off
    assert any(n.endswith("scale_attn.scale") for n in no_decay_lib) and "scales" in no_decay_lib


def _compiled_nms() -> Any:
    """The public ``libs/utils/nms.py`` with its compiled ``nms_1d_cpu`` (built in place by
    ``python setup.py build_ext --inplace`` in ``libs/utils``); skips when it is not built."""
    folder = Path(OFFICIAL or "") / "libs" / "utils"
    sys.path.insert(0, str(folder))
    try:
        try:
            importlib.import_module("nms_1d_cpu")
        except ImportError:
            pytest.skip(f"nms_1d_cpu is not built in {folder} (python setup.py build_ext --inplace)")
        spec = importlib.util.spec_from_file_location("_official_nms", folder / "nms.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod
    finally:
        sys.path.remove(str(folder))


@pytest.mark.parametrize("multiclass,voting", [(True, 0.7), (False, 0.9)])  # THUMOS14 / ActivityNet test_cfg
def test_soft_nms_matches_the_compiled_extension(multiclass, voting):
    """The library's Soft-NMS + voting + top-k (segment_postprocess) keeps the segments, scores
    and labels that the public C++ ``batched_nms`` keeps, on ActionFormer-like candidates."""
    from taltoolkit.postprocess.proposals import segment_postprocess

    nms_mod = _compiled_nms()
    g = torch.Generator().manual_seed(0)
    n, classes = 3000, 6
    start = torch.rand(n, generator=g, dtype=torch.float64) * 300
    segs = torch.stack([start, start + 0.5 + torch.rand(n, generator=g, dtype=torch.float64) * 30], 1).float()
    scores = torch.rand(n, generator=g).pow(3)  # many low, few high scores, as a trained detector
    labels = torch.randint(0, classes, (n,), generator=g)
    exp_segs, exp_scores, exp_labels = nms_mod.batched_nms(
        segs.clone(), scores.clone(), labels.clone(), 0.1, 0.001, 200, use_soft_nms=True,
        multiclass=multiclass, sigma=0.5, voting_thresh=voting)
    det = segment_postprocess(segs, scores, labels, step_s=None, pre_nms_thresh=0.0, pre_nms_topk=n,
                              duration_thresh=0.0, nms_method="soft", iou_threshold=0.1, sigma=0.5,
                              min_score=0.001, max_seg_num=200, multiclass=multiclass, voting_thresh=voting)
    assert len(det) == len(exp_scores) == 200
    assert np.array_equal(det.labels, exp_labels.numpy())
    np.testing.assert_allclose(det.scores, exp_scores.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(det.segments, exp_segs.numpy(), rtol=1e-5, atol=1e-4)
