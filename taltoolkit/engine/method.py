"""The protocol every method implements; the engine's loop is written once against it.

A method is an ``nn.Module`` holding its networks and any state that must survive a
checkpoint (as buffers, or through :meth:`Method.extra_state`). It never reads files,
evaluates or writes checkpoints. Multi-stage methods (COPL's clustering/training
iterations, APL's pre-training, supervised training and self-training) describe their
stages with :meth:`Method.stages`; the engine runs them in order, checkpointing after
every epoch so that a run resumes mid-stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from taltoolkit.structures import Video


@dataclass(frozen=True)
class Stage:
    """One phase of training: a name, how many epochs (None: ``trainer.max_epochs``)."""

    name: str = "train"
    epochs: int | None = None
    # Extra options a method reads back in its hooks (e.g. which videos to train on).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a method may use at the start of a stage, without touching files or the loop."""

    train_videos: list[Video]
    device: torch.device
    # predict(videos) runs the method's ``predict`` over videos and returns per-video outputs,
    # e.g. for COPL's clustering stage, which needs features of every training video.
    predict: Callable[[list[Video]], list[dict[str, Any]]]
    stage_index: int = 0
    # set_train_videos(videos) lets a stage train on another list (APL: labelled only).
    set_train_videos: Callable[[list[Video]], None] | None = None
    # True when a run resumes in the middle of this stage: state computed at the stage's
    # start (pseudo-labels) was restored from the checkpoint and must not be recomputed.
    resumed: bool = False
    # Full-label records of the training videos by name, for *metrics only* (COPL's cluster
    # purity, APL's pseudo-label accuracy against the hidden ground truth). A method must
    # never train on them; under label_mode=full they equal the training videos.
    reference_videos: dict[str, Video] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of a method: override ``training_step`` and ``predict`` at least."""

    # "fixed": WTAL sampling to ``dataset.num_segments`` steps; "variable": ActionFormer crops.
    sampling: ClassVar[str] = "fixed"
    # With "fixed": the training rule (a key of data.sampling.SAMPLING_RULES) and the test-time
    # length (data.sampling.TEST_SAMPLINGS) of the method's public code; a method may set them
    # per instance from its config.
    sampling_rule: str = "bins"
    test_sampling: str = "native"
    # The label regime a method trains under unless the config says otherwise.
    label_mode: ClassVar[str] = "weak"
    # Which evaluation preset family applies ("weak", "unsup", "full", "semi").
    paradigm: ClassVar[str] = "weak"

    def stages(self) -> list[Stage]:
        return [Stage("train")]

    def on_stage_start(self, stage: Stage, context: StageContext) -> None:  # noqa: B027 - optional hook
        """Called before the first epoch of each stage (also when resuming into it)."""

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before every epoch; ``epoch`` counts from 0 within the stage."""

    def on_train_step_end(self) -> None:  # noqa: B027 - optional hook
        """Called after each optimizer step (EMA teachers update here)."""

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return a dict of scalar losses; ``"loss"`` is what is back-propagated."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # DistributedDataParallel synchronises gradients through forward(), so the engine
        # calls training_step through it.
        return self.training_step(batch)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per-video outputs that the configured post-processor turns into detections."""
        raise NotImplementedError

    def networks(self) -> list[nn.Module]:
        """The backbone networks, which ``trainer.compile=true`` compiles (their forward only:
        the methods' losses and pseudo-labelling are data-dependent Python). Default: ``self.model``."""
        model = getattr(self, "model", None)
        return [model] if isinstance(model, nn.Module) else []

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that inference needs, written to ``checkpoints/inference.pt`` at the end of a run.

        ``load_state_dict`` must accept it. Methods with training-only state (RMGCL's memory
        bank) leave it out; the default is the whole state dict.
        """
        return self.state_dict()

    def extra_state(self) -> dict[str, Any]:
        """Picklable state that is not a parameter or buffer (pseudo-labels, iteration)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`extra_state` returned."""

    def log_metrics(self) -> dict[str, float]:
        """Method-specific numbers the engine adds to the epoch log (entropies, accuracies)."""
        return {}

    def stage_metrics(self) -> dict[str, Any]:
        """Numbers a stage produced (e.g. clustering purity per COPL iteration) for metrics.json."""
        return {}
