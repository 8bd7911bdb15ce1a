"""One short real run (tiny synthetic data, CASE, 2 epochs) whose output folder the plot,
report and browser tests read; built once per test module."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import CONF_DIR, TINY_SYNTHETIC


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def tiny_run(root: Path, *extra: str) -> tuple[Path, dict[str, Any], Any]:
    """Train and evaluate into ``root/run``; returns the folder, the metrics and the config."""
    import taltoolkit

    cfg = compose([
        "method=case", *TINY_SYNTHETIC, f"dataset.cache_dir={root / 'cache'}", f"output_dir={root / 'run'}",
        "trainer.progress=false", "trainer.batch_size=8", "trainer.device=cpu", "trainer.max_epochs=2",
        "trainer.eval_every=1", *extra,
    ])
    metrics = taltoolkit.run(cfg)
    return root / "run", metrics, cfg
