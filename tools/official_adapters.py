"""Drive the authors' public codes next to the library, for ``tools/bench.py sidebyside``.

The public codes are *not* part of taltoolkit and are never copied into it: each adapter
imports them from a checkout given on the command line (``--official PATH``) or in the
environment variable the parity tests read (``CASE_OFFICIAL_DIR``, ``ACMNET_OFFICIAL_DIR``,
``ACTIONFORMER_OFFICIAL_DIR``), builds the public network with the library network's
weights, and exposes two calls that the benchmark times against the library's:

- ``train(batches)``: the public code's own training loop (its forward, its loss, backward,
  its optimizer step) over the given batches, fed from memory instead of its data loader;
- ``evaluate(items)``: the public code's own test function over the given test videos
  (its forward, proposals, NMS, results JSON and its ActivityNet-style mAP).

What the adapters change around the public code, all of it for running on a CPU with
current packages (the same as the parity tests and the stand-alone runners):

- ``np.int`` / ``np.float`` / ``np.bool`` are set back (removed from NumPy, the codes use
  them); ``torch.cuda.synchronize`` and ``.cuda()`` are no-ops while an adapter runs, and
  ``Tensor.cpu()`` copies as it does from a GPU (CASE's inference writes into the array
  that ``.cpu().numpy()`` returns and reads the tensor again: on a CPU tensor without the
  copy its class scores would be binarised in place, changing its detections);
- ``wandb`` (ACM-Net) is an empty module, never initialised (as with its ``--without_wandb``);
- packages the environment lacks (pandas, h5py for the public evaluators) are taken from an
  extra folder given with ``--official-site`` or ``TALTOOLKIT_OFFICIAL_SITE``, *appended*
  to ``sys.path`` so that the environment's NumPy and torch stay first;
- the public evaluators' per-class AP runs on joblib's threading backend (worker
  processes would not see the NumPy aliases);
- ActionFormer's ``libs/utils`` is imported as the code does, with its compiled
  ``nms_1d_cpu`` extension built in place.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import types
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import numpy as np
import torch

ENV_VARS = {"case": "CASE_OFFICIAL_DIR", "acmnet": "ACMNET_OFFICIAL_DIR", "actionformer": "ACTIONFORMER_OFFICIAL_DIR"}
SITE_ENV = "TALTOOLKIT_OFFICIAL_SITE"
# A file each checkout must have: a wrong path fails with a clear message, not an ImportError.
_MARKERS = {"case": "models/case_model.py", "acmnet": "model/ACMNet.py", "actionformer": "libs/modeling/blocks.py"}
# Top-level module names of the public codes: cleared before and after importing one, so that
# two checkouts (CASE and ACM-Net both have ``utils``, ``dataset``, ``config``) never mix.
_TOP_LEVEL = ("utils", "models", "model", "dataset", "config", "eval", "main_case", "inference_case", "run_eval",
              "main_thu", "libs", "nms_1d_cpu")


def official_dir(method: str, given: str | None = None) -> Path:
    """The checkout for ``method``: ``given`` or the method's environment variable."""
    path = given or os.environ.get(ENV_VARS[method])
    if not path:
        raise SystemExit(f"give --official PATH or set {ENV_VARS[method]} to a checkout of the public {method} code")
    root = Path(path).expanduser().resolve()
    if not (root / _MARKERS[method]).is_file():
        raise SystemExit(f"{root} is not a checkout of the public {method} code ({_MARKERS[method]} missing)")
    return root


@contextlib.contextmanager
def official_environment(root: Path, extra_paths: Sequence[Path] = (), site: str | None = None) -> Iterator[None]:
    """sys.path, NumPy aliases and CUDA no-ops for the public code; undone on exit."""
    saved_path = list(sys.path)
    saved_modules = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _TOP_LEVEL}
    for k in saved_modules:
        del sys.modules[k]
    patches = [(np, name, typ) for name, typ in (("int", int), ("float", float), ("bool", bool))
               if not hasattr(np, name)]
    saved_attrs = [(torch.cuda, "synchronize", torch.cuda.synchronize), (torch.Tensor, "cuda", torch.Tensor.cuda),
                   (torch.nn.Module, "cuda", torch.nn.Module.cuda), (torch.Tensor, "cpu", torch.Tensor.cpu)]
    had_wandb = "wandb" in sys.modules
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        torch.cuda.synchronize = lambda *a, **k: None
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        # On a GPU, .cpu() copies; the codes rely on it (CASE's inference binarises
        # score_supp[0].cpu().numpy() in place and then reads score_supp again, which on a CPU
        # tensor would alias and change its proposals' scores and classes).
        torch.Tensor.cpu = lambda self, *a, **k: self.clone()
        sys.modules.setdefault("wandb", types.ModuleType("wandb"))
        # tools/ holds eval.py and run.py: a plain module there would shadow the public codes'
        # namespace packages of the same name (CASE's eval/), so it leaves sys.path meanwhile.
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        for p in [root, *extra_paths][::-1]:
            sys.path.insert(0, str(p))
        site = site or os.environ.get(SITE_ENV)
        if site:
            for folder in site.split(os.pathsep):
                sys.path.append(folder)
        yield
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.split(".")[0] in _TOP_LEVEL]:
            del sys.modules[k]
        sys.modules.update(saved_modules)
        for obj, name, _ in patches:
            delattr(obj, name)
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        if not had_wandb:
            sys.modules.pop("wandb", None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The public loops' prints and progress bars, silenced (they would interleave with the table)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def _threading_joblib():  # noqa: ANN202
    from joblib import parallel_backend

    return parallel_backend("threading")


def _keep_labels(prediction_file: str, labels: set) -> str:
    """A copy of a results JSON without the predictions whose label is not in ``labels``."""
    with open(prediction_file) as f:
        pred = json.load(f)
    for vid, props in pred["results"].items():
        pred["results"][vid] = [q for q in props if q["label"] in labels]
    kept = Path(prediction_file).with_suffix(".kept.json")
    kept.write_text(json.dumps(pred))
    return str(kept)


def write_official_gt(ground_truth: dict, classes: Sequence[str], path: Path, test_subset: str) -> Path:
    """The library's ground truth as the public evaluators read it: the evaluated videos in
    subset ``"test"``, each annotation with its class index as ``label_id`` (ActionFormer)."""
    db = ground_truth.get("database", ground_truth)
    out = {"version": "bench", "classes": list(classes), "database": {}}
    for vid, entry in db.items():
        entry = dict(entry)
        if entry.get("subset") == test_subset:
            entry["subset"] = "test"
        entry["annotations"] = [dict(a, label_id=list(classes).index(a["label"])) for a in entry.get("annotations", [])]
        out["database"][vid] = entry
    path.write_text(json.dumps(out))
    return path


# ----------------------------------------------------------------------------- CASE


class OfficialCASE:
    """The public CASE code (main_case.Trainer's training loop, inference_case.inference) with
    the weights of a library :class:`~taltoolkit.methods.case.CASE` on a TwoStreamWTAL."""

    def __init__(self, root: Path, method: Any, gt_path: Path, workdir: Path, num_segments: int = 750,
                 lr: float = 1e-4, site: str | None = None) -> None:
        self.root, self.site = root, site
        model = method.model
        d = sum(br.cls_encoder.in_channels for br in model.branches)
        self.config = SimpleNamespace(
            len_feature=d, num_classes=model.branches[0].classifier.out_channels,
            num_clusters=model.branches[0].cluster_head.prototypes.out_features, num_segments=num_segments,
            lr=lr, q_val=method.gce_q, std=method.sigma, temp=method.rho, w_clu=method.lambda_s, w_cls=method.lambda_c,
            num_epochs=1, detection_inf_step=10 ** 9, class_thresh=0.25, act_thresh=np.arange(0.1, 1.0, 0.1),
            scale=24, feature_fps=25, gamma=0.15, soft_nms=True, nms_alpha=0.35, nms_thresh=0.4,
            gt_path=str(gt_path), model_path=str(workdir), verbose=False, batch_size=16)
        with self.environment():
            main_case = importlib.import_module("main_case")
            loss = importlib.import_module("utils.loss")
            self.inference_module = importlib.import_module("inference_case")
            net = main_case.WTALModel(self.config)
            for s, name in enumerate(("rgb", "flow")):  # library stream 0 is the first (RGB) half
                br = model.branches[s]
                pairs = [(getattr(net, f"cas_module_{name}")[0], br.cls_encoder),
                         (getattr(net, f"cas_module_{name}")[2], br.classifier),
                         (getattr(net, f"base_module_{name}")[0], br.att_encoder),
                         (getattr(net, f"att_module_{name}"), br.attention),
                         (getattr(net, f"clu_head_{name}").prototypes, br.cluster_head.prototypes)]
                for dst, src in pairs:
                    dst.load_state_dict(src.state_dict())
            trainer = main_case.Trainer.__new__(main_case.Trainer)  # its __init__ would read files
            trainer.config, trainer.net = self.config, net
            trainer.optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0005)
            trainer.criterion = loss.CrossEntropyLoss()
            trainer.Lgce = loss.GeneralizedCE(q=self.config.q_val)
            trainer.cls_gt = method.cluster_fb.detach().clone().float()
            trainer.best_mAP, trainer.step, trainer.total_loss_per_epoch = -1, 0, 0
        self.trainer = trainer

    def environment(self):  # noqa: ANN201
        return official_environment(self.root, site=self.site)

    def train(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """main_case.Trainer.train for one pass over ``batches`` of (features (B, T, D), labels (B, G))."""
        self.trainer.train_loader = [(x, y, None, None, None) for x, y in batches]
        self.trainer.config.num_epochs = 1
        with self.environment():
            self.trainer.train()

    def evaluate(self, items: Sequence[tuple]) -> list[float]:
        """inference_case.inference over test ``items`` (data (1, T, D), label (1, G), None, [name],
        tensor([num_steps])): forward, proposals, soft NMS, results JSON, mAP at 0.1:0.7."""
        mod = self.inference_module
        evaluate = mod.evaluate
        with open(self.config.gt_path) as f:
            with_gt = {a["label"] for v in json.load(f)["database"].values() if v.get("subset") == "test"
                       for a in v.get("annotations", [])}

        def evaluate_known_classes(gtfile, predfile, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            # The public evaluator raises a KeyError on a class without test ground truth (only
            # small test sets lack one); its mAP is over the classes with ground truth either way.
            return evaluate(gtfile, _keep_labels(predfile, with_gt), *a, **k)

        with self.environment(), _threading_joblib():
            mod.evaluate = evaluate_known_classes
            try:
                _, _, _, ap = mod.inference(self.trainer.net, self.config, items, cls_gt=self.trainer.cls_gt,
                                            model_file=None)
            finally:
                mod.evaluate = evaluate
        self.trainer.net.train()
        return [float(a) for a in ap[:7]]


# ----------------------------------------------------------------------------- ACM-Net


class OfficialACMNet:
    """ACM-Net's public code (main_thu.train / main_thu.test, model/ACMNet.py, ACMLoss) with the
    weights of the library's ACM-Net baseline (``method=rmgcl memory_branch=none``), THUMOS14 settings."""

    def __init__(self, root: Path, method: Any, classes: Sequence[str], gt_path: Path, workdir: Path,
                 num_segments: int = 750, step_s: float = 0.64, site: str | None = None) -> None:
        self.root, self.site = root, site
        m = method.model
        with self.environment():
            hp = importlib.import_module("config.model_config")._DATASET_HYPER_PARAMS["THUMOS"]
            self.main = importlib.import_module("main_thu")
            acm = importlib.import_module("model.ACMNet")
            net_utils = importlib.import_module("utils.net_utils")
            args = Namespace(**hp)
            args.dataset, args.class_name_lst, args.action_cls_num = "THUMOS", list(classes), len(classes)
            args.feature_dim = m.embedding.in_channels
            args.test_gt_file_path, args.tiou_thresholds = str(gt_path), np.round(np.arange(1, 8) / 10, 1)
            args.sample_segments_num, args.frames_per_sec, args.segment_frames_num = num_segments, 25, step_s * 25
            args.device, args.test, args.save_dir = torch.device("cpu"), False, str(workdir)
            self.args = args
            net = acm.ACMNet(args)
            with torch.no_grad():
                for theirs, ours in ((net.feature_embedding[0], m.embedding), (net.att_branch, m.attention),
                                     (net.snippet_cls, m.classifier)):
                    theirs.weight.copy_(ours.weight)
                    theirs.bias.copy_(ours.bias)
            self.net = net
            self.optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999),
                                              weight_decay=args.weight_decay)
            self.criterion = net_utils.ACMLoss(lamb1=args.loss_lamb_1, lamb2=args.loss_lamb_2, lamb3=args.loss_lamb_3)

    def environment(self):  # noqa: ANN201
        return official_environment(self.root, site=self.site)

    def train(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """main_thu.train over ``batches`` of (features (B, T, D), labels (B, C))."""
        with self.environment(), _quiet():
            self.main.train(self.args, self.net, list(batches), self.criterion, self.optimizer)

    def evaluate(self, items: Sequence[tuple]) -> list[float]:
        """main_thu.test over test ``items`` ([name], data (1, T, D), label (1, C), tensor([num_steps]),
        tensor([duration])): forward, proposals, NMS, results JSON, ANETDetection at 0.1:0.7."""
        captured: dict[str, Any] = {}
        with self.environment(), _threading_joblib(), torch.no_grad(), _quiet():
            base = self.main.ANETDetection

            class Keep(base):  # type: ignore[misc, valid-type]
                """The public evaluator, minus predictions of classes without test ground truth
                (it raises a KeyError on them; only small test sets lack a class): the mAP is
                over the classes with ground truth either way."""

                def _import_prediction(inner, prediction_file_name):  # noqa: ANN001, ANN202, N805
                    return super()._import_prediction(_keep_labels(prediction_file_name, set(inner.activity_index)))

                def evaluate(inner):  # noqa: ANN001, ANN202, N805
                    out = super().evaluate()
                    captured["mAP"] = [float(v) for v in inner.mAP]
                    return out

            self.main.ANETDetection = Keep
            try:
                self.main.test(self.args, self.net, list(items), self.criterion)
            finally:
                self.main.ANETDetection = base
        self.net.train()
        return captured.get("mAP", [])


# ----------------------------------------------------------------------------- ActionFormer


class OfficialActionFormer:
    """ActionFormer's public code (train_one_epoch / valid_one_epoch, its PtTransformer from
    configs/thumos_i3d.yaml, ModelEma, its compiled NMS) with the library network's weights."""

    def __init__(self, root: Path, method: Any, model_cfg: dict, gt_path: Path, num_classes: int,
                 input_dim: int, epochs: int = 1, site: str | None = None) -> None:
        self.root, self.site = root, site
        with self.environment():
            core = importlib.import_module("libs.core")
            modeling = importlib.import_module("libs.modeling")
            utils = importlib.import_module("libs.utils")
            self.nms = importlib.import_module("libs.utils.nms")
            cfg = core.load_config(str(root / "configs" / "thumos_i3d.yaml"))
            cfg["devices"] = ["cpu"]
            m = cfg["model"]
            m.update(input_dim=input_dim, num_classes=num_classes, max_seq_len=model_cfg["max_seq_len"],
                     n_mha_win_size=model_cfg.get("window_size", m["n_mha_win_size"]),
                     embd_dim=model_cfg["embed_dim"], fpn_dim=model_cfg["fpn_dim"], head_dim=model_cfg["head_dim"])
            m["train_cfg"]["head_empty_cls"] = []
            cfg["opt"].update(epochs=epochs, warmup_epochs=0)
            self.cfg = cfg
            net = modeling.make_meta_arch(cfg["model_name"], **m)
            copy_into_official(method.model, net)
            self.net = torch.nn.DataParallel(net)  # no CUDA: a pass-through wrapper, as the code runs it
            self.optimizer = utils.make_optimizer(self.net, cfg["opt"])
            self.scheduler = None
            self.ema = utils.ModelEma(self.net)
            self.utils = utils
            self.evaluator = utils.ANETdetection(str(gt_path), "test", tiou_thresholds=np.linspace(0.3, 0.7, 5),
                                                 num_workers=1)

    def environment(self):  # noqa: ANN201
        return official_environment(self.root, extra_paths=[self.root / "libs" / "utils"], site=self.site)

    def train(self, video_lists: Sequence[list[dict]]) -> None:
        """libs.utils.train_one_epoch over ``video_lists`` (its batches: lists of video dicts)."""
        with self.environment(), _quiet():
            if self.scheduler is None:
                self.scheduler = self.utils.make_scheduler(self.optimizer, self.cfg["opt"], len(video_lists))
            self.utils.train_one_epoch(list(video_lists), self.net, self.optimizer, self.scheduler, 0,
                                       model_ema=self.ema, clip_grad_l2norm=self.cfg["train_cfg"]["clip_grad_l2norm"],
                                       tb_writer=None, print_freq=10 ** 9)

    def evaluate(self, video_lists: Sequence[list[dict]]) -> float:
        """libs.utils.valid_one_epoch of the EMA network: forward, decoding, its NMS, its mAP."""
        with self.environment(), _quiet():
            return float(self.utils.valid_one_epoch(list(video_lists), self.ema.module, -1, evaluator=self.evaluator,
                                                    print_freq=10 ** 9))

    def batched_nms(self, segs: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, **kw: Any) -> Any:
        """libs/utils/nms.py batched_nms (the compiled nms_1d_cpu kernels)."""
        with self.environment():
            return self.nms.batched_nms(segs, scores, labels, **kw)


# Library parameter name -> public parameter name (the public PtTransformer's attributes).
_RENAMES = [
    (r"^embed\.(\d+)\.conv\.", r"backbone.embd.\1.conv."),
    (r"^embed_norm\.", "backbone.embd_norm."),
    (r"^(stem|branch)\.", r"backbone.\1."),
    (r"\.attn\.q_conv\.", ".attn.query_conv."), (r"\.attn\.k_conv\.", ".attn.key_conv."),
    (r"\.attn\.v_conv\.", ".attn.value_conv."),
    (r"\.attn\.q_norm\.", ".attn.query_norm."), (r"\.attn\.k_norm\.", ".attn.key_norm."),
    (r"\.attn\.v_norm\.", ".attn.value_norm."),
    (r"\.attn\.q\.", ".attn.query."), (r"\.attn\.k\.", ".attn.key."), (r"\.attn\.v\.", ".attn.value."),
    (r"\.scale_attn\.scale$", ".drop_path_attn.scale"), (r"\.scale_mlp\.scale$", ".drop_path_mlp.scale"),
    (r"^neck_norm\.", "neck.fpn_norms."),
    (r"^lateral\.", "neck.lateral_convs."), (r"^fpn_out\.", "neck.fpn_convs."),
    (r"^(cls_head|reg_head)\.trunk\.", r"\1.head."), (r"^(cls_head|reg_head)\.norms\.", r"\1.norm."),
    (r"^cls_head\.finals\.0\.", "cls_head.cls_head."), (r"^reg_head\.finals\.0\.", "reg_head.offset_head."),
]


def official_name(name: str) -> str:
    for pat, rep in _RENAMES:
        name = re.sub(pat, rep, name)
    return name


def copy_into_official(lib: torch.nn.Module, off: torch.nn.Module) -> dict[str, str]:
    """Copy every library parameter into its public counterpart; returns public -> library names.
    Fails when either side has a parameter the other lacks (the architectures must match)."""
    off_params = dict(off.named_parameters())
    mapping: dict[str, str] = {}
    with torch.no_grad():
        for name, p in lib.named_parameters():
            if name == "scales":  # one learnable scalar per level (the public Scale modules)
                for lvl in range(p.shape[0]):
                    off_params[f"reg_head.scale.{lvl}.scale"].copy_(p[lvl])
                    mapping[f"reg_head.scale.{lvl}.scale"] = name
                continue
            target = official_name(name)
            assert target in off_params, f"library parameter {name} has no public counterpart {target}"
            assert off_params[target].numel() == p.numel(), (name, tuple(p.shape), tuple(off_params[target].shape))
            off_params[target].copy_(p.reshape(off_params[target].shape))
            mapping[target] = name
    assert set(mapping) == set(off_params), f"public parameters not covered: {sorted(set(off_params) - set(mapping))}"
    return mapping
