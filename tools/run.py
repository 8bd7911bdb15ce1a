#!/usr/bin/env python
"""Train and evaluate a method: ``python tools/run.py method=case [dataset=thumos14 dataset.root=DIR]``.

A thin ``@hydra.main`` wrapper around :func:`taltoolkit.run`; everything else is config.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float:
    import taltoolkit
    from taltoolkit.engine.sweep import pin_job_resources

    pin_job_resources(cfg)
    metrics = taltoolkit.run(cfg)
    # Returned so that sweepers (e.g. Optuna) can optimise the average mAP.
    return float(metrics.get("average_mAP", float("nan")))


if __name__ == "__main__":
    main()
