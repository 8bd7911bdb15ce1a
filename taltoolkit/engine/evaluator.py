"""Inference over a list of videos, post-processing to detections, and mAP.

The evaluator owns the test-time loop so that methods only implement ``predict``; the
post-processor is whatever the config composes (``cas_to_proposals`` for WTAL/unsupervised
methods, ``segment_nms`` for detectors regressing segments).
"""
from __future__ import annotations

import inspect
import logging
import sys
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from taltoolkit import collectives
from taltoolkit.engine.batching import move_batch
from taltoolkit.engine.method import Method
from taltoolkit.evaluation import detection_map
from taltoolkit.evaluation.stages import stage, timed
from taltoolkit.structures import Detections, Video

log = logging.getLogger("taltoolkit")


class Evaluator:
    """Predicts ``videos`` with a method, post-processes and scores them against ``ground_truth``."""

    def __init__(
        self,
        videos: list[Video],
        classes: list[str],
        ground_truth: dict[str, Any],
        subset: str,
        tiou_thresholds: Sequence[float],
        postprocess: Callable[..., Detections],
        make_dataset: Callable[[list[Video]], tuple[torch.utils.data.Dataset, Callable]],
        device: torch.device,
        averages: dict[str, Sequence[float]] | None = None,
        progress: bool = False,
    ) -> None:
        self.videos = videos
        self.classes = classes
        self.ground_truth = ground_truth
        self.subset = subset
        self.tiou_thresholds = list(tiou_thresholds)
        self.postprocess = postprocess
        self.make_dataset = make_dataset
        self.device = device
        self.averages = averages or {}
        self.progress = progress

    def on(self, videos: list[Video], ground_truth: dict[str, Any], subset: str) -> "Evaluator":
        """The same protocol (post-processing, thresholds, sampling, device) on other videos:
        the held-out training videos that model selection scores (no progress bar)."""
        return Evaluator(videos, self.classes, ground_truth, subset, self.tiou_thresholds, self.postprocess,
                         self.make_dataset, self.device, averages=self.averages)

    @torch.no_grad()
    def predict(self, method: Method, videos: list[Video]) -> list[dict[str, Any]]:
        """Run ``method.predict`` over ``videos`` one at a time, in order; outputs on CPU."""
        was_training = method.training
        method.eval()
        dataset, collate = self.make_dataset(videos)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate)
        outputs: list[dict[str, Any]] = []
        it = loader
        # A bar on a terminal only: in a log file its carriage returns would be one long line.
        if self.progress and collectives.is_main() and sys.stderr.isatty():
            it = tqdm(loader, desc="predict", unit="video", leave=False, dynamic_ncols=True)
        it = iter(it)
        while True:
            with stage("prediction"):  # loading, the network, the outputs to numpy
                batch = next(it, None)
                if batch is None:
                    break
                batch = move_batch(batch, self.device)
                for i, out in enumerate(method.predict(batch)):
                    out = {k: _to_numpy(v) for k, v in out.items()}
                    if "step_scale" in batch:  # a test video resampled to another length
                        out["_step_scale"] = float(batch["step_scale"][i])
                    outputs.append(out)
        method.train(was_training)
        return outputs

    def detections(self, method: Method) -> tuple[dict[str, Detections], list[dict[str, Any]]]:
        """Per-video detections and raw outputs. Under torchrun every rank must call it: each
        predicts and post-processes every N-th video, and rank 0 receives all of them (the
        other ranks get empty results)."""

        def predict_and_postprocess(videos: list[Video]) -> list[tuple[Detections, dict[str, Any]]]:
            outputs = self.predict(method, videos)
            return [(self._postprocess(video, out), out) for video, out in zip(videos, outputs)]

        pairs = collectives.shard_and_gather(list(self.videos), predict_and_postprocess, main_only=True)
        if pairs is None:
            return {}, []
        return {v.name: d for v, (d, _) in zip(self.videos, pairs)}, [out for _, out in pairs]

    @timed("proposals")
    def _postprocess(self, video: Video, out: dict[str, Any]) -> Detections:
        extra: dict[str, Any] = {}
        if self._wants_video():
            # e.g. segment_postprocess with external_scores: per-video class scores by name
            extra = {"video": video.name, "classes": list(self.classes)}
        return self.postprocess(
            **{k: v for k, v in out.items() if not k.startswith("_")},
            step_s=video.step_s * out.get("_step_scale", 1.0),
            offset_s=video.offset_s,
            duration=video.duration,
            **extra,
        )

    def _wants_video(self) -> bool:
        try:
            params = inspect.signature(self.postprocess).parameters
        except (TypeError, ValueError):
            return False
        return "video" in params and "classes" in params

    def evaluate(self, method: Method) -> tuple[dict[str, Any], dict[str, Detections], list[dict[str, Any]]]:
        """mAP of ``method`` on the videos. Under torchrun every rank must call it: the
        inference is sharded, rank 0 computes the mAP and every rank gets the metrics (the
        detections and outputs only on rank 0)."""
        dets, outputs = self.detections(method)
        metrics = None
        if collectives.is_main():
            with stage("mAP"):
                result = detection_map(
                    self.ground_truth, dets, self.classes, self.tiou_thresholds, subset=self.subset,
                    averages=self.averages,
                )
            metrics = result.to_dict(percent=True)
        return collectives.broadcast_object(metrics), dets, outputs


def _to_numpy(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
    return v
