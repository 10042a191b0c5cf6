"""Every shipped configs/*.toml loads into the config class of its model and passes its checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import load_config, read_config_file
from trainer.families.next_item import TrainConfig
from trainer.families.ranker import RANKERS, RankConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_configs_directory_is_not_empty():
    assert CONFIGS, "configs/*.toml not found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_loads_and_checks(path: Path):
    raw = read_config_file(path)
    assert "model" in raw, f"{path.name} must name its model"
    cls = RankConfig if raw["model"] in RANKERS else TrainConfig
    cfg = load_config(cls, file=path)
    cfg.check()
    for name, value in raw.items():  # every setting in the file reaches the config unchanged
        got = getattr(cfg, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name  # a TOML array arrives as a tuple
