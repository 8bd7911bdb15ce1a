"""Shared fixtures: paths, and Hydra composition of the real conf/ tree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# Keep synthetic caches of the test-suite out of the user's cache.
os.environ.setdefault("TALTOOLKIT_CACHE", str(REPO / ".cache" / "pytest"))


@pytest.fixture
def compose():
    """compose(overrides) -> a config from conf/ exactly as tools/run.py would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)

    return _compose


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """pytest-xdist runs one worker per core; more torch threads per worker only contend."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_SYNTHETIC = [
    "dataset.num_train=24",
    "dataset.num_test=12",
    "dataset.num_classes=5",
    "dataset.feature_dim=32",
    "dataset.max_steps=80",
    "dataset.num_segments=64",
    "dataset.max_seq_len=80",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides for a run that takes seconds: tiny synthetic data, cache and outputs in tmp."""
    return [
        *TINY_SYNTHETIC,
        f"dataset.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'run'}",
        "trainer.progress=false",
        "trainer.batch_size=8",
        "trainer.device=cpu",
    ]


def thumos14_layout_overrides(tmp_path: Path, layout: str, feature_dim: int = 16) -> list[str]:
    """Write synthetic features for the real THUMOS14 videos in ``layout`` -> the dataset overrides.

    The features carry the real ground truth (3358 test instances), so a run through
    ``dataset=thumos14 dataset.root=DIR`` evaluates against the real annotation files.
    """
    from taltoolkit.data.synthetic import generate_synthetic
    from taltoolkit.data.writers import write_layout

    videos, classes = generate_synthetic(from_annotations="thumos14", feature_dim=feature_dim, seed=0)
    root = tmp_path / layout
    extra = {"feature_stride": 16, "snippet_frames": 16, "fps": 25.0} if layout == "concat" else {}
    write_layout(videos, classes, root, layout, name="Thumos14reduced", **extra)
    over = ["dataset=thumos14", f"dataset.root={root}", f"dataset.layout={layout}", f"dataset.feature_dim={feature_dim}"]
    if layout == "concat":
        over += ["dataset.feature_stride=16", "dataset.fps=25.0"]
    return over
