"""One typed config per run (musicgen/training/run_config.py, musicgen/typed_config.py): every group is its
frozen dataclass, the YAMLs state the dataclasses' defaults, and a mistake is one error naming the option."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from musicgen.config import CONF_DIR, UserError
from musicgen.data.options import AugmentOptions, DataOptions
from musicgen.training.loggers import LoggerOptions
from musicgen.training.options import TrainOptions
from musicgen.training.run_config import RunConfig
from musicgen.typed_config import typed_group
from support import compose_cfg


def _yaml(path: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / path))


def test_the_yamls_state_the_dataclasses_defaults() -> None:
    assert TrainOptions.from_mapping(_yaml("train/default.yaml")) == TrainOptions()
    assert LoggerOptions.from_mapping(_yaml("logger/none.yaml")) == LoggerOptions()
    folder = _yaml("data/midi_folder.yaml")
    typed = DataOptions.from_mapping({**folder, "cache_dir": "cache/x"})  # ${data.name} needs the whole config
    default = DataOptions(root=folder["root"], cache_dir="cache/x")
    assert typed == default
    assert set(folder) == {f.name for f in fields(DataOptions)}  # the YAML documents every option


def test_a_composed_run_is_typed_group_by_group_and_round_trips() -> None:
    cfg = compose_cfg(["data=midi_folder", "data.root=/tmp/songs", "train.lr=1e-3", "train.betas=[0.8,0.9]",
                       "data.augment.transpose=3", "logger=none", "seed=5"])
    run = RunConfig.from_mapping(cfg)
    assert run.train.lr == 1e-3 and run.train.betas == (0.8, 0.9) and isinstance(run.train.betas, tuple)
    assert run.data.augment == AugmentOptions(transpose=3, tempo_shift=0)
    assert run.data.root == "/tmp/songs" and run.data.cache_dir == "cache/midi_folder"  # interpolation resolved
    assert run.seed == 5 and run.model.n_layers >= 1 and run.tokenizer.grid == 16
    stored = run.to_dict()  # what a checkpoint keeps: plain lists, the same group names, and it reads back
    assert stored["train"]["betas"] == [0.8, 0.9] and set(stored) == {"data", "tokenizer", "model", "train",
                                                                      "logger", "seed", "device"}
    assert RunConfig.from_mapping(stored) == run


@pytest.mark.parametrize("override, message", [
    ("train.lr=fast", "train.lr"),
    ("train.betas=[0.9]", "train.betas"),
    ("train.betas=[0.9,1.0]", r"train.betas\[1\]"),
    ("train.precision=fp8", "train.precision=fp8"),
    ("train.train_only=recall", "train.train_only"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.augment.transpose=-2", "data.augment.transpose"),
    ("data.align_beats=maybe", "data.align_beats"),
    ("data.split=random", "data.split=random"),
    ("logger.log_every=0", "logger.log_every"),
    ("seed=-1", "seed"),
])
def test_a_wrong_value_is_one_user_error_naming_its_option(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace(".", r"\.") if "\\" not in message else message):
        RunConfig.from_mapping(compose_cfg([override]))


def test_typed_group_names_unknown_and_missing_keys() -> None:
    with pytest.raises(UserError, match=r"unknown option\(s\) data\.rooot"):
        typed_group(DataOptions, {"root": "x", "cache_dir": "c", "rooot": "y"}, "data")
    with pytest.raises(UserError, match=r"missing option\(s\) data\.cache_dir"):
        typed_group(DataOptions, {"root": "x"}, "data")
    with pytest.raises(UserError, match=r"data\.augment: expected a group"):
        typed_group(DataOptions, {"root": "x", "cache_dir": "c", "augment": 3}, "data")
    assert typed_group(DataOptions, {"root": Path("x"), "cache_dir": "c", "max_files": 3.0}, "data").max_files == 3


def test_the_trainer_reads_only_the_typed_run_config() -> None:
    """The loop's modules take the RunConfig (or its groups), never Hydra's raw config."""
    source = (Path(__file__).resolve().parents[1] / "musicgen" / "training" / "trainer.py").read_text()
    assert "DictConfig" not in source and "cfg.data" not in source and "cfg.logger" not in source
