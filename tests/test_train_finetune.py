"""train.init_from: fine-tune a checkpoint into a model with attention decay; positional parameters are recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from musicgen.inference import load_checkpoint
from musicgen.training.trainer import run_training

from support import compose_cfg, tiny_train_overrides


def test_init_from_adds_decay_keeps_weights_and_records_positional_init(pop909_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "base", 4) + ["model=spe_sine_gated"])
    run_training(base, tmp_path / "r0", progress=False)
    source = load_checkpoint(tmp_path / "base" / "last.pt")
    assert source.model_config["attention"]["decay"] == "none"
    assert "code_generators.0.freqs" in source.training_state["positional_init"]

    tuned = compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "tuned", 3)
                        + ["model=spe_sine_gated", "model.attention.decay=learned", "train.lr=1e-9",
                           f"train.init_from={tmp_path / 'base' / 'last.pt'}"])
    result = run_training(tuned, tmp_path / "r1", progress=False)
    assert result.step == 3
    ckpt = load_checkpoint(tmp_path / "tuned" / "last.pt")
    state = ckpt.model_state
    assert "blocks.0.attn.decay.log_tau" in state
    # at a vanishing learning rate the shared weights are still the source's
    assert torch.allclose(state["embed.weight"], source.model_state["embed.weight"], atol=1e-6)
    # the record of where the positional parameters started is the source's own (its random init)
    start = ckpt.training_state["positional_init"]
    assert torch.equal(start["code_generators.0.freqs"], source.training_state["positional_init"]["code_generators.0.freqs"])
    assert "blocks.0.attn.decay.log_tau" in start


def test_init_from_with_other_shape_is_a_clear_error(pop909_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_training(compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "base", 2)), tmp_path / "r0", progress=False)
    other = compose_cfg(tiny_train_overrides(pop909_dir, cache, tmp_path / "other", 2)
                        + ["model.d_model=32", f"train.init_from={tmp_path / 'base' / 'last.pt'}"])
    with pytest.raises(ValueError, match="init_from"):
        run_training(other, tmp_path / "r1", progress=False)
