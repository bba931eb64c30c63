"""Configs: validated on construction, saved and loaded as TOML without loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from seal_agent.config import GateConfig, MemoryConfig, ScheduleConfig, SealConfig, TrainConfig
from seal_agent.errors import ConfigError


def test_every_section_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = SealConfig().with_overrides(train={"epochs": 2, "target_modules": ["q_proj", "v_proj"]},
                                      gate={"canary_file": "canaries.jsonl", "scale_back": [0.25, 0.5]},
                                      schedule={"cron": "0 3 * * *"})
    path = cfg.save(tmp_path)
    assert path == tmp_path / "config.toml" and list(tmp_path.iterdir()) == [path]  # no temp file left
    loaded = SealConfig.load(tmp_path)
    assert loaded == cfg
    assert loaded.gate.scale_back == [0.5, 0.25]  # normalised: largest first


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: TrainConfig(learning_rate=0), "train.learning_rate"),
        (lambda: TrainConfig(target_modules=[]), "train.target_modules"),
        (lambda: GateConfig(scorer="vibes"), "gate.scorer"),
        (lambda: GateConfig(scale_back=[1.5]), "gate.scale_back"),
        (lambda: ScheduleConfig(cron="every day"), "schedule.cron"),
        (lambda: SealConfig().with_overrides(consolidation={"accumulate": "rebuild"}), "consolidation.accumulate"),
        (lambda: SealConfig().with_overrides(trian={"epochs": 1}), "trian"),
        # 0 made every recall raise while one row was unindexed (review finding 5)
        (lambda: MemoryConfig(recall_index_timeout_s=0.0), "memory.recall_index_timeout_s"),
        (lambda: MemoryConfig(recall_index_timeout_s=-1.0), "memory.recall_index_timeout_s"),
        (lambda: SealConfig().with_overrides(memory={"recall_index_timeout_s": 0}), "memory.recall_index_timeout_s"),
    ],
)
def test_bad_values_name_the_field(make, field: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[memory\nrecall_k = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SealConfig.load(tmp_path)
