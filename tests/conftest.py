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
