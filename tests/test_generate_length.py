"""Length options: a limit the user sets replaces the 16-bar default instead of being cut short by it."""

from __future__ import annotations

import pytest

from musicgen.config import UserError
from musicgen.generation import GenerateOptions


def test_default_is_16_bars() -> None:
    assert GenerateOptions().stop.bars == 16


@pytest.mark.parametrize("values", [{"tokens": 20000, "allow_eos": False}, {"seconds": 90.0}])
def test_user_limit_replaces_default_bars(values: dict) -> None:
    stop = GenerateOptions(**values).stop
    assert stop.bars is None
    assert stop.tokens == values.get("tokens") and stop.seconds == values.get("seconds")


def test_explicit_bars_kept_and_null_means_no_bar_limit() -> None:
    assert GenerateOptions(bars=64, tokens=20000).stop.bars == 64
    assert GenerateOptions(bars=None).stop.bars is None


def test_bad_bars_string() -> None:
    with pytest.raises(UserError, match="bars"):
        GenerateOptions(bars="many")


def test_generate_yaml_states_the_options_defaults() -> None:
    """conf/generate.yaml (what Hydra needs) and GenerateOptions / its groups (the source) never drift apart."""
    from omegaconf import OmegaConf

    from musicgen.config import CONF_DIR

    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "generate.yaml"))
    conf = {k: v for k, v in conf.items() if k not in ("defaults", "hydra")}
    defaults = GenerateOptions().to_dict()
    assert conf == defaults


def test_generate_options_are_frozen_and_replace_validates_again() -> None:
    """One way to change options: dataclasses.replace, which runs the same checks (no half-validated copies)."""
    import dataclasses

    from musicgen.config import UserError
    from musicgen.generation import GenerateOptions

    options = GenerateOptions.from_mapping({"bars": 8, "allow_eos": "no"})
    assert options.allow_eos is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.bars = 4  # type: ignore[misc]
    assert dataclasses.replace(options, top_p="0.9").top_p == 0.9
    with pytest.raises(UserError, match="seed"):
        dataclasses.replace(options, seed=-1)
