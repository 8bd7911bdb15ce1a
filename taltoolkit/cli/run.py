"""Train and evaluate a method: ``taltoolkit-run method=case [dataset=thumos14 dataset.root=DIR]``
(``python tools/run.py ...`` in a checkout).

A thin ``@hydra.main`` wrapper around :func:`taltoolkit.run`; everything else is config. The
configs are package data (``taltoolkit/conf``), so an installed wheel runs from any folder.
A user error (a :class:`~taltoolkit.data.errors.UserInputError`: a bad file, config value or
checkpoint) prints its message alone and exits with status 2; ``HYDRA_FULL_ERROR=1`` shows
the traceback instead.
"""
import logging
import os
import secrets
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

# taltoolkit/conf: the configs, shipped inside the package (in a checkout, a link to conf/).
CONF = str(Path(__file__).resolve().parent.parent / "conf")


def run_id() -> str:
    """A short id that makes ``hydra.run.dir`` unique: two runs started in the same second
    would otherwise share one folder. Every torchrun rank of one job gets the same id (from
    the rendezvous the ranks share), so they agree on the folder."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import hashlib

        shared = "|".join(os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
        return hashlib.sha256(shared.encode()).hexdigest()[:6]
    return _RUN_ID


_RUN_ID = secrets.token_hex(3)
# Cached: every resolution in this process (and Hydra's copies of the config) gives one id.
OmegaConf.register_new_resolver("run_id", run_id, use_cache=True, replace=True)


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    import taltoolkit
    from taltoolkit.data.errors import UserInputError
    from taltoolkit.engine.sweep import pin_job_resources

    pin_job_resources(cfg)
    try:
        metrics = taltoolkit.run(cfg)
    except UserInputError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # The message names the file or key and the fix; Hydra's traceback would bury it.
        logging.getLogger("taltoolkit").debug("user error", exc_info=True)  # run.log keeps the traceback
        print(f"error: {e}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(2) from None
    # Returned so that sweepers (e.g. Optuna) can optimise the average mAP.
    return float(metrics.get("average_mAP", float("nan")))


def main() -> None:
    """Entry point of ``taltoolkit-run`` and ``tools/run.py``."""
    hydra_main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun the run is complete here (outputs written atomically, process group
        # left). Skip the interpreter's teardown: c10d/gloo threads still joinable in C++
        # static destructors can abort a finished rank ("terminate called without an active
        # exception"), which torchrun reports as a failed job.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
