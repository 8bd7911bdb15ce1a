"""taltoolkit: temporal action localization across unsupervised, weakly- and semi-supervised paradigms."""
__version__ = "0.1.0"

from taltoolkit.structures import Detections, Video  # noqa: E402,F401


def run(cfg):  # noqa: ANN001 - an omegaconf DictConfig
    """Run one job described by a composed Hydra config (what ``tools/run.py`` calls)."""
    from taltoolkit.entry import run as _run

    return _run(cfg)
