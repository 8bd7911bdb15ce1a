"""Optional experiment tracking: wandb, off by default and offline when on."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from taltoolkit.engine import distributed as dist_utils

log = logging.getLogger("taltoolkit")


class RunLogger:
    """Forwards final metrics to wandb when ``logger=wandb``; a no-op otherwise."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @classmethod
    def from_config(cls, cfg: DictConfig | None, out_dir: Path, full_cfg: DictConfig) -> "RunLogger":
        if cfg is None or not cfg.get("wandb", False) or not dist_utils.is_main():
            return cls(None)
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is the optional extra taltoolkit[wandb]
            from taltoolkit.data.errors import ConfigError

            raise ConfigError('logger=wandb needs the wandb package: pip install "taltoolkit[wandb]" (or wandb), '
                              "or use logger=none") from None
        run = wandb.init(
            project=cfg.get("project", "taltoolkit"),
            mode=cfg.get("mode", "offline"),  # offline unless the user asks for online
            dir=str(out_dir),
            config=OmegaConf.to_container(full_cfg, resolve=True),  # type: ignore[arg-type]
            name=cfg.get("name"),
        )
        log.info("wandb run %s (mode=%s) in %s", run.id, cfg.get("mode", "offline"), out_dir)
        return cls(run)

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(data, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
