#!/usr/bin/env python
"""Train and evaluate a method: ``python tools/run.py method=case [dataset=thumos14 dataset.root=DIR]``.

A thin ``@hydra.main`` wrapper around :func:`taltoolkit.run`; everything else is config.
"""
import logging
import os
import sys
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun the run is complete here (outputs written atomically, process group
        # left). Skip the interpreter's teardown: c10d/gloo threads still joinable in C++
        # static destructors can abort a finished rank ("terminate called without an active
        # exception"), which torchrun reports as a failed job.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
